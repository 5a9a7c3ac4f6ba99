"""The stand-in cartridge behaves, where our code looks, like Pokemon Red: through the real emulator."""
import importlib.util
import io

import numpy as np
import pytest

import standin_play as sp
from standin_play import BUTTONS, in_control, new_pyboy, play, position, press


def load_build_script():
    spec = importlib.util.spec_from_file_location("build_standin", sp.ROM.parent / "build_standin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def pyboy(standin_rom):
    emulator = new_pyboy(standin_rom)
    yield emulator
    emulator.stop(save=False)


@pytest.fixture
def started(pyboy):
    """In control in the bedroom, right after the intro."""
    sp.skip_intro(pyboy)
    return pyboy


def settle(pyboy, button="b", limit=40):
    """Close texts (and fight, when button is "a") until the player is in control again."""
    for _ in range(limit):
        if in_control(pyboy):
            return
        press(pyboy, button, render=False)
    raise AssertionError("never got back into control")


def walk(pyboy, buttons):
    """Press each button in control, fighting any wild battle on the way to the end."""
    for button in buttons:
        settle(pyboy, "a")
        press(pyboy, button, render=False)
    settle(pyboy, "a")


def event_flags_set(pyboy):
    """The indices of the event flags set (wEventFlags, D747-D886)."""
    return {i for i in range(8 * 320) if sp.event_set(pyboy, i)}


def positions_frame_by_frame(pyboy, button, frames=80):
    """Press `button` for 8 frames; return each distinct (map, x, y) and for how many frames it held."""
    seen = [[position(pyboy), 0]]
    pyboy.button(button, 8)
    for _ in range(frames):
        pyboy.tick(1, False)
        if seen[-1][0] == position(pyboy):
            seen[-1][1] += 1
        else:
            seen.append([position(pyboy), 1])
    return seen


def window_matches_tile_map(pyboy):
    m = pyboy.memory
    return all(m[0x9C00 + 32 * y + x] == m[sp.TILE_MAP + 20 * y + x] for y in range(18) for x in range(20))


# ---- The cartridge file ------------------------------------------------------------------------

def test_build_reproduces_the_committed_rom_with_a_valid_header(standin_rom):
    rom = load_build_script().build()
    assert rom == standin_rom.read_bytes(), "run python roms/build_standin.py and commit roms/standin.gb"
    assert len(rom) == 32 * 1024 and rom[0x147] == 0x00 and rom[0x148] == 0x00  # ROM only, 32 KiB
    assert rom[0x134:0x144].rstrip(b"\0") == b"STANDIN"
    assert rom[0x104:0x108] == bytes([0xCE, 0xED, 0x66, 0x66]) and rom[0x130:0x134] == bytes([0xBB, 0xB9, 0x33, 0x3E])
    check = 0
    for byte in rom[0x134:0x14D]:
        check = (check - byte - 1) & 0xFF
    assert rom[0x14D] == check
    assert (rom[0x14E] << 8 | rom[0x14F]) == (sum(rom) - rom[0x14E] - rom[0x14F]) & 0xFFFF


def test_assembler_encodes_instructions_labels_and_data():
    build = load_build_script()
    source = """
Start:
    ld a, [hl+]
    ld [$C000], a
    ldh a, [$FF44]
.loop:
    jr nz, .loop
    bit 7, h
    push af
    call Later
    ld hl, Later + 1
    db 1, %101, $FF
Later:
    ret
"""
    image, labels = build.assemble(source, {}, 32)
    expected = "2A EA00C0 F044 20FE CB7C F5 CD1400 211500 0105FF C9"
    assert image[:21] == bytes.fromhex(expected.replace(" ", ""))
    assert labels == {"Start": 0, "Start__loop": 6, "Later": 20}
    with pytest.raises(build.AsmError, match="bytes away"):
        build.assemble("Start:\n    jr Far\n    ds 200\nFar:\n    ret\n", {}, 256)
    with pytest.raises(build.AsmError, match="defined twice"):
        build.assemble("A:\n    nop\nA:\n    nop\n", {}, 8)
    with pytest.raises(build.AsmError, match="unknown instruction"):
        build.assemble("    frob a\n", {}, 8)


def test_helper_constants_match_the_build_script():
    build = load_build_script()
    assert sp.BADGE_LEVEL == build.BADGE_LEVEL
    map_names = {v: k for k, v in build.MAP_IDS.items()}
    for name, (index, map_id, x, y) in sp.EVENTS.items():
        assert build.EVENTS[name] == index
        assert build.MAPS[map_names[map_id]]["talks"][(x, y)][0] == name
    for name, (map_id, x, y) in sp.TALKS_WITHOUT_EVENT.items():
        assert name not in build.EVENTS
        assert build.MAPS[map_names[map_id]]["rows"][y][x] in "sNP"  # a sign, a person or the PC
        assert build.MAPS[map_names[map_id]]["talks"][(x, y)][0] is None
    assert set(build.EVENTS) == set(sp.EVENTS) | {"BEAT_BROCK", "GOT_STARTER", "BATTLED_RIVAL_IN_OAKS_LAB"}
    assert build.EVENTS["GOT_STARTER"] == sp.GOT_STARTER
    assert build.EVENTS["BEAT_BROCK"] == sp.BEAT_BROCK
    assert build.EVENTS["BATTLED_RIVAL_IN_OAKS_LAB"] == sp.BATTLED_RIVAL_IN_OAKS_LAB
    assert build.STARTER_DEX_OWNED == sp.STARTER_DEX_OWNED and build.RIVAL_MON[1] == sp.OPP_RIVAL1
    map_id, x, y = sp.STARTER_BALL
    assert build.MAPS[map_names[map_id]]["talks"][(x, y)] == (None, "BALL")
    assert {sp.PALLET_TOWN, sp.ROUTE_1, sp.REDS_HOUSE_1F, sp.REDS_HOUSE_2F, sp.OAKS_LAB,
            sp.PEWTER_GYM} == set(map_names)


# ---- Intro -------------------------------------------------------------------------------------

def test_title_screen_satisfies_the_control_predicate_as_the_real_games_does(pyboy):
    m = pyboy.memory
    sp.wait(pyboy, 240)  # PyBoy's boot logo, then the title, which waits for Start
    # The real game zeroes WRAM at power-on and its title shows no window (hWY non-zero): only the
    # intro's later screens tell the bedroom from the title (home/init.asm, engine/movie/title.asm).
    assert m[sp.JOY_IGNORE] == 0 and m[sp.HWY] != 0 and m[sp.MENU_WATCHED_KEYS] == 0
    assert in_control(pyboy) and sp.intro_stage(pyboy) == "control" and position(pyboy) == (0, 0, 0)
    sp.wait(pyboy, 240)
    assert in_control(pyboy) and position(pyboy) == (0, 0, 0)  # still the title


def test_intro_shows_the_real_games_signals_in_order_and_ends_in_control(pyboy):
    m = pyboy.memory
    stages = sp.skip_intro(pyboy)
    assert stages == ["main_menu", "prompt", "player_names", "prompt", "rival_names", "prompt", "control"]
    assert position(pyboy) == sp.START and in_control(pyboy)
    assert [m[sp.PLAYER_NAME + i] for i in range(4)] == [0x91, 0x84, 0x83, 0x50]  # RED
    assert [m[sp.RIVAL_NAME + i] for i in range(5)] == [0x81, 0x8B, 0x94, 0x84, 0x50]  # BLUE
    assert m[sp.PARTY_COUNT] == 0 and m[sp.PARTY_SPECIES] == 0xFF  # the starter waits in the lab
    assert m[sp.HWY] == 0x90 and m[sp.FONT_LOADED] & 1 == 0
    assert (m[sp.MAP_HEIGHT], m[sp.MAP_WIDTH]) == (4, 4)


def test_name_list_ignores_b_and_main_menu_b_goes_back_to_the_title(pyboy):
    m = pyboy.memory
    while sp.intro_stage(pyboy) != "main_menu":
        press(pyboy, "start")
    press(pyboy, "b")  # back to the title, where (as in the real game) the control predicate holds
    assert sp.intro_stage(pyboy) == "control" and position(pyboy) == (0, 0, 0)
    press(pyboy, "start")
    assert sp.intro_stage(pyboy) == "main_menu" and m[sp.MENU_ITEM] == 0
    press(pyboy, "a")
    while sp.intro_stage(pyboy) == "prompt":
        press(pyboy, "b")
    assert sp.intro_stage(pyboy) == "player_names" and m[sp.MENU_ITEM] == 0
    press(pyboy, "b")
    press(pyboy, "down")
    press(pyboy, "b")
    assert sp.intro_stage(pyboy) == "player_names" and m[sp.MENU_ITEM] == 1
    assert window_matches_tile_map(pyboy)  # wTileMap really is what the screen shows


# ---- Movement, walls, doors -------------------------------------------------------------------

def test_a_step_takes_under_24_frames_and_walls_only_turn_the_player(started):
    m = started.memory
    started.button_press("up")
    started.tick(4, False)
    mid_step = (m[sp.WALK_COUNTER], in_control(started))
    started.button_release("up")
    started.tick(20, False)
    assert mid_step[0] != 0 and not mid_step[1]
    assert position(started) == (sp.REDS_HOUSE_2F, 3, 5) and m[sp.FACING] == 0x04 and in_control(started)
    press(started, "left")
    assert position(started) == (sp.REDS_HOUSE_2F, 2, 5) and m[sp.FACING] == 0x08
    play(started, ["down", "down"])  # (2, 6), then the wall at y = 7
    assert position(started) == (sp.REDS_HOUSE_2F, 2, 6) and m[sp.FACING] == 0x00
    press(started, "left")  # onto the bed at (1, 6), then the wall at x = 0
    press(started, "left")
    assert position(started) == (sp.REDS_HOUSE_2F, 1, 6) and in_control(started)


def test_holding_does_not_repeat_and_short_presses_are_not_lost(started):
    m = started.memory
    press(started, "right", hold=20, frames=40)  # held past the end of the step: still one step
    assert position(started) == (sp.REDS_HOUSE_2F, 4, 6)
    started.button_press("right")  # a short press starts a step...
    started.tick(3, False)
    started.button_release("right")
    started.tick(1, False)
    started.button_press("up")  # ...and a 4-frame press during that step is kept for afterwards
    started.tick(4, False)
    assert m[sp.WALK_COUNTER] != 0
    assert m[sp.JOY_HELD] & 0x40 and not m[sp.JOY_PRESSED]  # hJoyPressed: new presses only
    started.button_release("up")
    started.tick(40, False)
    assert position(started) == (sp.REDS_HOUSE_2F, 5, 5)


def test_doors_and_map_edges_warp_and_entering_from_outdoors_sets_last_map(started):
    m = started.memory
    towns_visited = lambda: m[sp.TOWN_VISITED] | m[sp.TOWN_VISITED + 1] << 8  # noqa: E731
    assert m[sp.LAST_MAP] == 0x00 and towns_visited() == 0  # new game, in the bedroom
    play(started, sp.TO_STAIRS + ["b"])  # the bedroom's stairs (6, 1) lead down to 1F, below its stairs
    assert position(started) == (sp.REDS_HOUSE_1F, 6, 2) and (m[sp.MAP_WIDTH], m[sp.MAP_HEIGHT]) == (4, 4)
    assert m[sp.LAST_MAP] == 0x00 and in_control(started)  # indoor to indoor: unchanged
    play(started, ["up", "b"])  # 1F's stairs (6, 1) lead back up to the bedroom (6, 2)
    assert position(started) == (sp.REDS_HOUSE_2F, 6, 2) and m[sp.LAST_MAP] == 0x00
    play(started, ["up", "b"])
    assert position(started) == (sp.REDS_HOUSE_1F, 6, 2)
    assert towns_visited() == 0  # the house is no town
    play(started, sp.DOWNSTAIRS_TO_TOWN + ["b"])  # 1F's door (2, 7) leads out to Pallet (3, 4), below it
    assert position(started) == (sp.PALLET_TOWN, 3, 4) and (m[sp.MAP_WIDTH], m[sp.MAP_HEIGHT]) == (5, 4)
    assert towns_visited() == 1 << sp.PALLET_TOWN  # a town's map marks it visited as it loads
    assert m[sp.LAST_MAP] == 0x00  # indoor to outdoor: unchanged
    play(started, ["up", "b"])  # back through the front door (3, 3): 1F (2, 6), just above its door
    assert position(started) == (sp.REDS_HOUSE_1F, 2, 6) and m[sp.LAST_MAP] == sp.PALLET_TOWN
    play(started, ["down", "b"] + sp.TOWN_TO_ROUTE)  # out again; no Pokemon: Oak stops the player
    assert position(started) == (sp.PALLET_TOWN, 4, 1) and m[sp.FONT_LOADED] & 1 and m[sp.FACING] == 0x04
    play(started, ["b"] + ["down"] * 3 + ["left"] + sp.TOWN_TO_BALL + sp.BEAT_RIVAL + ["down", "down", "b"])
    assert position(started) == (sp.PALLET_TOWN, 7, 4) and m[sp.LAST_MAP] == sp.PALLET_TOWN
    play(started, sp.LAB_TO_ROUTE[2:])  # with the starter, out of town at the top edge
    assert position(started) == (sp.ROUTE_1, 2, 6) and (m[sp.MAP_WIDTH], m[sp.MAP_HEIGHT]) == (3, 4)
    assert m[sp.LAST_MAP] == sp.PALLET_TOWN  # outdoor to outdoor: unchanged
    play(started, ["down"])  # back down over the edge
    assert position(started) == (sp.PALLET_TOWN, 4, 1) and in_control(started)
    assert towns_visited() == 1 << sp.PALLET_TOWN  # Route 1, the lab and the house are no towns


def test_warps_write_the_map_then_fade_then_the_position_but_map_edges_write_both(started):
    play(started, sp.TO_STAIRS[:-1])  # (6, 2), below the bedroom's stairs
    # As WarpFound2, then LoadMapData after GBFadeOutToBlack (pret/pokered home/overworld.asm).
    places = positions_frame_by_frame(started, "up")
    assert [place for place, _ in places] == [(sp.REDS_HOUSE_2F, 6, 2), (sp.REDS_HOUSE_2F, 6, 1),
                                              (sp.REDS_HOUSE_1F, 6, 1), (sp.REDS_HOUSE_1F, 6, 2)]
    assert places[2][1] >= 32  # the new map with the old position for the whole fade
    play(started, sp.DOWNSTAIRS_TO_TOWN + ["b"] + sp.TOWN_TO_BALL + sp.BEAT_RIVAL + sp.LAB_TO_ROUTE[:-1])
    places = positions_frame_by_frame(started, "up")  # a map connection in the real game
    assert [place for place, _ in places] == [(sp.PALLET_TOWN, 4, 1), (sp.PALLET_TOWN, 4, 0),
                                              (sp.ROUTE_1, 2, 6)]


# ---- Text, events, menu -------------------------------------------------------------------------

def test_pc_mom_and_sign_show_text_that_blocks_control_but_set_no_event_flag(started):
    m = started.memory
    assert not event_flags_set(started)
    play(started, ["up"] * 4 + ["left", "left", "up"])  # (1, 2) facing the PC at (1, 1)
    press(started, "a")
    assert m[sp.FONT_LOADED] & 1 and m[sp.HWY] == 0 and m[sp.TILE_MAP + 20 * 16 + 18] == 0xEE
    press(started, "right")
    assert position(started) == (sp.REDS_HOUSE_2F, 1, 2) and not in_control(started)
    settle(started)
    assert not event_flags_set(started)
    play(started, ["right"] * 5 + ["up", "down", "down"])  # 1F (6, 3) facing MOM at (6, 4)
    assert position(started) == (sp.REDS_HOUSE_1F, 6, 3) and m[sp.FACING] == 0x00
    press(started, "a")
    assert m[sp.FONT_LOADED] & 1 and m[sp.HWY] == 0 and not in_control(started)
    settle(started)
    assert not event_flags_set(started)
    play(started, ["up"] + sp.DOWNSTAIRS_TO_TOWN + ["right"] * 3)  # 1F (6, 2), door, Pallet (3, 4), (6, 4)
    assert position(started) == (sp.PALLET_TOWN, 6, 4)
    press(started, "down")  # the sign at (6, 5) blocks: the player turns to face it
    press(started, "a")
    assert m[sp.FONT_LOADED] & 1 and m[sp.HWY] == 0
    press(started, "a")  # A closes text too
    assert in_control(started) and not event_flags_set(started)


def test_only_progress_sets_event_flags_the_rivals_battle_and_the_youngster_past_the_grass(started):
    m = started.memory
    walk(started, sp.GRASS_ROUTE + sp.GRASS_TO_YOUNGSTER)  # the lab, then whatever the grass brings
    assert position(started) == (sp.ROUTE_1, 4, 3) and m[sp.FACING] == 0x04
    assert event_flags_set(started) == {sp.GOT_STARTER, sp.BATTLED_RIVAL_IN_OAKS_LAB}
    press(started, "a")
    assert m[sp.FONT_LOADED] & 1 and m[sp.HWY] == 0
    settle(started)
    youngster = sp.EVENTS["ROUTE_YOUNGSTER"][0]
    assert event_flags_set(started) == {sp.GOT_STARTER, sp.BATTLED_RIVAL_IN_OAKS_LAB, youngster}
    assert m[sp.EVENT_FLAGS + 4] == 0x0D  # D74B bits 0, 2 and 3


def test_start_menu_blocks_movement_until_b(started):
    m = started.memory
    press(started, "start")
    assert not in_control(started) and m[sp.FONT_LOADED] & 1 and m[sp.HWY] == 0
    assert m[sp.MENU_ITEM] == 0 and m[sp.MAX_MENU_ITEM] == 5
    press(started, "down")
    press(started, "down")
    assert m[sp.MENU_ITEM] == 2
    press(started, "up")
    press(started, "left")
    press(started, "a")  # A on an item other than EXIT keeps the menu open
    assert m[sp.MENU_ITEM] == 1 and position(started) == sp.START and not in_control(started)
    assert window_matches_tile_map(started)
    press(started, "b")
    assert in_control(started) and m[sp.FONT_LOADED] & 1 == 0 and m[sp.HWY] == 0x90
    press(started, "up")
    assert position(started) == (sp.REDS_HOUSE_2F, 3, 5)


# ---- Oak's lab: the starter's ball and the rival's first battle ----------------------------------

def test_the_ball_marks_four_species_owned_while_the_party_is_empty_then_the_starter_joins(started):
    m = started.memory
    play(started, sp.TO_TOWN + sp.TOWN_TO_BALL)
    assert position(started) == (sp.OAKS_LAB, 3, 3) and m[sp.FACING] == 0x04 and m[sp.PARTY_COUNT] == 0
    press(started, "a")  # StarterDex: the ball's Pokedex page, with four species owned, and no party
    assert m[sp.POKEDEX_OWNED] == sp.STARTER_DEX_OWNED and m[sp.PARTY_COUNT] == 0
    assert not any(m[sp.POKEDEX_SEEN + i] for i in range(19))
    press(started, "b")  # the page closes; as in AddPartyMon, the count and the species come first...
    assert m[sp.POKEDEX_OWNED] == 0 and m[sp.PARTY_COUNT] == 1 and m[sp.PARTY_SPECIES + 1] == 0xFF
    assert m[sp.PARTY_LEVEL] == 0  # ...the struct is still empty where the nickname prompt would be...
    press(started, "b")  # ...then the struct, the starter's owned and seen bits (dex 4), the stats
    assert m[sp.POKEDEX_OWNED] == m[sp.POKEDEX_SEEN] == 0x08 and m[sp.PARTY_LEVEL] == 5
    assert sp.hp(started) == sp.max_hp(started) == 20
    assert event_flags_set(started) == {sp.GOT_STARTER}  # as the lab's script: once the starter has joined
    press(started, "b")  # the rival's battle: his SQUIRTLE (dex 7) seen
    assert m[sp.IS_IN_BATTLE] == 2 and m[sp.CUR_OPPONENT] == sp.OPP_RIVAL1 and m[sp.POKEDEX_SEEN] == 0x48
    play(started, ["a", "a", "a", "b"])  # won with A: a level, then the lab heals the party
    assert m[sp.IS_IN_BATTLE] == 0 and m[sp.PARTY_LEVEL] == 6 and sp.hp(started) == sp.max_hp(started)
    assert sp.event_set(started, sp.BATTLED_RIVAL_IN_OAKS_LAB) and m[sp.POKEDEX_OWNED] == 0x08
    settle(started)
    press(started, "a")  # the ball again: empty, no Pokedex page
    assert m[sp.FONT_LOADED] & 1 and m[sp.POKEDEX_OWNED] == 0x08 and m[sp.PARTY_COUNT] == 1


def test_losing_the_rivals_first_battle_in_the_lab_is_no_blackout(started):
    m = started.memory
    play(started, sp.TO_TOWN + sp.TOWN_TO_BALL)
    states = []
    for button in sp.LOSE_TO_RIVAL:  # B does no damage: four of them lose the battle
        press(started, button)
        states.append((m[sp.IS_IN_BATTLE], sp.hp(started)))
    assert (2, 0) in states and all(in_battle != 0xFF for in_battle, _ in states)  # wiped, not blacked out
    assert position(started) == (sp.OAKS_LAB, 3, 3) and in_control(started)  # not sent home
    assert sp.hp(started) == sp.max_hp(started) == 20 and m[sp.PARTY_LEVEL] == 5  # healed by the lab
    assert sp.event_set(started, sp.BATTLED_RIVAL_IN_OAKS_LAB)


def test_the_museum_ticket_flag_is_set_by_each_ticket_and_reset_on_route_1(started):
    m = started.memory
    walk(started, sp.GRASS_ROUTE + sp.GRASS_TO_LEADER[:4])  # into the gym
    play(started, ["b", "left", "left"])  # facing the seller
    ticket = sp.EVENTS["BOUGHT_MUSEUM_TICKET"][0]
    assert position(started) == (sp.PEWTER_GYM, 2, 4) and m[sp.FACING] == 0x08
    assert not sp.event_set(started, ticket)
    for _ in range(2):
        press(started, "a")
        settle(started)
        assert sp.event_set(started, ticket) and m[sp.EVENT_FLAGS + 13] == 0x01  # D754 bit 0: event $68
        play(started, ["right", "down", "b"])  # out to Route 1, which stands in for Pewter City
        assert position(started) == (sp.ROUTE_1, 2, 2) and not sp.event_set(started, ticket)
        play(started, ["up", "b", "left", "left"])


def test_the_youngster_gives_a_second_charmander_who_fights_on_and_the_menu_switches_the_two(started):
    m = started.memory

    def party():  # (species, HP, level, max HP) of each struct; the stand-in uses the low bytes
        return [(m[mon], m[mon + 0x02], m[mon + 0x21], m[mon + 0x23]) for mon in (0xD16B, 0xD16B + 44)]

    walk(started, sp.GRASS_ROUTE + sp.GRASS_TO_YOUNGSTER)
    press(started, "a")
    settle(started)
    assert m[sp.PARTY_COUNT] == 2 and [m[sp.PARTY_SPECIES + i] for i in range(3)] == [0xB0, 0xB0, 0xFF]
    lead, twin = party()
    assert twin == (0xB0, 20, 5, 20) and lead[1] < lead[3]  # the lead hurt by the grass on the way
    press(started, "a")  # talked to again: no third one
    settle(started)
    play(started, ["start", "a"])  # POKEMON: the two switch places
    assert party() == [twin, lead] and m[sp.FONT_LOADED] & 1
    settle(started)
    play(started, ["start", "a", "b"])
    assert party() == [lead, twin] and in_control(started)
    lead_fainted = False
    for _ in range(200):  # fight until the lead faints: the other one fights on, no blackout
        if in_control(started):
            press(started, "up" if m[sp.Y_COORD] == 4 else "down", render=False)
        else:
            press(started, "a", render=False)
        lead_fainted |= m[sp.IS_IN_BATTLE] == 1 and party()[0][1] == 0
        if lead_fainted and party()[1][2] > 5:
            break
    assert lead_fainted and party()[1][2] > 5 and position(started)[0] == sp.ROUTE_1


# ---- Battles, HP, badge -------------------------------------------------------------------------

def test_grass_battle_blocks_movement_and_winning_raises_the_level(started):
    m = started.memory
    play(started, sp.GRASS_ROUTE)
    steps = 0
    while not m[sp.IS_IN_BATTLE]:
        assert in_control(started) and steps < 40
        press(started, "up" if m[sp.Y_COORD] == 4 else "down")
        steps += 1
    assert m[sp.IS_IN_BATTLE] == 1 and m[sp.CUR_OPPONENT] != 0 and not in_control(started)
    assert any(m[sp.POKEDEX_SEEN + i] & ~m[sp.POKEDEX_OWNED + i] for i in range(19))  # seen, not owned
    here, level, max_hp = position(started), m[sp.PARTY_LEVEL], sp.max_hp(started)
    screen = np.array(started.screen.ndarray)
    press(started, "right")
    assert position(started) == here and m[sp.IS_IN_BATTLE] == 1
    settle(started, "a")
    assert m[sp.IS_IN_BATTLE] == 0 and m[sp.CUR_OPPONENT] == 0
    assert m[sp.PARTY_LEVEL] == level + 1 and sp.max_hp(started) > max_hp
    assert sp.hp(started) < sp.max_hp(started)  # the foe hit back
    assert sum(bin(m[sp.POKEDEX_OWNED + i]).count("1") for i in range(19)) == 2  # the starter and the foe
    sp.wait(started)
    assert not np.array_equal(screen, started.screen.ndarray)  # the battle screen is not the map


def test_hp_runs_out_in_a_blackout_and_the_bed_heals(started):
    m = started.memory
    play(started, sp.GRASS_ROUTE)
    blackout_seen = False
    for _ in range(400):  # fight everything, never heal
        if m[sp.IS_IN_BATTLE] == 0xFF:
            blackout_seen = sp.hp(started) == 0
        if blackout_seen and in_control(started):
            break
        if in_control(started):
            press(started, "up" if m[sp.Y_COORD] == 4 else "down", render=False)
        else:
            press(started, "a", render=False)
    assert blackout_seen and position(started) == sp.START and sp.hp(started) == sp.max_hp(started)
    assert m[sp.IS_IN_BATTLE] == 0 and m[sp.CUR_OPPONENT] == 0
    play(started, sp.BED_TO_GRASS)
    while not m[sp.IS_IN_BATTLE]:
        press(started, "up" if m[sp.Y_COORD] == 4 else "down", render=False)
    settle(started, "a")
    assert sp.hp(started) < sp.max_hp(started)
    if m[sp.Y_COORD] != 4:
        press(started, "down")
        settle(started, "a")
    for button in sp.GRASS_TO_BED:
        settle(started)
        press(started, button, render=False)
    assert position(started) == sp.HEAL and sp.hp(started) == sp.max_hp(started)


def test_leader_refuses_below_the_level_threshold(started):
    m = started.memory
    for button in sp.GRASS_ROUTE + sp.GRASS_TO_LEADER:
        settle(started, "b")  # run from wild battles
        press(started, button, render=False)
    settle(started, "b")
    assert position(started) == (sp.PEWTER_GYM, 3, 2) and m[sp.LAST_MAP] == sp.ROUTE_1
    press(started, "a")
    assert m[sp.FONT_LOADED] & 1 and m[sp.IS_IN_BATTLE] == 0  # "too weak", no battle
    settle(started)
    assert m[sp.BADGES] == 0 and m[sp.IS_IN_BATTLE] == 0


def test_badge_route_wins_the_badge(started):
    m = started.memory
    levels, trainer_battle = set(), False
    for button in sp.BADGE_ROUTE:
        press(started, button, render=False)
        levels.add(m[sp.PARTY_LEVEL])
        trainer_battle |= m[sp.IS_IN_BATTLE] == 2
    assert trainer_battle and m[sp.BADGES] & 1 and sp.event_set(started, sp.BEAT_BROCK)
    assert min(levels) == 0 and min(levels - {0}) == 5 and max(levels) >= sp.BADGE_LEVEL  # 0: no party yet
    assert in_control(started) and 100 <= len(sp.BADGE_ROUTE) <= 400


def test_badge_route_is_what_the_planner_records(started):
    assert sp.plan_badge_route(started) == sp.BADGE_ROUTE


@pytest.mark.parametrize("seed", [0, 21])
def test_random_agent_explores_but_never_gets_the_badge(started, seed):
    rng = np.random.default_rng(seed)
    visited = set()
    for _ in range(5000):
        press(started, BUTTONS[rng.integers(len(BUTTONS))], render=False)
        visited.add(position(started))
    assert started.memory[sp.BADGES] == 0
    assert len(visited) >= 20 and len({map_id for map_id, _, _ in visited}) >= 2


# ---- Determinism and save states --------------------------------------------------------------

def snapshot(pyboy):
    sp.wait(pyboy, 1)
    ram = bytes(pyboy.memory[0xC000:0xE000]) + bytes(pyboy.memory[0xFF80:0xFFFF])
    return ram, np.array(pyboy.screen.ndarray)


def test_same_inputs_give_the_same_ram_and_screen(standin_rom):
    results = []
    for _ in range(2):
        emulator = new_pyboy(standin_rom)
        sp.skip_intro(emulator)
        play(emulator, sp.BADGE_ROUTE[:60])
        results.append(snapshot(emulator))
        emulator.stop(save=False)
    assert results[0][0] == results[1][0] and np.array_equal(results[0][1], results[1][1])


def test_save_and_load_state_round_trip(started):
    play(started, sp.GRASS_ROUTE)
    state = io.BytesIO()
    started.save_state(state)
    inputs = sp.BADGE_ROUTE[len(sp.GRASS_ROUTE):len(sp.GRASS_ROUTE) + 30]
    play(started, inputs)
    first = snapshot(started)
    state.seek(0)
    started.load_state(state)
    play(started, inputs)
    second = snapshot(started)
    assert first[0] == second[0] and np.array_equal(first[1], second[1])
