"""The environment on the stand-in cartridge: observations, actions, episodes, resets, start states."""
import hashlib
import io
import os
from pathlib import Path

import cv2
import gymnasium
import numpy as np
import pytest
from pyboy import PyBoy

import pokemon_env
from pokemon_env import (
    ACTIONS, MAP_ID, X_COORD, Y_COORD, IntroError, PokemonRedEnv, drive_intro, player_in_control,
)

START = (0x26, 3, 6)  # Red's room, x 3, y 6
EPISODE_KEYS = {
    "episode_return", "episode_length", "badges", "level_sum", "unique_tiles", "maps_visited",
    "event_flags", "pokedex_seen", "pokedex_owned", "blackouts", "visited_tiles",
    "reward_badge", "reward_explore", "reward_level", "reward_event", "reward_seen",
    "reward_owned", "reward_heal", "reward_blackout", "start_state", "from_swarm", "story_events", "towns_visited",
}  # fmt: skip


def position(env):
    memory = env.pyboy.memory
    return memory[MAP_ID], memory[X_COORD], memory[Y_COORD]


def act(env, *buttons):
    return [env.step(ACTIONS.index(button)) for button in buttons]


def test_observation_space_and_first_observation(standin_env):
    env = standin_env()
    obs, info = env.reset(seed=0)
    assert env.observation_space == gymnasium.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    assert env.action_space == gymnasium.spaces.Discrete(8)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8 and obs in env.observation_space
    assert info == {}
    assert position(env) == START
    assert all(np.array_equal(frame, obs[-1]) for frame in obs)  # the stack starts as copies
    assert obs.std() > 0  # a picture, not a blank screen


def test_newest_frame_is_last_and_older_frames_shift(standin_env):
    env = standin_env()
    previous, _ = env.reset(seed=0)
    for button in ["start", "down", "b", "up"]:
        obs, *_ = act(env, button)[0]
        assert np.array_equal(obs[:-1], previous[1:])
        gray = np.ascontiguousarray(env.pyboy.screen.ndarray[:, :, 0])  # the DMG palette is gray
        expected = cv2.resize(gray, (84, 84), interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(obs[-1], expected)
        previous = obs
    assert not np.array_equal(obs[0], obs[-1])  # the menu opened and closed: frames differ


@pytest.mark.parametrize("grayscale", [True, False])
def test_observation_size_stack_and_color_options(standin_env, grayscale):
    env = standin_env(
        obs_height=72, obs_width=80, frame_stack=3, grayscale=grayscale, render_mode="rgb_array"
    )
    obs, _ = env.reset(seed=0)
    channels = 1 if grayscale else 3
    assert obs.shape == (3 * channels, 72, 80) and obs in env.observation_space
    obs, *_ = act(env, "start")[0]
    rgb = cv2.resize(env.render(), (80, 72), interpolation=cv2.INTER_LINEAR)
    expected = rgb[None, :, :, 0] if grayscale else rgb.transpose(2, 0, 1)  # R, G, B planes
    assert np.array_equal(obs[-channels:], expected)  # the newest frame last


def test_render_rgb_array_is_the_full_screen(standin_env):
    env = standin_env(render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (144, 160, 3) and frame.dtype == np.uint8
    assert np.array_equal(frame, env.pyboy.screen.ndarray[:, :, :3])


def sdl_window_titles() -> list:
    """The titles of the SDL windows open in this process, asked of SDL (which PyBoy's window uses)."""
    import sdl2

    windows = (sdl2.SDL_GetWindowFromID(window_id) for window_id in range(1, 64))
    return [sdl2.SDL_GetWindowTitle(window).decode() for window in windows if window]


def test_human_render_mode_opens_a_window(standin_env, monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # a real SDL window, on no screen
    assert "PyBoy" not in sdl_window_titles()
    env = standin_env(render_mode="human", frame_skip=4)
    assert sdl_window_titles() == ["PyBoy"]
    env.pyboy.set_emulation_speed(0)  # no need to watch it in real time here
    env.reset(seed=0)
    obs, *_ = act(env, "b")[0]
    assert obs.shape == (4, 84, 84) and env.render() is None
    env.close()
    assert sdl_window_titles() == []


def test_directions_move_walls_block_and_buttons_are_released(standin_env):
    env = standin_env()
    env.reset(seed=0)
    expected = [  # button, (map, x, y) after it, reward: new tiles only
        ("up", (0x26, 3, 5), 0.01),
        ("down", (0x26, 3, 6), 0.0),  # back on a visited tile
        ("down", (0x26, 3, 6), 0.0),  # the wall below the start
        ("left", (0x26, 2, 6), 0.01),
        ("right", (0x26, 3, 6), 0.0),
        ("right", (0x26, 4, 6), 0.01),
    ]
    for button, place, reward in expected:
        (_, got_reward, *_), = act(env, button)
        assert (button, position(env), got_reward) == (button, place, pytest.approx(reward))
        assert env.pyboy.memory[0xFFB4] == 0  # hJoyHeld: released before the step ends


def test_turning_to_face_a_wall_earns_nothing(standin_env):
    env = standin_env()
    env.reset(seed=0)
    act(env, "right", "right", "right")  # (6, 6): walls to the right and below
    for button, facing in [("down", 0x00), ("right", 0x0C), ("down", 0x00), ("right", 0x0C)]:
        (_, reward, *_), = act(env, button)
        assert env.pyboy.memory[0xC109] == facing  # turned...
        assert position(env) == (0x26, 6, 6) and reward == 0  # ...but did not move


def test_start_opens_the_menu_and_b_closes_it(standin_env):
    env = standin_env()
    env.reset(seed=0)
    assert player_in_control(env.pyboy.memory)
    (obs_menu, reward, *_), = act(env, "start")
    assert not player_in_control(env.pyboy.memory) and reward == 0
    (obs_closed, reward, *_), = act(env, "b")
    assert player_in_control(env.pyboy.memory) and reward == 0
    assert not np.array_equal(obs_menu[-1], obs_closed[-1])
    assert position(env) == START


def test_info_is_empty_until_the_episode_ends_then_holds_its_statistics(standin_env):
    env = standin_env(max_steps=6)
    env.reset(seed=0)
    results = act(env, "up", "up", "left", "down", "start", "b")
    rewards = [r for _, r, _, _, _ in results]
    assert [info for *_, info in results[:-1]] == [{}] * 5
    info = results[-1][4]
    assert set(info) == EPISODE_KEYS
    for key, value in info.items():
        if key != "visited_tiles":
            assert np.isscalar(value) and not isinstance(value, str), key
    assert info["episode_length"] == 6
    assert info["episode_return"] == pytest.approx(sum(rewards))
    assert sum(v for k, v in info.items() if k.startswith("reward_")) == pytest.approx(sum(rewards))
    tiles = info["visited_tiles"]
    assert tiles.dtype == np.int32 and tiles.ndim == 1 and len(tiles) == info["unique_tiles"]
    assert START[0] << 16 | START[2] << 8 | START[1] in tiles
    assert info["reward_explore"] == pytest.approx(0.01 * (len(tiles) - 1))  # the start tile is free
    assert info["maps_visited"] == len(np.unique(tiles >> 16))


def test_truncation_at_max_steps_and_never_termination(standin_env):
    env = standin_env(max_steps=3)
    env.reset(seed=0)
    flags = [(terminated, truncated) for _, _, terminated, truncated, _ in act(env, "b", "b", "b")]
    assert flags == [(False, False), (False, False), (False, True)]
    env.reset(seed=1)
    assert [r[3] for r in act(env, "b", "b", "b")] == [False, False, True]


def test_reset_restores_the_start_state(standin_env):
    env = standin_env()
    first_obs, _ = env.reset(seed=3)
    first_ram = env.pyboy.memory[0xC000:0xE000]
    act(env, "up", "up", "left", "start")
    obs, _ = env.reset(seed=3)
    assert position(env) == START
    assert np.array_equal(obs, first_obs)
    assert env.pyboy.memory[0xC000:0xE000] == first_ram
    assert env.steps == 0 and env.episode_return == 0 and len(env.visited_tiles) == 1


def test_same_seed_same_episode(standin_env):
    actions = np.random.default_rng(0).integers(0, 8, 40)
    runs = []
    for _ in range(2):
        env = standin_env()
        obs, _ = env.reset(seed=7)
        trace = [obs]
        for action in actions:
            obs, reward, *_ = env.step(action)
            trace += [obs, reward]
        runs.append(trace)
    assert all(np.array_equal(a, b) for a, b in zip(*runs))


def test_seed_chooses_a_few_idle_frames(standin_env):
    env = standin_env()
    idle = {}
    for seed in list(range(12)) + [0, 5]:
        before = env.pyboy.frame_count
        env.reset(seed=seed)
        frames = env.pyboy.frame_count - before
        assert idle.setdefault(seed, frames) == frames  # same seed, same wait
        assert 1 <= frames <= pokemon_env.MAX_IDLE_FRAMES
    assert len(set(idle.values())) > 1


def test_intro_driver_reaches_control_from_power_on(standin_rom):
    pyboy = PyBoy(io.BytesIO(standin_rom.read_bytes()), window="null", sound_emulated=False, cgb=False)
    pyboy.set_emulation_speed(0)
    try:
        frames = drive_intro(pyboy)
        memory = pyboy.memory
        assert 0 < frames < pokemon_env.INTRO_FRAME_BUDGET
        assert player_in_control(memory)
        assert (memory[MAP_ID], memory[X_COORD], memory[Y_COORD]) == START
        assert memory[0xD158:0xD15C] == [0x91, 0x84, 0x83, 0x50]  # the default names: RED...
        assert memory[0xD34A:0xD34F] == [0x81, 0x8B, 0x94, 0x84, 0x50]  # ...and BLUE
    finally:
        pyboy.stop(save=False)


def test_intro_driver_does_not_stop_on_the_title_where_the_control_predicate_holds(standin_rom):
    pyboy = PyBoy(io.BytesIO(standin_rom.read_bytes()), window="null", sound_emulated=False, cgb=False)
    pyboy.set_emulation_speed(0)
    try:
        pyboy.tick(240, False)  # the boot logo, then the title, which waits for Start
        memory = pyboy.memory
        assert player_in_control(memory) and memory[MAP_ID] == 0  # as on the real game's title screen
        drive_intro(pyboy)
        assert (memory[MAP_ID], memory[X_COORD], memory[Y_COORD]) == START and player_in_control(memory)
    finally:
        pyboy.stop(save=False)


class NameListsWatchingTheMainMenusKeys:
    """The emulator, with every name list made to watch the main menu's keys (A, B, Start), as if
    it were the main menu: only tile (2, 4), "R" of RED and not "O" of OPTION, tells them apart."""

    def __init__(self, pyboy):
        self.pyboy, self.memory = pyboy, pyboy.memory

    def button(self, *args):
        self.pyboy.button(*args)

    def tick(self, *args):
        self.pyboy.tick(*args)
        if self.memory[0xC3A3:0xC3A7] == [0x8D, 0x80, 0x8C, 0x84]:  # "NAME"
            self.memory[0xCC29] = 0x0B


def test_intro_driver_presses_a_on_the_main_menu_only_with_option_below_new_game(standin_rom):
    pyboy = PyBoy(io.BytesIO(standin_rom.read_bytes()), window="null", sound_emulated=False, cgb=False)
    pyboy.set_emulation_speed(0)
    try:
        with pytest.raises(IntroError, match="main menu seen: True"):
            drive_intro(NameListsWatchingTheMainMenusKeys(pyboy), frame_budget=3000)
        assert pyboy.memory[0xC3F2] == 0x91 and pyboy.memory[0xD158] == 0  # RED's list up, no name picked
    finally:
        pyboy.stop(save=False)


def test_intro_driver_gives_a_clear_error_when_out_of_frames(standin_rom):
    pyboy = PyBoy(io.BytesIO(standin_rom.read_bytes()), window="null", sound_emulated=False, cgb=False)
    try:
        with pytest.raises(IntroError, match="within 300 frames") as error:
            drive_intro(pyboy, frame_budget=300)
        assert "\n" not in str(error.value)
    finally:
        pyboy.stop(save=False)


def test_init_state_round_trip(standin_env, tmp_path):
    env = standin_env()
    env.reset(seed=0)
    act(env, "up", "up")
    moved_to = position(env)
    path = tmp_path / "moved.state"
    env.save_state(path)

    loaded = standin_env(init_state=path)
    loaded.reset(seed=0)
    assert position(loaded) == moved_to != START
    assert loaded.start_state == path.read_bytes()


def test_gymnasium_check_env_passes(standin_env):
    from gymnasium.utils.env_checker import check_env

    check_env(standin_env(render_mode="rgb_array"), skip_render_check=False)


@pytest.mark.real_rom
def test_real_rom_intro_reaches_reds_room():
    rom = Path(os.environ["POKEMON_RED_ROM"])
    version = pokemon_env.KNOWN_ROMS.get(hashlib.sha1(rom.read_bytes()).hexdigest())
    assert version, f"{rom} is not Pokemon Red or Blue (SHA-1 differs)"
    default_name = {"Pokemon Red": "RED", "Pokemon Blue": "BLUE"}[version]  # the lists are swapped
    env = PokemonRedEnv(rom_path=rom, max_steps=8)
    try:
        env.reset(seed=0)
        assert position(env) == START and player_in_control(env.pyboy.memory)
        assert env.pyboy.memory[0xD163] == 0  # no Pokemon yet
        name = env.pyboy.memory[0xD158 : 0xD158 + len(default_name) + 1]
        assert name == [0x80 + ord(letter) - ord("A") for letter in default_name] + [0x50]
    finally:
        env.close()
