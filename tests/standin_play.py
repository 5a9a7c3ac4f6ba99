"""Play the stand-in cartridge (roms/standin.gb) through PyBoy: shared by the tests.

Not a test file. Everything here reads Pokemon Red's RAM addresses, which the stand-in keeps
with the same meaning (see roms/README.md; the names are pret/pokered's, ram/wram.asm).

- `new_pyboy()` starts the cartridge headless and unthrottled.
- `press(pyboy, button)` is the environment's press: hold 8 frames, release, 24 frames in all.
- `skip_intro(pyboy)` drives power-on to the bedroom by reading the intro's RAM signals.
- `in_control(pyboy)` is the "player is in control of the overworld" predicate.
- `GRASS_ROUTE` and `BADGE_ROUTE` are button lists played with `press` from the state right after
  `skip_intro`.
"""
from __future__ import annotations

from pathlib import Path

from pyboy import PyBoy

ROM = Path(__file__).resolve().parent.parent / "roms" / "standin.gb"
BUTTONS = ["a", "b", "up", "down", "left", "right", "start", "select"]  # the environment's action order

# Addresses (Pokemon Red's), used by the tests.
CUR_MAP, Y_COORD, X_COORD, LAST_MAP = 0xD35E, 0xD361, 0xD362, 0xD365
MAP_HEIGHT, MAP_WIDTH = 0xD368, 0xD369
FACING = 0xC109  # $00 down, $04 up, $08 left, $0C right
IS_IN_BATTLE, CUR_OPPONENT = 0xD057, 0xD059
PARTY_COUNT, PARTY_SPECIES = 0xD163, 0xD164
PARTY_HP, PARTY_LEVEL, PARTY_MAX_HP = 0xD16C, 0xD18C, 0xD18D  # HP and max HP: 2 bytes, big-endian
POKEDEX_OWNED, POKEDEX_SEEN = 0xD2F7, 0xD30A  # 19 bytes each
BADGES = 0xD356
EVENT_FLAGS = 0xD747
PLAYER_NAME, RIVAL_NAME = 0xD158, 0xD34A
FONT_LOADED, WALK_COUNTER, JOY_IGNORE = 0xCFC4, 0xCFC5, 0xCD6B
HWY, JOY_PRESSED, JOY_HELD = 0xFFB0, 0xFFB3, 0xFFB4
MENU_ITEM, MAX_MENU_ITEM, MENU_WATCHED_KEYS = 0xCC26, 0xCC28, 0xCC29
TILE_MAP = 0xC3A0  # 20x18 tiles: tile(x, y) = TILE_MAP + 20 * y + x

# Maps (the real game's ids) and places on them.
PALLET_TOWN, ROUTE_1, REDS_HOUSE_1F, REDS_HOUSE_2F, OAKS_LAB, PEWTER_GYM = 0x00, 0x0C, 0x25, 0x26, 0x28, 0x36
START = (REDS_HOUSE_2F, 3, 6)  # (map, x, y) after the intro and after a blackout
HEAL = (REDS_HOUSE_2F, 1, 6)  # the bed: stepping on it restores HP
BADGE_LEVEL = 15  # the gym leader battles only at or above this level
# Event flags set by talking (facing the cell and pressing A): name -> (event index, map, x, y).
# Only progress sets a flag: the youngster stands past the grass on Route 1.
EVENTS = {
    "ROUTE_YOUNGSTER": (32, ROUTE_1, 4, 2),
    "BOUGHT_MUSEUM_TICKET": (0x68, PEWTER_GYM, 1, 4),  # not progress: Route 1 resets it every frame
}
# Texts that set no event flag: name -> (map, x, y).
TALKS_WITHOUT_EVENT = {
    "MOM": (REDS_HOUSE_1F, 6, 4),
    "BEDROOM_PC": (REDS_HOUSE_2F, 1, 1),
    "TOWN_SIGN": (PALLET_TOWN, 6, 5),
}
BEAT_BROCK = 119  # D755 bit 7, set with the badge
GOT_STARTER = 34  # D74B bit 2, set once the starter is in the party
BATTLED_RIVAL_IN_OAKS_LAB = 35  # D74B bit 3, set after the rival's battle in the lab, won or lost
TOWN_VISITED = 0xD70B  # wTownVisitedFlag, 2 bytes: bit 0 Pallet Town, set as its map loads
LEADER = (PEWTER_GYM, 3, 1)
STARTER_BALL = (OAKS_LAB, 3, 2)
STARTER_DEX_OWNED = 0x4B  # wPokedexOwned's first byte while the ball's Pokedex page is up
OPP_RIVAL1 = 0xE1

# From the start: down the stairs to 1F, out of the front door, through town, onto Route 1's grass.
TO_STAIRS = ["right"] * 3 + ["up"] * 5  # bedroom (3,6) -> (6,6) -> stairs (6,1) -> 1F (6,2)
DOWNSTAIRS_TO_TOWN = ["left"] * 4 + ["down"] * 5  # 1F (6,2) -> (2,2) -> door (2,7) -> Pallet (3,4)
TO_TOWN = TO_STAIRS + DOWNSTAIRS_TO_TOWN
# Pallet (3,4) -> (7,4) -> the lab's door (7,3) -> lab (3,4) -> (3,3), facing the starter's ball.
TOWN_TO_BALL = ["right"] * 4 + ["up", "up"]
# A on the ball: its Pokedex page, the starter joins, the rival's battle (won with A), healed.
BEAT_RIVAL = ["a", "b", "b", "b", "a", "a", "a", "b", "b"]
LOSE_TO_RIVAL = ["a", "b", "b", "b", "b", "b", "b", "b", "b", "b"]  # B does no damage: lost, healed
LAB_TO_ROUTE = ["down", "down"] + ["left"] * 3 + ["up"] * 4  # lab door, Pallet (7,4), (4,4), Route 1 (2,6)
TOWN_TO_ROUTE = ["right"] + ["up"] * 4  # Pallet (3,4) -> (4,4) -> exit (4,0) -> Route 1 (2,6)
ROUTE_TO_GRASS = ["right", "up", "up"]  # Route 1 (2,6) -> (3,6) -> (3,5) -> grass (3,4)
GRASS_ROUTE = TO_TOWN + TOWN_TO_BALL + BEAT_RIVAL + LAB_TO_ROUTE + ROUTE_TO_GRASS
# From the grass at (3, 4) to facing the youngster at (4, 2): (4, 4), (4, 3), both grass, then up.
GRASS_TO_YOUNGSTER = ["right", "up", "up"]
# From the grass at (3, 4) to the bed and back, and from the grass to facing the gym leader.
GRASS_TO_BED = (["down", "down", "left", "down"]  # Route 1 (3,6) -> (2,6) -> edge (2,7) -> Pallet (4,1)
                + ["down"] * 3 + ["left", "up"]  # Pallet (4,4) -> (3,4) -> door (3,3) -> 1F (2,6)
                + ["up"] * 4 + ["right"] * 4 + ["up"]  # 1F (2,2) -> (6,2) -> stairs (6,1) -> bedroom (6,2)
                + ["down"] * 4 + ["left"] * 5)  # bedroom (6,6) -> the bed (1,6)
BED_TO_GRASS = ["right"] * 5 + ["up"] * 5 + DOWNSTAIRS_TO_TOWN + TOWN_TO_ROUTE + ROUTE_TO_GRASS
GRASS_TO_LEADER = ["up", "up", "left", "up", "up", "up"]  # through the gym door to (3, 2), facing up
LOW_HP = 8  # a wild battle costs at most 8 HP (two counter-attacks of 4)

# Recorded from plan_badge_route() below: the starter and the rival's battle in the lab, grinding in
# the grass (3, 4)/(3, 3), healing in bed when HP is low, then the leader. Battles fall where the
# cartridge's fixed seed (reset at NEW GAME) puts them, so the list only holds for this build of
# roms/standin.gb: re-record it if the game changes.
BADGE_ROUTE = """
right right right up up up up up left b left left left down down down down down right b right right
right up up b a b b b a a a a b down down left b left left up up up up right up up a a a a up a a a
a down a a a a up a a a a down up down up down a a a a down down left down down down down left up up
b up up up right right right right up down b down down down left left left left left b right right
right right right up up up up up left b left left left down down down down down right b up up up up
right up up a a a a up down up down up down a a a a up down up down up a a a a down up a a a a down
a a a a down down left down down down down left up up b up up up right right right right up down b
down down down left left left left left b right right right right right up up up up up left b left
left left down down down down down right b up up up up right up up a a a a up up left up up b up a b
a a a a a a a a a
""".split()


def new_pyboy(rom: str | Path = ROM) -> PyBoy:
    pyboy = PyBoy(str(rom), window="null", sound_emulated=False, log_level="ERROR")
    pyboy.set_emulation_speed(0)
    return pyboy


def press(pyboy: PyBoy, button: str, hold: int = 8, frames: int = 24, render: bool = True) -> None:
    """Press `button` for `hold` frames, release, and tick the rest of `frames` (render the last)."""
    pyboy.button_press(button)
    pyboy.tick(hold, False)
    pyboy.button_release(button)
    pyboy.tick(frames - hold, render)


def wait(pyboy: PyBoy, frames: int = 24, render: bool = True) -> None:
    pyboy.tick(frames, render)


def in_control(pyboy: PyBoy) -> bool:
    """Pokemon Red's "player is in control of the overworld" predicate (pokemon_env.player_in_control's)."""
    m = pyboy.memory
    return (m[IS_IN_BATTLE] == 0 and m[CUR_OPPONENT] == 0 and m[JOY_IGNORE] == 0
            and m[0xD730] & 0xA1 == 0 and m[FONT_LOADED] & 0x01 == 0 and m[HWY] != 0
            and m[0xCD38] == 0 and m[0xCC57] == 0 and m[WALK_COUNTER] == 0 and m[0xD736] & 0xC2 == 0)


def intro_stage(pyboy: PyBoy) -> str | None:
    """Which intro screen is up, from the RAM signals; None for the title and animations."""
    m = pyboy.memory
    if in_control(pyboy):
        return "control"
    if [m[TILE_MAP + 3 + i] for i in range(4)] == [0x8D, 0x80, 0x8C, 0x84] and m[MAX_MENU_ITEM] == 3 \
            and m[MENU_WATCHED_KEYS] == 0x01:
        return {0x91: "player_names", 0x81: "rival_names"}.get(m[TILE_MAP + 20 * 4 + 2], "names")
    if m[TILE_MAP + 20 * 2 + 2] == 0x8D and m[MENU_WATCHED_KEYS] == 0x0B:
        return "main_menu"
    if m[TILE_MAP + 20 * 16 + 18] == 0xEE:
        return "prompt"
    return None


def skip_intro(pyboy: PyBoy, max_steps: int = 300) -> list[str]:
    """From power-on to control in the bedroom, choosing RED and BLUE. Returns the stages seen.

    As on the real game's title screen, the control predicate already holds on the stand-in's:
    control before the rival's name list is the title.
    """
    stages: list[str] = []
    past_title = False
    for _ in range(max_steps):
        stage = intro_stage(pyboy)
        if stage == "control" and "rival_names" not in stages:
            stage = "title"
        if stage and (not stages or stages[-1] != stage):
            stages.append(stage)
        if stage == "control" and "rival_names" in stages:
            return stages
        if stage == "main_menu":
            past_title = True
            press(pyboy, "a")
        elif stage in ("player_names", "rival_names", "names"):
            # Down once onto RED / BLUE, then A (B does nothing on these lists).
            press(pyboy, "down" if pyboy.memory[MENU_ITEM] == 0 else "a")
        elif stage == "prompt":
            press(pyboy, "b")
        elif not past_title:
            press(pyboy, "start")  # the title screen (and the boot logo before it)
        else:
            wait(pyboy)  # the closing animation and map load
    raise RuntimeError(f"intro did not reach control; stages seen: {stages}")


def hp(pyboy: PyBoy) -> int:
    return pyboy.memory[PARTY_HP] << 8 | pyboy.memory[PARTY_HP + 1]


def max_hp(pyboy: PyBoy) -> int:
    return pyboy.memory[PARTY_MAX_HP] << 8 | pyboy.memory[PARTY_MAX_HP + 1]


def position(pyboy: PyBoy) -> tuple[int, int, int]:
    m = pyboy.memory
    return m[CUR_MAP], m[X_COORD], m[Y_COORD]


def event_set(pyboy: PyBoy, index: int) -> bool:
    return bool(pyboy.memory[EVENT_FLAGS + index // 8] >> (index % 8) & 1)


def play(pyboy: PyBoy, buttons: list[str], render: bool = False) -> None:
    for button in buttons:
        press(pyboy, button, render=render)


def plan_badge_route(pyboy: PyBoy) -> list[str]:
    """Play greedily from the start (in control after the intro) to the badge; return the buttons."""
    route: list[str] = []
    m = pyboy.memory

    def go(button):
        route.append(button)
        press(pyboy, button, render=False)

    def settle():  # finish battles with A and close texts with B
        while not in_control(pyboy):
            go("a" if m[IS_IN_BATTLE] else "b")

    def walk(buttons):
        for button in buttons:
            settle()
            go(button)
        settle()

    walk(TO_TOWN + TOWN_TO_BALL)
    go("a")  # the starter's ball, then the rival's battle
    settle()
    walk(LAB_TO_ROUTE + ROUTE_TO_GRASS)
    while True:
        settle()
        leveled = m[PARTY_LEVEL] >= BADGE_LEVEL
        if leveled or hp(pyboy) <= LOW_HP:
            if m[Y_COORD] != 4:
                go("down")
                settle()
            walk(GRASS_TO_BED)
            walk(BED_TO_GRASS)
            if leveled:
                walk(GRASS_TO_LEADER)
                go("a")
                settle()
                return route
        else:
            go("up" if m[Y_COORD] == 4 else "down")
