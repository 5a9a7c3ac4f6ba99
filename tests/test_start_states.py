"""Many start states: several files or a folder as init_state, one drawn by the env's RNG at each reset."""
from pathlib import Path

import pytest

from pokemon_env import ACTIONS, MAP_ID, X_COORD, Y_COORD, EnvSettings, PokemonRedEnv, StateError

STANDIN_ROM = Path(__file__).resolve().parent.parent / "roms" / "standin.gb"


def position(env):
    memory = env.pyboy.memory
    return memory[MAP_ID], memory[X_COORD], memory[Y_COORD]


@pytest.fixture(scope="module")
def states(tmp_path_factory, start_state_file):
    """A folder of three states, each at another place in the bedroom, and {file: (map, x, y)}."""
    folder = tmp_path_factory.mktemp("start_states")
    env = PokemonRedEnv(rom_path=STANDIN_ROM, init_state=start_state_file)
    env.reset(seed=0)
    places = {}
    for name, buttons in [("a.state", []), ("b.state", ["right"] * 2), ("c.state", ["up"] * 2)]:
        for button in buttons:
            env.step(ACTIONS.index(button))
        env.save_state(folder / name)
        places[str(folder / name)] = position(env)
    env.close()
    (folder / "notes.txt").write_text("not a state: a folder gives its *.state files only\n")
    assert len(set(places.values())) == 3
    return folder, places


def test_several_files_or_a_folder(standin_env, states):
    folder, places = states
    files = sorted(places)
    assert EnvSettings(init_state=[folder]).start_state_files() == files  # in name order, notes.txt left out
    for init_state in ([files[2], files[0]], folder, [files[0], folder]):
        env = standin_env(init_state=init_state)
        expected = EnvSettings(init_state=init_state).start_state_files()
        assert len(env.start_states) == len(expected)
        seen = set()
        for seed in range(12):
            env.reset(seed=seed)
            assert position(env) == places[expected[env.start_index]]  # that state, and no other, restored
            seen.add(expected[env.start_index])
        assert len(seen) > 1, "twelve seeds drew one start state only"


def test_reset_seed_draws_the_same_start_state(standin_env, states):
    folder, _ = states
    first, second = standin_env(init_state=folder), standin_env(init_state=folder)
    for seed in reversed(range(16)):
        second.reset(seed=seed)  # another history: nothing carries over into a seeded reset
    drawn = []
    for seed in range(16):
        obs_first, _ = first.reset(seed=seed)
        obs_second, _ = second.reset(seed=seed)
        assert first.start_index == second.start_index and (obs_first == obs_second).all()
        drawn.append(first.start_index)
    assert set(drawn) == {0, 1, 2}


def test_episode_info_says_which_start_state(standin_env, states):
    folder, places = states
    env = standin_env(init_state=folder, max_steps=1)
    infos = []
    for seed in range(6):
        env.reset(seed=seed)
        infos.append((env.start_index, env.step(ACTIONS.index("b"))[4]["start_state"]))
    assert all(drawn == reported for drawn, reported in infos) and len(set(infos)) > 1
    booted = standin_env(max_steps=1)
    booted.reset(seed=0)
    assert booted.step(0)[4]["start_state"] == 0


def test_a_bad_file_is_refused_naming_it(standin_env, states, tmp_path):
    folder, places = states
    junk = tmp_path / "broken.state"
    junk.write_bytes(b"not a state")
    with pytest.raises(StateError, match="broken.state is not a PyBoy save state") as error:
        standin_env(init_state=[*places, junk])
    assert "\n" not in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StateError, match=f"init_state folder {tmp_path / 'empty'} holds no"):
        standin_env(init_state=[folder, tmp_path / "empty"])
    with pytest.raises(StateError, match="init_state nowhere.state does not exist"):
        standin_env(init_state=[folder, "nowhere.state"])
    with pytest.raises(ValueError, match="--init-state needs a state file or folder"):
        standin_env(init_state=[])


def test_one_path_as_old_checkpoints_recorded_it(standin_env, states):
    """A single string, as checkpoints before many start states recorded it, is a list of one."""
    _, places = states
    path = sorted(places)[1]
    assert EnvSettings(init_state=path).init_state == [path]
    env = standin_env(init_state=path)
    env.reset(seed=3)
    assert len(env.start_states) == 1 and position(env) == places[path]
