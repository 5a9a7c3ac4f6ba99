"""Pokemon Red as a Gymnasium environment on the PyBoy Game Boy emulator, and the envs stepped together.

One step presses one of the 8 buttons for a few frames, releases it and runs `frame_skip` frames
in all, rendering only the last. The agent sees the last `frame_stack` screens, downscaled to
`obs_height` x `obs_width` grayscale, newest last. Rewards come from the game's RAM (addresses as
pret/pokered's ram/wram.asm names them): new badges, new (map, x, y) tiles, party levels gained, new
event flags, new Pokedex entries, healing outside battle, and a penalty per blackout. Episodes end
only by truncation after `max_steps` steps. Without `init_state`, the environment boots the ROM and
drives the new-game intro itself by reading the game's RAM, then restores that start state from memory
on every reset.

The file, part by part (each under a banner):
- The game: RAM addresses, the ROMs we know, the intro driver (`load_rom`, `drive_intro`).
- The environment: its settings, declared once (`EnvSettings`), and `PokemonRedEnv`.
- Where the agents went: per-map panels and the world map (`render_heatmap`, `render_world_map`),
  game knowledge the trainer and the player only call; map positions come from world_map.json.
- The swarm: `Swarm`, the archive of the furthest states the envs reached (`PokemonRedEnv.progress`,
  `set_swarm`), from which a share of the resets start.
- Envs stepped together: `make_vector_env` (PufferLib's vector API: PufferLib's Serial where it is
  installed, else ours; our `Multiprocessing`, whose workers sleep while they wait) and `EnvGroups`,
  envs in groups that take turns with the policy, which also carries the swarm's states to and from them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import math
import multiprocessing
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

# PufferLib first: it hides the import notice of the unmaintained gym package it depends on. It has
# wheels for Linux x86-64 with Python 3.11 only; elsewhere our Serial and Multiprocessing stand in.
try:
    import pufferlib.emulation
    import pufferlib.vector
except ImportError:
    pufferlib = None

import cv2
import gymnasium
import numpy as np

warnings.filterwarnings("ignore", message="Using SDL2 binaries")  # PyBoy's import-time notice
from pyboy import PyBoy  # noqa: E402
from pyboy.plugins.game_wrapper_pokemon_gen1_constants import (
    CURRENT_OPPONENT_ADDRESS,
    EVENT_FLAGS,
    EVENT_FLAGS_ADDRESS,
    OBTAINED_BADGES_ADDRESS,
    PARTY_COUNT_ADDRESS,
    PARTY_LENGTH,
    PARTY_MON_SIZE,
    PARTY_MONS_ADDRESS,
    PARTY_SPECIES_ADDRESS,
)

# ----- The game: RAM addresses, the ROMs we know, the intro driver -----

ACTIONS = ["a", "b", "up", "down", "left", "right", "start", "select"]  # PyBoy's button names

RED_SHA1 = "ea9bcae617fdf159b045185467ae58b2e4a48b9a"
KNOWN_ROMS = {RED_SHA1: "Pokemon Red", "d7037c83e1ae5b39bde3c30787637ba1d4c48ce2": "Pokemon Blue"}
STANDIN_TITLE = "STANDIN"  # our own test cartridge, rebuilt often, so known by title, not hash

# Work RAM: wCurMap, wYCoord, wXCoord, wIsInBattle, wPokedexOwned/Seen, the party structs (pret/pokered
# ram/wram.asm, macros/ram.asm). Multi-byte HP values are big-endian.
MAP_ID, Y_COORD, X_COORD = 0xD35E, 0xD361, 0xD362
IS_IN_BATTLE = 0xD057  # 0 none, 1 wild, 2 trainer, $FF lost
POKEDEX_OWNED, POKEDEX_SEEN, POKEDEX_BYTES = 0xD2F7, 0xD30A, 19
EVENT_FLAGS_BYTES = 320
MON_HP, MON_LEVEL, MON_MAX_HP = 0x01, 0x21, 0x22  # offsets inside a 44-byte party struct
NUM_MAPS, MAX_LEVEL = 0xF8, 100
OAKS_LAB = 0x28
# Event flags that are state, not progress: the game sets and resets them as the player comes and
# goes, so they pay nothing. Names as in PyBoy's EVENT_FLAGS; where pret/pokered sets or resets each.
UNPAID_EVENTS = (
    "bought_museum_ticket",  # reset every frame in Pewter City, set per ticket (scripts/PewterCity.asm)
    "2a7",  # set after every battle in Cinnabar Gym, reset by its script (home/overworld.asm)
    "in_safari_zone", "safari_game_over",  # a Safari Game under way or over (scripts/SafariZoneGate.asm)
    "mansion_switch_on",  # the mansion's switches; reset on Cinnabar Island (scripts/CinnabarIsland.asm)
    "pikachu_fan_boast", "seel_fan_boast",  # which fan boasts next (scripts/PokemonFanClub.asm)
    "pokemon_tower_rival_on_left",  # which side the rival stands (scripts/PokemonTower2F.asm)
    "in_purified_zone",  # standing in Pokemon Tower 5F's safe zone (scripts/PokemonTower5F.asm)
    "in_seafoam_islands",  # set inside, reset on Route 20 (scripts/Route20.asm)
    "fight_route12_snorlax", "fight_route16_snorlax",  # only during the fight (scripts/Route12.asm)
)
PAID_EVENTS = ~sum(1 << EVENT_FLAGS[name] for name in UNPAID_EVENTS)  # a mask over the flags as an int
# How far a game is, for the swarm (Swarm): the events the story cannot go on without, in the order it asks for
# them (pret/pokered constants/event_constants.asm; set by scripts/OaksLab.asm, ViridianMart.asm, PewterGym.asm,
# CeruleanCity.asm, CeruleanGym.asm, BillsHouse.asm, SSAnneCaptainsRoom.asm, ...). Not every flag: trainers
# beaten are flags too, and some ranges are reset again (the Elite Four's), so a raw count would not only grow.
STORY_EVENTS = (
    "followed_oak_into_lab", "got_starter", "battled_rival_in_oaks_lab", "got_oaks_parcel", "oak_got_parcel",
    "got_pokedex", "beat_brock", "beat_cerulean_rival", "beat_misty", "met_bill", "got_ss_ticket", "got_hm01",
    "beat_lt_surge", "got_bicycle", "beat_erika", "beat_rocket_hideout_giovanni", "rescued_mr_fuji",
    "got_poke_flute", "beat_silph_co_giovanni", "beat_sabrina", "beat_koga", "got_hm03", "got_hm04", "beat_blaine",
    "beat_viridian_gym_giovanni", "beat_champion_rival",
)  # fmt: skip
STORY_MASK = sum(1 << EVENT_FLAGS[name] for name in STORY_EVENTS)
# wTownVisitedFlag: bit n is set as town map n (below ROUTE_1) loads, for Fly; 11 towns (pret/pokered ram/wram.asm,
# engine/overworld/missable_objects.asm: MarkTownVisitedAndLoadMissableObjects).
TOWN_VISITED, TOWNS_MASK = 0xD70B, (1 << 11) - 1
# The progress key's parts, in the order they are compared; each is also an episode statistic.
PROGRESS = ("badges", "story_events", "towns_visited", "pokedex_owned", "level_sum")

# Intro signals, read off the screen's tile map and the menu variables.
MAIN_MENU_TILE, MAIN_MENU_LETTER = 0xC3CA, 0x8D  # tile (2, 2): "N" of NEW GAME (and of NEW NAME)
OPTION_TILE, OPTION_LETTER = 0xC3F2, 0x8E  # tile (2, 4): "O" of OPTION, only on the main menu
NAME_LIST_TILES, NAME_LIST_TEXT = 0xC3A3, [0x8D, 0x80, 0x8C, 0x84]  # "NAME" of NEW NAME
MENU_WATCHED_KEYS, MAIN_MENU_KEYS, NAME_LIST_KEYS = 0xCC29, 0x0B, 0x01
CURRENT_MENU_ITEM, MAX_MENU_ITEM = 0xCC26, 0xCC28
TEXT_PROMPT_TILE, TEXT_PROMPT_ARROW = 0xC4F2, 0xEE  # tile (18, 16): the arrow of a waiting text
INTRO_FRAME_BUDGET = 30_000  # about 8 minutes of game time: a generous ceiling
CONTROL_SETTLE_FRAMES = 60  # control must last this long, so a moment mid-animation does not count
HOLD_FRAMES = 8  # a press held this long is never lost; the rest of the step is released
MAX_IDLE_FRAMES = 16  # reset() waits 1..16 frames, chosen by the seed


class RomError(ValueError):
    """The ROM file is missing or is not a Game Boy ROM."""


class StateError(ValueError):
    """The init_state file is not a PyBoy save state of this game."""


class IntroError(RuntimeError):
    """The intro driver did not bring the player into control within its frame budget."""


class UnknownRomWarning(UserWarning):
    """A valid Game Boy ROM that is neither Pokemon Red/Blue nor the stand-in cartridge."""


class Rom(NamedTuple):
    data: bytes
    name: str  # "Pokemon Red", "stand-in cartridge", or the header's title
    sha1: str
    title: str  # the header's


def load_rom(rom_path) -> Rom:
    """Read and check a ROM file. Warns once per process (the first time) on a ROM we do not know."""
    path = Path(rom_path)
    if not path.is_file():
        raise RomError(
            f"no ROM at {path}: put your own legally obtained Pokemon Red at roms/pokemon_red.gb "
            f"(SHA-1 {RED_SHA1})"
        )
    rom = path.read_bytes()
    size_code = rom[0x148] if len(rom) > 0x148 else -1
    if not 0 <= size_code <= 8 or len(rom) != 0x8000 << size_code:
        raise RomError(f"{path} is not a Game Boy ROM: {len(rom)} bytes does not match its header")
    header_checksum = 0
    for byte in rom[0x134:0x14D]:
        header_checksum = (header_checksum - byte - 1) & 0xFF
    if header_checksum != rom[0x14D]:
        raise RomError(f"{path} is not a Game Boy ROM: bad header checksum")

    sha1 = hashlib.sha1(rom).hexdigest()
    title = rom[0x134:0x144].split(b"\0")[0].decode("ascii", "replace").strip()
    if sha1 in KNOWN_ROMS:
        return Rom(rom, KNOWN_ROMS[sha1], sha1, title)
    if title == STANDIN_TITLE:
        return Rom(rom, "stand-in cartridge", sha1, title)
    # From this line, whoever calls: Python's default filter then shows it once per process.
    message = f"{path} ({title!r}, SHA-1 {sha1}) is not Pokemon Red or Blue: RAM addresses may not match"
    warnings.warn(message, UnknownRomWarning, stacklevel=1)
    return Rom(rom, title, sha1, title)


def player_in_control(memory) -> bool:
    """True when the player walks the overworld: no battle, text box, menu, script or warp."""
    return (
        memory[IS_IN_BATTLE] == 0
        and memory[CURRENT_OPPONENT_ADDRESS] == 0
        and memory[0xCD6B] == 0  # wJoyIgnore
        and memory[0xD730] & 0xA1 == 0  # wStatusFlags5: scripted NPC, joypad off, simulated
        and memory[0xCFC4] & 0x01 == 0  # wFontLoaded: text box or start menu open
        and memory[0xFFB0] != 0  # hWY: 0 while a text box or menu window covers the screen
        and memory[0xCD38] == 0  # wSimulatedJoypadStatesIndex
        and memory[0xCC57] == 0  # wNPCMovementScriptPointerTableNum
        and memory[0xCFC5] == 0  # wWalkCounter: mid-step
        and memory[0xD736] & 0xC2 == 0  # wMovementFlags: door, ledge, spinning
    )


def drive_intro(pyboy: PyBoy, frame_budget: int = INTRO_FRAME_BUDGET) -> int:
    """From power-on, play the new-game intro until the player controls Red in his room.

    Reads screen tiles and menu variables: Start until the main menu, A for NEW GAME, B for text
    (name lists ignore B), and Down then A at each name list for the default name; done once the
    player, past the name lists, has been in control for a second. There is never a save file (the
    ROM is loaded without its .ram), so NEW GAME is the first menu item.
    Returns the frames used; raises IntroError when the budget runs out.
    """
    memory = pyboy.memory
    frames = frames_in_control = 0
    main_menu_seen = name_list_seen = False

    def press(button):
        nonlocal frames
        pyboy.button(button, HOLD_FRAMES)
        pyboy.tick(2 * HOLD_FRAMES, False)  # held, then released as long
        frames += 2 * HOLD_FRAMES

    def wait():
        nonlocal frames
        pyboy.tick(4, False)
        frames += 4

    while frames < frame_budget:
        # The title screen satisfies the predicate too (WRAM zeroed, hWY non-zero: pret/pokered
        # home/init.asm, engine/movie/title.asm): only control after the name lists is Red's room.
        if name_list_seen and player_in_control(memory):
            if frames_in_control >= CONTROL_SETTLE_FRAMES:
                return frames
            wait()
            frames_in_control += 4
            continue
        frames_in_control = 0
        watched_keys = memory[MENU_WATCHED_KEYS]
        if (
            memory[NAME_LIST_TILES : NAME_LIST_TILES + 4] == NAME_LIST_TEXT
            and memory[MAX_MENU_ITEM] == 3
            and watched_keys == NAME_LIST_KEYS
        ):
            name_list_seen = True
            press("down" if memory[CURRENT_MENU_ITEM] == 0 else "a")  # item 0 is NEW NAME
        elif (
            memory[MAIN_MENU_TILE] == MAIN_MENU_LETTER
            and memory[OPTION_TILE] == OPTION_LETTER
            and watched_keys == MAIN_MENU_KEYS
        ):
            main_menu_seen = True
            press("a")
        elif memory[TEXT_PROMPT_TILE] == TEXT_PROMPT_ARROW:
            press("b")
        elif not main_menu_seen:
            press("start")  # skips the intro movie, then leaves the title screen
        else:
            wait()  # animations and map loads
    raise IntroError(
        f"the intro did not reach the player in control within {frame_budget} frames "
        f"(main menu seen: {main_menu_seen}, name list seen: {name_list_seen}, map {memory[MAP_ID]:#04x})"
    )


def episode_stats(info: dict) -> dict:
    """An episode's statistics from its last info: the scalars (visited_tiles left out), as plain numbers."""
    return {key: value.item() if isinstance(value, np.generic) else value
            for key, value in info.items() if np.ndim(value) == 0}


def _bits(data) -> int:
    return int.from_bytes(bytes(data), "little")


def first_line(error: BaseException) -> str:
    """An exception's message in one line (its first), or its type's name when it has none."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# ----- The environment: its settings, declared once, and PokemonRedEnv -----


@dataclass
class EnvSettings:
    """The environment's settings, declared once: PokemonRedEnv's keyword arguments, the trainer's
    flags (--frame-skip, --badge-reward, ...) and the `env_kwargs` that checkpoints record."""

    rom_path: str = "roms/pokemon_red.gb"
    """the Game Boy ROM; roms/standin.gb is our own stand-in cartridge for a no-ROM demo"""
    init_state: Optional[list[str]] = None
    """PyBoy save states or folders of *.state files, one drawn each reset; None: boot and play the intro"""
    frame_skip: int = 24
    """emulator frames per action"""
    max_steps: int = 4096
    """episode length limit in agent steps (a truncation, not a termination)"""
    obs_height: int = 84
    """observation height in pixels"""
    obs_width: int = 84
    """observation width in pixels"""
    grayscale: bool = True
    """one gray channel per frame instead of three colour channels"""
    frame_stack: int = 4
    """number of stacked frames in an observation"""
    badge_reward: float = 4.0
    """reward for each new gym badge"""
    explore_reward: float = 0.01
    """reward for each new map tile visited in an episode"""
    level_reward: float = 0.01
    """reward for each party level gained"""
    event_reward: float = 1.6
    """reward for each new event flag set"""
    seen_reward: float = 1.6
    """reward for each new Pokedex entry seen"""
    owned_reward: float = 1.6
    """reward for each new Pokedex entry owned"""
    heal_reward: float = 0.8
    """reward for healing the party outside battle (per share of total max HP restored)"""
    blackout_penalty: float = 0.08
    """penalty for each blackout (party wiped out)"""

    def __post_init__(self):
        # One path, as checkpoints recorded it before start states could be many, or several: str paths.
        if isinstance(self.init_state, (str, os.PathLike)):
            self.init_state = [self.init_state]
        if self.init_state is not None:
            self.init_state = [os.fspath(path) for path in self.init_state]

    def start_state_files(self) -> Optional[list[str]]:
        """init_state with each folder replaced by its *.state files in name order; None: boot.

        Raises StateError, in one line naming the path, for a path that is missing or a folder without states.
        """
        if self.init_state is None:
            return None
        files = []
        for path in map(Path, self.init_state):
            if path.is_dir():
                states = sorted(str(state) for state in path.glob("*.state") if state.is_file())
                if not states:
                    raise StateError(f"init_state folder {path} holds no *.state files")
                files += states
            elif path.is_file():
                files.append(str(path))
            else:
                raise StateError(f"init_state {path} does not exist")
        return files

    def problem(self) -> Optional[str]:
        """Why these settings cannot work, in one line naming the flag, or None."""
        if self.init_state == []:
            return "--init-state needs a state file or folder (leave it out to boot the ROM)"
        minimums = dict(frame_skip=2, max_steps=1, obs_height=1, obs_width=1, frame_stack=1)
        for name, minimum in minimums.items():
            if getattr(self, name) < minimum:
                return f"--{name.replace('_', '-')} must be at least {minimum} (got {getattr(self, name)})"
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith(("_reward", "_penalty")) and not (math.isfinite(value) and value >= 0):
                return f"--{field.name.replace('_', '-')} must be a finite number >= 0 (got {value})"
        return None


# Start states the intro driver reached, by ROM SHA-1: later envs in this process, and the workers it hands
# them to (booted_start_states, add_booted_start_states), skip the intro.
_BOOTED: dict[str, bytes] = {}


def booted_start_states() -> dict[str, bytes]:
    """The start states the intro driver has reached in this process, by ROM SHA-1."""
    return dict(_BOOTED)


def add_booted_start_states(states: dict[str, bytes]) -> None:
    """Start states booted elsewhere (in the process that started this one): envs made here use them."""
    _BOOTED.update(states)


class PokemonRedEnv(gymnasium.Env):
    """Pokemon Red on PyBoy: 8 buttons, stacked downscaled screens, rewards read from RAM.

    Observations are (frame_stack, obs_height, obs_width) uint8, the newest frame last; with
    grayscale=False, (frame_stack * 3, obs_height, obs_width): each frame's R, G, B planes in turn.
    The env never terminates; `max_steps` truncates. `info` is {} on every step but the last of an
    episode, which carries the episode's statistics (see `_episode_info`). The reward weights'
    defaults and where they come from are in README.md.
    """

    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": 60}

    def __init__(self, render_mode: str | None = None, intro_frame_budget: int = INTRO_FRAME_BUDGET,
                 **settings):
        """`settings`: the keyword arguments of EnvSettings (rom_path, init_state, frame_skip, ...)."""
        if render_mode not in (None, "rgb_array", "human"):
            raise ValueError(f"render_mode must be None, 'rgb_array' or 'human', not {render_mode!r}")
        self.settings = s = EnvSettings(**settings)
        problem = s.problem()
        if problem:
            raise ValueError(problem)
        self.frame_skip, self.max_steps, self.grayscale = s.frame_skip, s.max_steps, s.grayscale
        self.obs_size = (s.obs_width, s.obs_height)  # cv2 order
        self.render_mode = render_mode
        self.hold_frames = min(HOLD_FRAMES, s.frame_skip // 2)
        self.weights = dict(
            badge=s.badge_reward, explore=s.explore_reward, level=s.level_reward, event=s.event_reward,
            seen=s.seen_reward, owned=s.owned_reward, heal=s.heal_reward, blackout=-s.blackout_penalty,
        )  # fmt: skip

        channels = 1 if s.grayscale else 3
        self.channels = channels
        self.observation_space = gymnasium.spaces.Box(
            0, 255, (s.frame_stack * channels, s.obs_height, s.obs_width), np.uint8
        )
        self.action_space = gymnasium.spaces.Discrete(len(ACTIONS))
        self.frames = np.zeros(self.observation_space.shape, np.uint8)

        self.rom = load_rom(s.rom_path)
        self.rom_name, self.rom_sha1 = self.rom.name, self.rom.sha1
        # The ROM goes in as bytes: PyBoy then neither reads nor writes a .ram beside the user's file.
        self.pyboy = PyBoy(
            io.BytesIO(self.rom.data),
            window="SDL2" if render_mode == "human" else "null",
            sound_emulated=False,
            cgb=False,  # Game Boy (DMG) mode, as the game was made for: a gray palette
            log_level="ERROR",
        )
        self.pyboy.set_emulation_speed(1 if render_mode == "human" else 0)
        try:
            files = s.start_state_files()  # every file is checked now, not when a reset first draws it
            if files is not None:
                self.start_states = [self._load_init_state(path) for path in files]
            else:
                if self.rom_sha1 not in _BOOTED:
                    drive_intro(self.pyboy, intro_frame_budget)
                    _BOOTED[self.rom_sha1] = self._save_state()
                self.start_states = [_BOOTED[self.rom_sha1]]
        except Exception:
            self.pyboy.stop(save=False)
            raise
        self.start_index = 0  # which of start_states the episode started from (-1: one of the swarm's)
        self.swarm, self.swarm_share, self.swarm_furthest = None, 0.0, ()  # set_swarm()

    # ----- Gymnasium API -----

    @property
    def start_state(self) -> bytes:
        """The first of the PyBoy states this env's episodes start from (init_state's first, or the booted intro)."""
        return self.start_states[0]

    def set_swarm(self, archive: list, share: float):
        """Start a `share` of the resets from the states of `archive`, (progress key, state) pairs (see Swarm); and
        from now on, a step that reaches a key beyond the archive's and its episode's start returns its state in the
        info (`swarm_key`, `swarm_state`) for the trainer's archive."""
        self.swarm, self.swarm_share = list(archive), share
        self.swarm_furthest = max([self.swarm_furthest] + [key for key, _ in archive])

    def reset(self, *, seed=None, options=None):
        """Restore a start state, then wait 1 to 16 idle frames, both drawn from the env's RNG.

        The same seed gives the same start state and wait, hence the same episode for the same actions.
        Pokemon Red advances its random numbers every frame, so different waits mean different encounters
        and parallel envs out of lockstep. seed=None continues the env's RNG. A swarm state that does not
        load is dropped (its key and why in the info, `swarm_dropped`) and a usual start state taken.
        """
        super().reset(seed=seed)
        info, self.start_index = {}, 0
        # Drawn only from several, and from a swarm with states: otherwise the RNG, and so every episode, is as before.
        if self.swarm and self.np_random.random() < self.swarm_share:
            key, state = self.swarm[int(self.np_random.integers(len(self.swarm)))]
            try:
                self._load_state(state, f"swarm state {Swarm.name(key)}")
                self.start_index = -1
            except StateError as error:  # a file broken on disk, say: the run goes on without it
                self.swarm.remove((key, state))
                info["swarm_dropped"] = (key, str(error))
        if self.start_index == 0:
            if len(self.start_states) > 1:
                self.start_index = int(self.np_random.integers(len(self.start_states)))
            self.pyboy.load_state(io.BytesIO(self.start_states[self.start_index]))
        self.pyboy.tick(1 + int(self.np_random.integers(MAX_IDLE_FRAMES)), True)
        newest = self.frames[-self.channels :]
        self._downscale_screen(into=newest)
        self.frames[:] = np.tile(newest, (len(self.frames) // self.channels, 1, 1))
        self._start_episode()
        return self.frames.copy(), info

    def step(self, action):
        self.pyboy.button(ACTIONS[action], self.hold_frames)
        if self.render_mode == "human":
            for _ in range(self.frame_skip):
                self.pyboy.tick(1, True)  # every frame, in real time, for the window
        else:
            self.pyboy.tick(self.frame_skip, True)  # renders the last frame only
        c = self.channels
        self.frames[:-c] = self.frames[c:]
        self._downscale_screen(into=self.frames[-c:])

        reward = self._update_progress()
        self.steps += 1
        self.episode_return += reward
        truncated = self.steps >= self.max_steps
        # PufferLib forwards only truthy infos: an empty dict except at the end of an episode or a swarm's discovery.
        info = self._episode_info() if truncated else {}
        if self.swarm is not None and (key := self.progress()) > self.episode_furthest:
            self.episode_furthest = self.swarm_furthest = key  # offered once; the archive may hold it later
            info.update(swarm_key=key, swarm_state=self._save_state())
        return self.frames.copy(), reward, False, truncated, info

    def render(self):
        if self.render_mode == "rgb_array":
            return self.pyboy.screen.ndarray[:, :, :3].copy()  # (144, 160, 3)
        return None  # "human": the PyBoy window shows every frame

    def close(self):
        self.pyboy.stop(save=False)  # never write a .ram file

    def save_state(self, path):
        """Write the emulator's current state to `path`, for use as `init_state`."""
        Path(path).write_bytes(self._save_state())

    def progress(self) -> tuple:
        """How far the game is, as the swarm compares it: (badges, story events, towns visited, species owned, party
        levels), in that order (PROGRESS). All read from RAM, so a state has the same key wherever it is loaded.
        Badges first: the anchors' coordinate-only rewards never made an agent face Brock; the story's events and
        the levels it needs did (README.md)."""
        memory = self.pyboy.memory
        towns = (memory[TOWN_VISITED] | memory[TOWN_VISITED + 1] << 8) & TOWNS_MASK
        return (self.badges_raw.bit_count(), (_bits(self.events_raw) & STORY_MASK).bit_count(), towns.bit_count(),
                sum(byte.bit_count() for byte in self.dex_raw[:POKEDEX_BYTES]), sum(self.party[1]))

    # ----- Observations -----

    def _downscale_screen(self, into: np.ndarray):
        """Write the current screen, downscaled, into a (channels, height, width) uint8 view.

        Bilinear, not INTER_AREA: 4x cheaper (INTER_AREA alone would cost ~8% of an emulator step
        on the stand-in), and at this < 2x downscale every input row and column still contributes.
        """
        screen = self.pyboy.screen.ndarray  # (144, 160, 4) RGBA, reused by PyBoy
        if self.grayscale:  # the DMG palette is gray: the red channel is the grayscale image
            gray = cv2.extractChannel(screen, 0)  # contiguous: resizes faster than a strided view
            cv2.resize(gray, self.obs_size, dst=into[0], interpolation=cv2.INTER_LINEAR)
        else:
            rgb = cv2.resize(screen[:, :, :3], self.obs_size, interpolation=cv2.INTER_LINEAR)
            into[:] = rgb.transpose(2, 0, 1)

    # ----- Start states -----

    def _save_state(self) -> bytes:
        buffer = io.BytesIO()
        self.pyboy.save_state(buffer)
        return buffer.getvalue()

    def _load_init_state(self, path) -> bytes:
        data = Path(path).read_bytes()
        self._load_state(data, path)
        return data

    def _load_state(self, data: bytes, name) -> None:
        """Load a PyBoy state that holds a Pokemon Red game of this ROM, or raise StateError naming it."""
        reader = io.BytesIO(data)
        try:
            self.pyboy.load_state(reader)
        except Exception as error:
            raise StateError(f"{name} is not a PyBoy save state of this ROM: {error}") from None
        if reader.tell() != len(data):  # another cartridge type stores a different amount of RAM
            raise StateError(f"{name} is not a PyBoy save state of this ROM: its size does not match")
        memory = self.pyboy.memory
        if memory[PARTY_COUNT_ADDRESS] > PARTY_LENGTH or memory[MAP_ID] >= NUM_MAPS:
            raise StateError(f"{name} does not hold a Pokemon Red game: party size or map out of range")

    # ----- Rewards and episode statistics -----
    # Each step reads a few RAM ranges as raw lists (about 13 us) and decodes one only when it
    # changed since the last step, which most steps do not.

    def _read_party(self, count):
        """Raw party bytes (species list and structs), or None while they hold garbage."""
        if count > PARTY_LENGTH:
            return None  # the intro, or a party being rewritten
        return self.pyboy.memory[PARTY_SPECIES_ADDRESS : PARTY_MONS_ADDRESS + count * PARTY_MON_SIZE], count

    @staticmethod
    def _decode_party(raw, count):
        """(species, levels, hp, max_hp) tuples, or None if a level is out of range."""
        offsets = range(PARTY_MONS_ADDRESS - PARTY_SPECIES_ADDRESS, len(raw), PARTY_MON_SIZE)
        levels = tuple(raw[i + MON_LEVEL] for i in offsets)
        if not all(1 <= level <= MAX_LEVEL for level in levels):
            return None
        hp = tuple(raw[i + MON_HP] << 8 | raw[i + MON_HP + 1] for i in offsets)
        max_hp = tuple(raw[i + MON_MAX_HP] << 8 | raw[i + MON_MAX_HP + 1] for i in offsets)
        return tuple(raw[:count]), levels, hp, max_hp

    def _read_flag_ranges(self):
        memory = self.pyboy.memory
        return (
            memory[OBTAINED_BADGES_ADDRESS],
            memory[EVENT_FLAGS_ADDRESS : EVENT_FLAGS_ADDRESS + EVENT_FLAGS_BYTES],
            memory[POKEDEX_OWNED : POKEDEX_SEEN + POKEDEX_BYTES],  # owned, then seen
        )

    def _start_episode(self):
        memory = self.pyboy.memory
        self.steps, self.episode_return = 0, 0.0
        self.reward_totals = dict.fromkeys(self.weights, 0.0)
        self.position = map_id, y, x = memory[MAP_ID], memory[Y_COORD], memory[X_COORD]
        self.visited_tiles = {map_id << 16 | y << 8 | x}
        # Flags already set in the start state earn nothing; each flag pays once per episode.
        self.badges_raw, self.events_raw, dex_raw = self._read_flag_ranges()
        self.badges = self.badges_raw
        self.start_events = self.events = _bits(self.events_raw) & PAID_EVENTS
        party_count = memory[PARTY_COUNT_ADDRESS]
        self.dex_raw = dex_raw if self._dex_counts(party_count) else [0] * 2 * POKEDEX_BYTES
        self.owned, self.seen = _bits(self.dex_raw[:POKEDEX_BYTES]), _bits(self.dex_raw[POKEDEX_BYTES:])
        self.party_raw = self._read_party(party_count)
        self.party = (self.party_raw and self._decode_party(*self.party_raw)) or ((), (), (), ())
        self.levels_gained = self.best_levels_gained = 0
        self.was_in_battle = memory[IS_IN_BATTLE] != 0
        self.party_wiped = self._is_wiped(self.party)
        self.blackouts = 0
        self.episode_furthest = max(self.swarm_furthest, self.progress())  # the swarm's wants what lies beyond

    @staticmethod
    def _is_wiped(party) -> bool:
        return len(party[0]) > 0 and sum(party[2]) == 0

    @staticmethod
    def _dex_counts(party_count) -> bool:
        """Pokedex bits count only with a party: in Oak's lab, StarterDex marks four species owned
        while a ball's Pokedex page is up and the party is still empty, then clears them (pret/pokered
        engine/events/starter_dex.asm, scripts/OaksLab.asm); AddPartyMon writes wPartyCount before
        the starter's own bits (engine/pokemon/add_mon.asm)."""
        return 0 < party_count <= PARTY_LENGTH

    def _pay(self, term, gain) -> float:
        term_reward = self.weights[term] * gain
        self.reward_totals[term] += term_reward
        return term_reward

    def _update_progress(self) -> float:
        """Read the RAM after a step, update the episode's progress, return the step's reward."""
        memory = self.pyboy.memory
        reward = 0.0

        position = (memory[MAP_ID], memory[Y_COORD], memory[X_COORD])
        if position != self.position:
            (last_map, last_y, last_x), (map_id, y, x) = self.position, position
            self.position = position
            # A warp writes the new wCurMap, fades out for 32 frames, and only then writes the new
            # wYCoord/wXCoord (pret/pokered home/overworld.asm: WarpFound2, then LoadMapData). The new
            # map at the warp's position, the last step's or one step from it (the walk onto a door
            # ends first: AdvancePlayerSprite), is no place. A map connection changes both at once,
            # to the new map's far edge.
            mid_warp = map_id != last_map and abs(y - last_y) + abs(x - last_x) <= 1
            tile = map_id << 16 | y << 8 | x
            if not mid_warp and tile not in self.visited_tiles:
                self.visited_tiles.add(tile)
                reward += self._pay("explore", 1)

        badges_raw, events_raw, dex_raw = self._read_flag_ranges()
        if badges_raw != self.badges_raw:
            reward += self._pay("badge", (badges_raw & ~self.badges).bit_count())
            self.badges |= badges_raw
            self.badges_raw = badges_raw
        if events_raw != self.events_raw:
            events = _bits(events_raw) & PAID_EVENTS
            reward += self._pay("event", (events & ~self.events).bit_count())
            self.events |= events
            self.events_raw = events_raw
        party_count = memory[PARTY_COUNT_ADDRESS]
        if dex_raw != self.dex_raw and self._dex_counts(party_count):
            owned, seen = _bits(dex_raw[:POKEDEX_BYTES]), _bits(dex_raw[POKEDEX_BYTES:])
            reward += self._pay("seen", (seen & ~self.seen).bit_count())
            reward += self._pay("owned", (owned & ~self.owned).bit_count())
            self.seen |= seen
            self.owned |= owned
            self.dex_raw = dex_raw

        in_battle = memory[IS_IN_BATTLE] != 0
        party_raw = self._read_party(party_count)
        if party_raw != self.party_raw:
            party = party_raw and self._decode_party(*party_raw)
            if party is not None:
                levels, healed = self._party_gains(self.party, party, in_battle)
                reward += self._pay("level", levels) + self._pay("heal", healed)
                wiped = self._is_wiped(party)
                # Losing the rival's first battle, in Oak's lab, is no blackout: the lab's script heals
                # the party (pret/pokered engine/battle/core.asm HandlePlayerBlackOut, scripts/OaksLab.asm).
                if wiped and not self.party_wiped and memory[MAP_ID] != OAKS_LAB:
                    self.blackouts += 1
                    reward += self._pay("blackout", 1)
                self.party, self.party_wiped = party, wiped
            self.party_raw = party_raw
        self.was_in_battle = in_battle
        return reward

    def _party_gains(self, before, after, in_battle):
        """Levels gained (beyond the episode's best so far) and the fraction of max HP healed.

        Only a party of the same species in the same slots is compared, so a Pokemon joining,
        leaving, evolving or swapping places never counts as levels or healing; both are measured on
        party totals, so two of a kind with different HP swapping places is not healing either.
        """
        species, levels, hp, max_hp = after
        if species != before[0]:
            return 0, 0.0
        self.levels_gained += sum(levels) - sum(before[1])
        new_levels = max(0, self.levels_gained - self.best_levels_gained)
        self.best_levels_gained = max(self.best_levels_gained, self.levels_gained)

        healed = 0.0
        # Outside battle only, and not the revival after a blackout (the whole party was at 0 HP).
        if not in_battle and not self.was_in_battle and not self.party_wiped:
            # A level-up raises HP and max HP together: only HP beyond the max HP gain is healing.
            restored = (sum(hp) - sum(before[2])) - max(0, sum(max_hp) - sum(before[3]))
            healed = max(0, restored) / max(1, sum(max_hp))
        return new_levels, healed

    def _episode_info(self) -> dict:
        """The finished episode's statistics: flat scalars, plus `visited_tiles` for the heatmap.

        badges, level_sum and the Pokedex counts are the game's totals at the end; event_flags
        counts the flags set during the episode; reward_<term> is each term's episode total.
        """
        visited = np.fromiter(self.visited_tiles, np.int32, len(self.visited_tiles))
        visited.sort()
        info = {
            "episode_return": self.episode_return,
            "episode_length": self.steps,
            "badges": self.badges_raw.bit_count(),
            "level_sum": sum(self.party[1]),
            "unique_tiles": len(visited),
            "maps_visited": len(np.unique(visited >> 16)),
            "event_flags": (self.events & ~self.start_events).bit_count(),
            "pokedex_seen": sum(byte.bit_count() for byte in self.dex_raw[POKEDEX_BYTES:]),
            "pokedex_owned": sum(byte.bit_count() for byte in self.dex_raw[:POKEDEX_BYTES]),
            "blackouts": self.blackouts,
            "start_state": self.start_index,  # the index into init_state's files (0 when booted; -1 the swarm's)
            "from_swarm": int(self.start_index == -1),
        }
        info.update(zip(("story_events", "towns_visited"), self.progress()[1:3]))
        info.update({f"reward_{term}": total for term, total in self.reward_totals.items()})
        info["visited_tiles"] = visited  # map_id << 16 | y << 8 | x, for the exploration heatmap
        return info


# ----- Where the agents went: per-map panels and the world map. Numbers, not art: no game graphics. -----

WORLD_MAP_FILE = Path(__file__).resolve().parent / "world_map.json"  # written by tools/derive_world_map.py
NOT_VISITED, NO_MAP, LABEL = (75, 75, 75), (20, 20, 20), (230, 230, 230)  # RGB
FONT, LEGEND_HEIGHT = cv2.FONT_HERSHEY_PLAIN, 34


@functools.cache
def _worlds() -> dict:
    return json.loads(WORLD_MAP_FILE.read_text())["worlds"]


def load_world(rom: Rom) -> dict:
    """The world of the game in this ROM (world_map.json): the stand-in cartridge's own, else Pokemon Red's.

    Returns {"name", "source", "connections", "maps": {map id: {"name", "width", "height", and "x", "y"
    for an outdoor map or "door": [outdoor map id, x, y] and "via" for an indoor one}}}.
    """
    name = "standin" if rom.title == STANDIN_TITLE else "pokemon_red"
    world = _worlds()[name]
    return {**world, "name": name, "maps": {m["id"]: m for m in world["maps"]}}


def add_visits(visit_counts: dict, visited_tiles) -> None:
    """Count one episode's visited tiles (map_id << 16 | y << 8 | x) into per-map 256x256 grids."""
    tiles = np.unique(np.asarray(visited_tiles, dtype=np.int64))
    for map_id in np.unique(tiles >> 16):
        on_map = tiles[(tiles >> 16) == map_id]
        grid = visit_counts.setdefault(int(map_id), np.zeros((256, 256), dtype=np.int32))
        grid[(on_map >> 8) & 0xFF, on_map & 0xFF] += 1


def colour_share(share):
    """Colours for shares in [0, 1]: dark purple (few episodes) to yellow (all of them)."""
    levels = (40 + 215 * np.clip(share, 0.0, 1.0)).astype(np.uint8)
    return cv2.applyColorMap(levels, cv2.COLORMAP_INFERNO)[..., ::-1].copy()  # BGR to RGB


def _map_tiles(counts, num_episodes: int, size) -> np.ndarray:
    """A map's tiles (height, width, 3): the share of episodes on each; unvisited tiles grey."""
    counts = np.zeros(size, np.int32) if counts is None else counts[: size[0], : size[1]]
    tiles = colour_share(counts / max(num_episodes, 1))
    tiles[counts == 0] = NOT_VISITED
    return tiles


def _map_size(world: dict, map_id: int, counts) -> tuple[int, int]:
    """(height, width) in steps: the world's, else up to the farthest tile visited."""
    entry = world["maps"].get(map_id)
    if entry is not None:
        return entry["height"], entry["width"]
    ys, xs = np.nonzero(counts)
    return ys.max() + 1, xs.max() + 1


def _episodes(count: int) -> str:
    return f"{count} episode{'' if count == 1 else 's'}"


def _legend(width: int, title: str) -> np.ndarray:
    """Two header lines: the title, and the colour scale with what grey and black mean."""
    header = np.full((LEGEND_HEIGHT, width, 3), NO_MAP, np.uint8)
    cv2.putText(header, title, (6, 13), FONT, 0.9, LABEL, 1, cv2.LINE_AA)
    cv2.putText(header, "episodes on a tile: 0", (6, 29), FONT, 0.8, LABEL, 1, cv2.LINE_AA)
    header[20:30, 150:230] = colour_share(np.linspace(0, 1, 80)[None].repeat(10, 0))
    cv2.putText(header, "all", (234, 29), FONT, 0.8, LABEL, 1, cv2.LINE_AA)
    header[20:30, 262:272] = NOT_VISITED
    cv2.putText(header, "not visited", (276, 29), FONT, 0.8, LABEL, 1, cv2.LINE_AA)
    return header


def render_heatmap(visit_counts: dict, num_episodes: int, world: dict, cell: int = 100, columns: int = 6):
    """An RGB image (H, W, 3) uint8: one panel per visited map, in map id order (stable across calls).

    A panel shows the whole map (grey: no episode stepped there; black: outside the map); a tile's
    colour is the share of the episodes that stepped on it.
    """
    maps = sorted(visit_counts)
    cols, rows = max(1, min(columns, len(maps))), -(-len(maps) // columns)
    label_h, pad = 14, 6
    body = np.full((rows * (label_h + cell + pad), max(pad + cols * (cell + pad), 420), 3), NO_MAP, np.uint8)
    for i, map_id in enumerate(maps):
        size = _map_size(world, map_id, visit_counts[map_id])
        panel = _map_tiles(visit_counts[map_id], num_episodes, size)
        scale = min(cell / size[0], cell / size[1])
        scale = math.floor(scale) if scale >= 1 else scale  # whole pixels per tile where they fit
        panel = cv2.resize(panel, (max(1, int(size[1] * scale)), max(1, int(size[0] * scale))),
                           interpolation=cv2.INTER_NEAREST)
        top, left = (i // cols) * (label_h + cell + pad) + label_h, pad + (i % cols) * (cell + pad)
        body[top : top + panel.shape[0], left : left + panel.shape[1]] = panel
        name = world["maps"].get(map_id, {}).get("name", f"map 0x{map_id:02x}")[: cell // 7]
        cv2.putText(body, name, (left, top - 3), FONT, 0.7, LABEL, 1, cv2.LINE_AA)
    return np.vstack([_legend(body.shape[1], f"{_episodes(num_episodes)}, one panel per map"), body])


def world_layout(visit_counts: dict, world: dict) -> dict:
    """Where render_world_map puts each map, in steps on its canvas (one step a pixel, before scaling).

    Returns {"size": (height, width), "places": {map id: (top, left, height, width)} for the outdoor
    maps and the visited indoor ones, "doors": {indoor map id: (y, x) of its door}}. Outdoor maps sit at their
    world positions inside a margin. An indoor map's inset goes as near its door as it can without
    covering a visited tile, a door or another inset (with a step between), preferring empty space
    to unvisited maps; maps the world does not place go near the bottom left.
    """
    maps = world["maps"]
    outdoor = [m for m in maps.values() if "x" in m]
    indoor_sizes = [max(m["width"], m["height"]) for m in maps.values() if "x" not in m]
    margin = min(24, max(indoor_sizes, default=0)) + 1  # room for insets around the outdoor world
    height = max(m["y"] + m["height"] for m in outdoor) + 2 * margin
    width = max(m["x"] + m["width"] for m in outdoor) + 2 * margin
    on_map = np.zeros((height, width), bool)  # any map's tile: insets would rather not cover these
    taken = np.zeros((height, width), bool)  # visited tiles, doors and insets: never covered
    places = {m["id"]: (margin + m["y"], margin + m["x"], m["height"], m["width"]) for m in outdoor}
    for map_id, (top, left, h, w) in places.items():
        on_map[top : top + h, left : left + w] = True
        if map_id in visit_counts:
            taken[top : top + h, left : left + w] |= visit_counts[map_id][:h, :w] > 0
    insets, doors = sorted(set(visit_counts) - set(places)), {}
    for map_id in insets:
        door = maps.get(map_id, {}).get("door")
        if door is not None:
            doors[map_id] = (places[door[0]][0] + door[2], places[door[0]][1] + door[1])
            taken[doors[map_id]] = True
    for map_id in insets:
        h, w = np.minimum(_map_size(world, map_id, visit_counts[map_id]), (height, width))
        top, left = _free_spot(taken, on_map, (h, w), doors.get(map_id, (height - 1, 0)))
        places[map_id] = (top, left, h, w)
        taken[max(0, top - 1) : top + h + 1, max(0, left - 1) : left + w + 1] = True
    return {"size": (height, width), "places": places, "doors": doors}


def render_world_map(visit_counts: dict, num_episodes: int, world: dict, max_size: int = 900):
    """An RGB image (H, W, 3) uint8 of the whole world: the share of episodes that stepped on each tile.

    Below a legend (LEGEND_HEIGHT pixels), the canvas of world_layout, scaled up to max_size: outdoor
    maps at their world positions (grey: a tile of the map no episode stepped on; black: no map),
    and each visited indoor map as an outlined inset, joined by a line to its door (outlined).
    """
    layout, maps = world_layout(visit_counts, world), world["maps"]
    height, width = layout["size"]
    canvas = np.full((height, width, 3), NO_MAP, np.uint8)
    for map_id, (top, left, h, w) in layout["places"].items():
        canvas[top : top + h, left : left + w] = _map_tiles(visit_counts.get(map_id), num_episodes, (h, w))

    scale = max(1, min(16, max_size // max(height, width)))
    image = cv2.resize(canvas, (width * scale, height * scale), interpolation=cv2.INTER_NEAREST)
    for map_id, (top, left, h, w) in layout["places"].items():
        if "x" in maps.get(map_id, {}):
            continue  # an outdoor map: no outline
        corner, far = (left * scale - 1, top * scale - 1), ((left + w) * scale, (top + h) * scale)
        cv2.rectangle(image, corner, far, LABEL, 1)
        if map_id in layout["doors"]:
            door_y, door_x = layout["doors"][map_id]
            door_px = (door_x * scale + scale // 2, door_y * scale + scale // 2)
            nearest = tuple(int(np.clip(p, c, f)) for p, c, f in zip(door_px, corner, far))
            cv2.line(image, door_px, nearest, LABEL, 1, cv2.LINE_AA)
            cv2.rectangle(image, (door_x * scale - 1, door_y * scale - 1),
                          ((door_x + 1) * scale, (door_y + 1) * scale), LABEL, 1)
    for map_id, (top, left, _, w) in layout["places"].items():  # names where they fit (not on Red's world)
        name = maps.get(map_id, {}).get("name", f"map 0x{map_id:02x}")
        if scale >= 8 and cv2.getTextSize(name, FONT, 0.8, 1)[0][0] <= w * scale:
            cv2.putText(image, name, (left * scale + 2, top * scale + 11), FONT, 0.8, LABEL, 1, cv2.LINE_AA)
    game = "the stand-in cartridge" if world["name"] == "standin" else "Pokemon Red"
    return np.vstack([_legend(image.shape[1], f"{_episodes(num_episodes)}, {game}"), image])


def _free_spot(taken, on_map, size, anchor) -> tuple[int, int]:
    """The top-left corner of the (height, width) rectangle nearest to `anchor` (y, x) that covers
    nothing taken, with a penalty for covering map tiles; overlapping if nothing else fits (rare)."""
    h, w = size
    limit = (taken.shape[0] - h + 1, taken.shape[1] - w + 1)
    def covered(mask):  # for every top-left corner, how many mask cells the rectangle covers
        sums = np.pad(mask.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        return sums[h:, w:] - sums[:-h, w:] - sums[h:, :-w] + sums[:-h, :-w]

    tops, lefts = np.arange(limit[0])[:, None], np.arange(limit[1])[None, :]
    dy = np.maximum(0, np.maximum(tops - anchor[0], anchor[0] - (tops + h - 1)))
    dx = np.maximum(0, np.maximum(lefts - anchor[1], anchor[1] - (lefts + w - 1)))
    cost = np.hypot(dy, dx) + (covered(on_map) > 0) * (h + w) + (covered(taken) > 0) * 1e6
    top, left = np.unravel_index(np.argmin(cost), cost.shape)
    return int(top), int(left)


# ----- The swarm: start states where the agents got furthest (after Go-Explore and pokemonred_puffer) -----


class Swarm:
    """The trainer's archive of states that reached progress keys beyond all before them (PokemonRedEnv.progress),
    the envs' start states for a share of their resets (PokemonRedEnv.set_swarm). At most `size` (about 150 KB
    each), the furthest kept, and at most `per_stage` of one stage of the story (a key but its levels): levels
    grow wherever an agent grinds, so without the cap the states after the last stage reached, levelling up,
    would push out the stepping stones before it. With a `folder`, each is also a file there, <key>.state, so that a resumed run (its
    checkpoint lists the files, `names`) and `play_pokemon.py --init-state <folder>` can start from them; the
    archive with the folder says what it drops."""

    def __init__(self, folder: str | None = None, names: list[str] | None = None, size: int = 16, per_stage: int = 4):
        self.size, self.per_stage, self.folder, self.states = size, per_stage, folder, {}  # key: state
        missing = []
        for name in (names or []) if folder else []:  # a resumed run's archive; envs check the states as they load
            try:
                key = tuple(int(part[1:]) for part in Path(name).stem.split("_"))
                self.states[key] = Path(folder, name).read_bytes()
            except (OSError, ValueError):
                missing.append(name)
        if missing:  # an older checkpoint's (the archive has moved on), or a checkpoint moved without its folder
            warnings.warn(f"{len(missing)} of the swarm's {len(names)} states are not in {folder}/ "
                          f"({missing[0]}, ...): the swarm goes on without them")

    @property
    def furthest(self) -> tuple:
        return max(self.states, default=())

    def stats(self) -> dict:
        """For TensorBoard: the archive's size and its furthest key, part by part."""
        furthest = self.furthest or (0,) * len(PROGRESS)  # none yet
        return {"swarm/size": len(self.states),
                **{f"swarm/furthest_{part}": value for part, value in zip(PROGRESS, furthest)}}

    def entries(self) -> list:
        """(key, state) pairs, furthest last: what PokemonRedEnv.set_swarm takes."""
        return sorted(self.states.items())

    def names(self) -> list[str]:
        return [self.name(key) for key in sorted(self.states)]

    @staticmethod
    def name(key: tuple) -> str:
        """The file name of a key's state: its parts' initials and values, so that names sort as keys do."""
        return "_".join(f"{part[0]}{value:03d}" for part, value in zip(PROGRESS, key)) + ".state"

    def add(self, discoveries: list, dropped: list = ()) -> bool:
        """Take each (key, state) discovery whose key is beyond the archive's furthest, evict beyond `size`, and drop
        the keys of states that did not load ((key, why) pairs, one warning each). Whether the archive changed."""
        before = set(self.states)
        for key, why in dropped:
            if self.states.pop(key, None) is not None and self.folder:
                warnings.warn(f"{why}: dropped from the swarm")
        for key, state in sorted(discoveries):
            if key > self.furthest:
                self.states[key] = state
        stages = {}  # each stage's keys, lowest levels first
        for key in sorted(self.states):
            stages.setdefault(key[:-1], []).append(key)
        for key in [key for keys in stages.values() for key in keys[: -self.per_stage]]:
            del self.states[key]
        for key in sorted(self.states)[: max(0, len(self.states) - self.size)]:
            del self.states[key]
        for key in set(self.states) - before if self.folder else ():
            path = Path(self.folder, self.name(key))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".tmp").write_bytes(self.states[key])
            os.replace(path.with_suffix(".tmp"), path)  # whole or not there
        for key in before - set(self.states) if self.folder else ():
            Path(self.folder, self.name(key)).unlink(missing_ok=True)
        return set(self.states) != before


# ----- Envs stepped together: PufferLib's vector API on our backends or PufferLib's, and groups of them -----


def make_env(**env_kwargs):
    """PufferLib creator: `pufferlib.vector.make(make_env, env_kwargs=..., backend=...)`; without
    PufferLib, the env itself."""
    env = PokemonRedEnv(**env_kwargs)
    return pufferlib.emulation.GymnasiumPufferEnv(env=env) if pufferlib is not None else env


def make_vector_env(env_kwargs: dict, num_envs: int, backend: str, num_workers: int | None = None,
                    first_env: int = 0):
    """`num_envs` envs stepped together, with PufferLib's vector API (reset, send, recv, step, close).

    backend "serial" steps them in this process: PufferLib's Serial, or our `Serial` where PufferLib is
    not installed; "multiprocessing" is our `Multiprocessing` (its workers sleep while they wait).
    Both go through `pufferlib.vector.make` where PufferLib is installed. `first_env`: the index of the
    first env among the caller's, for error messages.
    """
    vector_backend = Serial
    if backend == "multiprocessing":
        vector_backend = functools.partial(Multiprocessing, first_env=first_env)
    worker_kwargs = {"num_workers": num_workers} if backend == "multiprocessing" else {}
    if pufferlib is not None:
        if backend == "serial":
            vector_backend = pufferlib.vector.Serial
        return pufferlib.vector.make(make_env, env_kwargs=env_kwargs, backend=vector_backend,
                                     num_envs=num_envs, **worker_kwargs)
    return vector_backend([make_env] * num_envs, [[]] * num_envs, [env_kwargs] * num_envs, num_envs,
                          **worker_kwargs)


class EnvGroups:
    """Envs in groups (of workers) that take turns with the policy: while it chooses one group's actions, the
    other group's emulators run. `groups` lists each group's rows among the envs.

    send(actions, rows, results) steps the group of those rows; recv(rows) waits for that group's step if
    one is on its way and writes what it returned where its send said: results are (observations, dones,
    rewards, terminations, truncations, episode infos), arrays over all envs of which the group's rows are
    filled, and a list that the finished episodes' infos are added to. recv() waits for every group. The
    swarm's discoveries and dropped states collect in `discoveries` and `dropped` (see Swarm.add).
    """

    def __init__(self, env_kwargs: dict, num_envs: int, backend: str, num_workers: int | None = None,
                 groups: int = 1):
        self.rom = load_rom(env_kwargs["rom_path"])  # the ROM they play; an unknown one is warned of here, once
        workers = [num_workers // groups + (g < num_workers % groups) for g in range(groups)] if num_workers else [None]
        self.vector_envs, self.groups, self.on_the_way, self.wait_seconds = [], [], [], 0.0
        self.discoveries, self.dropped, self.swarm = [], [], None
        try:
            for group_workers in workers:
                first = self.groups[-1].stop if self.groups else 0
                size = num_envs * (group_workers or 1) // (num_workers or 1)
                self.vector_envs.append(make_vector_env(env_kwargs, size, backend, group_workers, first))
                self.groups.append(slice(first, first + size))
                self.on_the_way.append(None)
        except BaseException:
            self.close()
            raise
        self.num_envs = num_envs
        self.single_observation_space = self.vector_envs[0].single_observation_space
        self.single_action_space = self.vector_envs[0].single_action_space

    def reset(self, seed: int) -> np.ndarray:
        """Every env's first observation; env i is reset with seed + i."""
        observations = []
        for envs, rows in zip(self.vector_envs, self.groups):
            group_observations, infos = envs.reset(seed=seed + rows.start)
            observations.append(group_observations)
            self._collect(infos)
        return np.concatenate(observations)

    def start_swarm(self, share: float, folder: str | None = None, names: list[str] | None = None,
                    gather=lambda value: [value]):
        """Start a `share` of the resets from a Swarm's states (Swarm(folder, names)), and collect the envs' discoveries
        for it. Several processes (torchrun's ranks): `gather` returns a value from each, [0] the one with the folder."""
        self.swarm, self.swarm_share = Swarm(folder, names), share
        self.swarm.add(gather(self.swarm.entries())[0])
        self.set_swarm(self.swarm.entries(), share)

    def update_swarm(self, gather=lambda value: [value]) -> dict:
        """Every process's discoveries and dropped states (see start_swarm) into the swarm, to the envs if it changed;
        the swarm's stats."""
        found = gather((self.discoveries, self.dropped))
        self.discoveries, self.dropped = [], []
        discoveries, dropped = ([item for process in found for item in process[part]] for part in (0, 1))
        if self.swarm.add(discoveries, dropped):
            self.set_swarm(self.swarm.entries(), self.swarm_share)
        return self.swarm.stats()

    def set_swarm(self, archive: list, share: float):
        """PokemonRedEnv.set_swarm for every env, between steps."""
        for envs in self.vector_envs:
            if isinstance(envs, VectorEnv):  # ours
                envs.set_swarm(archive, share)
            else:  # PufferLib's Serial, whose envs wrap ours
                for env in envs.envs:
                    env.env.set_swarm(archive, share)

    def _collect(self, infos: list) -> list:
        """The swarm's part of the infos taken out into discoveries and dropped; the infos left that are not empty."""
        self.discoveries += [(info.pop("swarm_key"), info.pop("swarm_state")) for info in infos if "swarm_key" in info]
        self.dropped += [info.pop("swarm_dropped") for info in infos if "swarm_dropped" in info]
        return infos

    def send(self, actions, rows: slice, results: tuple):
        group = self.groups.index(rows)
        self.vector_envs[group].send(actions)
        self.on_the_way[group] = results

    def recv(self, rows: slice | None = None):
        for group, (envs, group_rows) in enumerate(zip(self.vector_envs, self.groups)):
            results = self.on_the_way[group]
            if results is None or rows not in (None, group_rows):
                continue
            start = time.perf_counter()
            step_results = envs.recv()
            self.wait_seconds += time.perf_counter() - start
            observations, dones, rewards, terminations, truncations, infos = results
            observations[group_rows] = step_results[0]
            dones[group_rows] = step_results[2] | step_results[3]
            for array, step_result in zip((rewards, terminations, truncations), step_results[1:4]):
                array[group_rows] = step_result
            infos += [info for info in self._collect(step_results[4]) if "episode_return" in info]  # finished episodes
            self.on_the_way[group] = None

    def close(self):
        for envs in self.vector_envs:
            envs.close()


class WorkerError(RuntimeError):
    """A worker process died, or an env raised inside it; the message is one line."""


class VectorEnv:
    """What our backends share with PufferLib's: step(), and the seven things recv() returns."""

    def recv(self):
        """observations, rewards, terminals, truncations, infos, env ids, masks (PufferLib's seven)."""
        b = self.buffers
        return b.observations, b.rewards, b.terminals, b.truncations, self.infos, range(self.num_envs), None

    def step(self, actions):
        self.send(actions)
        return self.recv()[:5]


class Serial(VectorEnv):
    """PufferLib's Serial backend, ours, for platforms without PufferLib; our workers use it too.

    The same semantics: reset(seed) seeds env i with seed + i; once an episode ends, the next step
    resets that env instead, ignores its action and returns the first observation with reward 0; the
    arrays returned are buffers that the next step overwrites; infos lists the non-empty infos.
    """

    def __init__(self, env_creators, env_args, env_kwargs, num_envs, buffers=None, **unused):
        self.envs = [make(*args, **kwargs) for make, args, kwargs in zip(env_creators, env_args, env_kwargs)]
        self.num_envs = num_envs
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.buffers = buffers or VectorBuffers.allocate(num_envs, self.single_observation_space)
        self.done = [False] * num_envs
        self.infos = []

    def reset(self, seed=0):
        self.infos = []
        for i, env in enumerate(self.envs):
            observation, info = env.reset(seed=seed + i)
            self._store(i, observation, 0.0, False, False, info)
        return self.buffers.observations, self.infos

    def send(self, actions):
        self.infos = []
        for i, env in enumerate(self.envs):
            if self.done[i]:  # the episode ended last step: this step starts the next one
                observation, info = env.reset()
                self._store(i, observation, 0.0, False, False, info)
            else:
                self._store(i, *env.step(int(actions[i])))

    def _store(self, i, observation, reward, terminated, truncated, info):
        buffers = self.buffers
        buffers.observations[i] = observation
        buffers.rewards[i], buffers.terminals[i], buffers.truncations[i] = reward, terminated, truncated
        self.done[i] = terminated or truncated
        if info:
            self.infos.append(info)

    def set_swarm(self, archive: list, share: float):
        for env in self.envs:
            getattr(env, "env", env).set_swarm(archive, share)  # PufferLib's wrapper holds ours as .env

    def close(self):
        for env in self.envs:
            env.close()


@dataclass
class VectorBuffers:
    """What a step returns for each env, as numpy arrays over one block of (optionally shared) memory."""

    observations: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    truncations: np.ndarray
    actions: np.ndarray

    @staticmethod
    def layout(num_envs: int, observation_space):
        """(field, shape, dtype, byte offset) for each array, and the bytes they take together."""
        fields = [("observations", (num_envs, *observation_space.shape), observation_space.dtype),
                  ("rewards", (num_envs,), np.float32), ("terminals", (num_envs,), np.bool_),
                  ("truncations", (num_envs,), np.bool_), ("actions", (num_envs,), np.int64)]
        offset, layout = 0, []
        for name, shape, dtype in fields:
            layout.append((name, shape, dtype, offset))
            offset += -(-int(np.prod(shape)) * np.dtype(dtype).itemsize // 8) * 8  # 8-byte aligned
        return layout, offset

    @classmethod
    def over(cls, memory, num_envs: int, observation_space) -> "VectorBuffers":
        """The arrays over `memory` (a bytearray, or a shared RawArray of layout()'s size)."""
        layout, _ = cls.layout(num_envs, observation_space)
        return cls(**{name: np.frombuffer(memory, dtype, int(np.prod(shape)), offset).reshape(shape)
                      for name, shape, dtype, offset in layout})

    @classmethod
    def allocate(cls, num_envs: int, observation_space) -> "VectorBuffers":
        return cls.over(bytearray(cls.layout(num_envs, observation_space)[1]), num_envs, observation_space)

    def rows(self, rows: slice) -> "VectorBuffers":
        return VectorBuffers(*(getattr(self, field.name)[rows] for field in dataclasses.fields(self)))


# A worker's command byte, set by the main process before it wakes the worker...
STEP, RESET, CLOSE, SWARM = 0, 1, 2, 3
# ...and its status byte, set by the worker before it signals `finished`.
STEPPED, STEPPED_WITH_INFOS, FAILED = 0, 1, 2


class Multiprocessing(VectorEnv):
    """Our multiprocessing backend: worker processes step their share of the envs with `Serial`.

    Observations, rewards and actions live in shared memory; episode infos and errors come through a
    pipe per worker. A waiting process sleeps: the main process wakes each worker through a semaphore
    once the actions are in place, and the workers signal one shared semaphore when they have stepped
    (PufferLib 2.0.2's processes spin while they wait, which takes the cores the emulators need).
    Synchronous: recv() waits for every worker. A worker that dies or raises is noticed within about
    a second and raises WorkerError in the main process. Works with the spawn start method (macOS,
    Windows): the start state the intro driver reached here is handed to the workers.
    """

    def __init__(self, env_creators, env_args, env_kwargs, num_envs, num_workers=None, batch_size=None,
                 start_method=None, first_env=0, **unused):
        num_workers = num_workers or num_envs
        if num_envs % num_workers or batch_size not in (None, num_envs):
            raise ValueError("pokemon_env.Multiprocessing steps all envs together: num_envs must be a "
                             "multiple of num_workers, and batch_size num_envs")
        # One env here first: the spaces, and a start state that the workers then need not boot.
        driver_env = env_creators[0](*env_args[0], **env_kwargs[0])
        self.single_observation_space = driver_env.observation_space
        self.single_action_space = driver_env.action_space
        driver_env.close()
        self.num_envs, self.envs_per_worker, self.first_env = num_envs, num_envs // num_workers, first_env
        context = multiprocessing.get_context(start_method)
        # Shared memory goes to the workers as RawArrays: a spawned worker would get numpy arrays as copies.
        memory = context.RawArray("b", VectorBuffers.layout(num_envs, self.single_observation_space)[1])
        self.buffers = VectorBuffers.over(memory, num_envs, self.single_observation_space)
        shared_control, shared_seeds = context.RawArray("B", 2 * num_workers), context.RawArray("q", num_workers)
        self.commands, self.statuses = np.frombuffer(shared_control, np.uint8).reshape(2, num_workers)
        self.seeds = np.frombuffer(shared_seeds, np.int64)
        self.wake = [context.Semaphore(0) for _ in range(num_workers)]
        self.finished = context.Semaphore(0)
        self.pipes, self.processes, self.infos = [], [], []
        for worker in range(num_workers):
            rows = slice(worker * self.envs_per_worker, (worker + 1) * self.envs_per_worker)
            here, there = context.Pipe()  # infos and errors come, the swarm's states go
            process = context.Process(
                target=_worker, daemon=True, name=f"pokemon_env worker {worker}",
                args=(worker, env_creators[rows], env_args[rows], env_kwargs[rows], booted_start_states(),
                      memory, num_envs, self.single_observation_space, rows, shared_control, shared_seeds,
                      self.wake[worker], self.finished, there),
            )  # fmt: skip
            process.start()
            self.pipes.append(here)
            self.processes.append(process)
        try:
            self._wait()  # every worker has made its envs
        except WorkerError:
            self.close()
            raise

    def reset(self, seed=0):
        self.seeds[:] = seed + np.arange(len(self.processes)) * self.envs_per_worker
        self._wake(RESET)
        self.infos = self._wait()
        return self.buffers.observations, self.infos

    def send(self, actions):
        self.buffers.actions[:] = actions
        self._wake(STEP)

    def set_swarm(self, archive: list, share: float):
        """PokemonRedEnv.set_swarm in every worker: woken first, each reads the archive from its pipe."""
        self._wake(SWARM)
        for pipe in self.pipes:
            pipe.send((archive, share))
        self._wait()

    def recv(self):
        self.infos = self._wait()
        return super().recv()

    def close(self):
        """Stop the workers: asked first, terminated if they have not exited within a second."""
        if self.processes:
            self._wake(CLOSE)
        for process in self.processes:
            process.join(timeout=1.0)
            if process.exitcode is None:
                process.terminate()
                process.join()
        self.processes = []

    def _wake(self, command: int):
        self.commands[:] = command
        for wake in self.wake:
            wake.release()

    def _wait(self) -> list:
        """Sleep until every worker has signalled; return the infos they sent. Raises WorkerError."""
        for _ in self.processes:
            while not self.finished.acquire(timeout=1.0):  # wakes now and then to check on the workers
                for worker, process in enumerate(self.processes):
                    if process.exitcode is not None:
                        raise WorkerError(f"{self._name(worker)} died (exit code {process.exitcode})")
        infos = []
        for worker, status in enumerate(self.statuses):
            if status == STEPPED_WITH_INFOS:
                try:  # sent once the worker has signalled (see _worker)
                    infos.extend(self.pipes[worker].recv())
                except EOFError:
                    raise WorkerError(f"{self._name(worker)} died while sending its infos") from None
            elif status == FAILED:
                raise WorkerError(f"{self._name(worker)} failed: {self.pipes[worker].recv()}")
        return infos

    def _name(self, worker: int) -> str:
        first = self.first_env + worker * self.envs_per_worker
        number, last = first // self.envs_per_worker, first + self.envs_per_worker - 1
        return f"env worker {number} (pid {self.processes[worker].pid}, envs {first}-{last})"


def _worker(worker, env_creators, env_args, env_kwargs, start_states, memory, num_envs, observation_space,
            rows, shared_control, shared_seeds, wake, finished, pipe):
    """One worker process: make its envs, then sleep until woken, step or reset them, signal `finished`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's: it stops the workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not a forked copy of the trainer's handler: SIGTERM ends a worker
    add_booted_start_states(start_states)  # a spawned worker does not replay the intro
    warnings.simplefilter("ignore", UnknownRomWarning)  # the main process has said it once
    commands, statuses = np.frombuffer(shared_control, np.uint8).reshape(2, -1)
    seed = np.frombuffer(shared_seeds, np.int64)[worker : worker + 1]
    buffers = VectorBuffers.over(memory, num_envs, observation_space).rows(rows)
    parent = os.getppid()
    try:
        envs = Serial(env_creators, env_args, env_kwargs, len(env_creators), buffers)
        statuses[worker] = STEPPED
        finished.release()
        while True:
            if not wake.acquire(timeout=1.0):
                if os.getppid() != parent:  # the main process has gone without closing us
                    break
                continue
            if commands[worker] == CLOSE:
                break
            if commands[worker] == RESET:
                envs.reset(seed=int(seed[0]))
            elif commands[worker] == SWARM:
                envs.set_swarm(*pipe.recv())
                envs.infos = []
            else:
                envs.send(envs.buffers.actions)
            statuses[worker] = STEPPED_WITH_INFOS if envs.infos else STEPPED
            finished.release()
            if envs.infos:  # after the signal: the main process reads them once every worker has signalled, and a
                pipe.send(envs.infos)  # pipe holds less than one swarm state (150 KB), which would block us till then
        envs.close()
    except Exception as error:  # the env's own, for the main process to report in one line
        pipe.send(f"{type(error).__name__}: {first_line(error)}" if str(error).strip() else type(error).__name__)
        statuses[worker] = FAILED
        finished.release()
        sys.exit(1)
