"""The swarm of start states: progress keys, offers, the archive, resets drawn from it, both backends."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import standin_play
import torch

import pokemon_env
from pokemon_env import ACTIONS, MAP_ID, X_COORD, Y_COORD, EnvGroups, PokemonRedEnv, Swarm
from conftest import STANDIN_ROM
from test_ppo_train import TRAINER

BEDROOM = (0x26, 3, 6)  # map, x, y of the start


def play(env, buttons) -> list:
    """The infos of the steps that offered a state to the swarm."""
    offers = []
    for button in buttons:
        info = env.step(ACTIONS.index(button))[4]
        if "swarm_key" in info:
            offers.append(info)
    return offers


def position(env):
    memory = env.pyboy.memory
    return memory[MAP_ID], memory[X_COORD], memory[Y_COORD]


@pytest.fixture(scope="module")
def pokedex_page(tmp_path_factory) -> bytes:
    """A state in Oak's lab with the ball's Pokedex page up: two presses of A or B give the starter."""
    env = PokemonRedEnv(rom_path=STANDIN_ROM)
    env.reset(seed=0)
    for button in standin_play.TO_TOWN + standin_play.TOWN_TO_BALL + ["a"]:
        env.step(ACTIONS.index(button))
    state = env._save_state()
    env.close()
    return state


def test_the_progress_key_grows_along_the_badge_route_and_is_read_from_ram(standin_env):
    env = standin_env(max_steps=10_000)
    env.reset(seed=0)
    keys = [env.progress()]
    for button in standin_play.BADGE_ROUTE:
        env.step(ACTIONS.index(button))
        keys.append(env.progress())
    assert keys[0] == (0, 0, 0, 0, 0) and keys == sorted(keys)  # it never goes back on this route
    # The badge, GOT_STARTER, BATTLED_RIVAL_IN_OAKS_LAB and BEAT_BROCK, Pallet Town, 5 species, level 18
    assert keys[-1] == (1, 3, 1, 5, 18)
    assert (0, 0, 1, 0, 0) in keys  # out of the house into Pallet Town: the first step of progress
    state = env._save_state()
    elsewhere = standin_env(init_state=None)
    elsewhere._load_state(state, "test")
    elsewhere._start_episode()
    assert elsewhere.progress() == keys[-1]  # the same key wherever the state is loaded


def test_an_env_offers_a_state_when_a_key_is_first_reached_and_not_again(standin_env):
    env = standin_env(max_steps=10_000)
    env.reset(seed=0)
    assert not play(env, standin_play.TO_TOWN[:3])  # the swarm off: no offers, ever
    env.set_swarm([], 0.5)
    env.reset(seed=0)
    offers = play(env, standin_play.BADGE_ROUTE)
    keys = [offer["swarm_key"] for offer in offers]
    assert keys[0] == (0, 0, 1, 0, 0) and keys == sorted(set(keys))  # each key once, each beyond the last
    assert (0, 1, 1, 1, 5) in keys and (0, 2, 1, 1, 6) in keys and keys[-1][0] == 1  # the starter, the rival, the badge
    for offer in offers[::5]:  # a state holds its key
        other = standin_env()
        other._load_state(offer["swarm_state"], "offer")
        other._start_episode()
        assert other.progress() == offer["swarm_key"]
    env.reset(seed=0)
    assert not play(env, standin_play.BADGE_ROUTE)  # the same route again: nothing new
    fresh = standin_env(max_steps=10_000)
    fresh.set_swarm([(keys[5], offers[5]["swarm_state"])], 0.0)  # an archive that reached the sixth key
    fresh.reset(seed=0)
    assert [offer["swarm_key"] for offer in play(fresh, standin_play.BADGE_ROUTE)] == keys[6:]  # only beyond it


def test_the_archive_keeps_the_furthest_keys_in_files_named_in_key_order(tmp_path):
    folder = tmp_path / "swarm"
    swarm = Swarm(str(folder), size=3)
    assert swarm.add([((0, 0, 1, 0, 0), b"a"), ((0, 1, 1, 1, 5), b"b")])
    assert not swarm.add([((0, 0, 1, 0, 0), b"again"), ((0, 1, 1, 1, 4), b"behind")])  # not beyond the furthest
    assert swarm.add([((0, 2, 1, 1, 6), b"c"), ((1, 3, 1, 5, 18), b"d")])
    assert [key for key, _ in swarm.entries()] == [(0, 1, 1, 1, 5), (0, 2, 1, 1, 6), (1, 3, 1, 5, 18)]  # 3 kept
    assert sorted(path.name for path in folder.iterdir()) == swarm.names()  # the evicted file removed too
    assert swarm.names()[-1] == "b001_s003_t001_p005_l018.state" and (folder / swarm.names()[-1]).read_bytes() == b"d"
    assert swarm.stats()["swarm/furthest_level_sum"] == 18 and swarm.stats()["swarm/size"] == 3

    (folder / swarm.names()[0]).unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = Swarm(str(folder), swarm.names(), size=3)
    assert [key for key, _ in resumed.entries()] == [(0, 2, 1, 1, 6), (1, 3, 1, 5, 18)]
    assert len(caught) == 1 and "1 of the swarm's 3 states are not in" in str(caught[0].message)
    assert Swarm(None, swarm.names()).entries() == []  # without the folder (another rank), nothing is read


def test_levelling_up_at_one_stage_does_not_push_out_the_stages_before_it():
    swarm = Swarm(size=8, per_stage=2)
    swarm.add([((0, 1, 1, 1, level), b"before") for level in range(5, 9)])  # grinding before the badge
    swarm.add([((1, 3, 1, 5, level), b"after") for level in range(15, 40)])  # and after it
    assert [key for key, _ in swarm.entries()] == [(0, 1, 1, 1, 7), (0, 1, 1, 1, 8), (1, 3, 1, 5, 38), (1, 3, 1, 5, 39)]
    assert swarm.furthest == (1, 3, 1, 5, 39) and not swarm.add([((0, 2, 1, 1, 9), b"behind")])


def test_resets_draw_from_the_archive_in_the_asked_share_and_stay_deterministic(standin_env, pokedex_page):
    archive = [((0, 0, 1, 0, 0), pokedex_page)]
    env = standin_env(max_steps=10)
    env.set_swarm(archive, 0.5)
    starts = []
    for seed in range(200):
        env.reset(seed=seed)
        starts.append((env.start_index, position(env)))
    from_swarm = [index == -1 for index, _ in starts]
    assert 0.4 < np.mean(from_swarm) < 0.6
    assert all(where == (0x28, 3, 3) if swarm else where == BEDROOM for (_, where), swarm in zip(starts, from_swarm))
    again = standin_env(max_steps=10)
    again.set_swarm(archive, 0.5)
    for seed in range(20):  # the same seed, the same start and the same first observation
        observation, _ = again.reset(seed=seed)
        assert again.start_index == starts[seed][0] and np.array_equal(observation, env.reset(seed=seed)[0])
    for share, expected in ((0.0, False), (1.0, True)):
        env.set_swarm(archive, share)
        assert all((env.reset(seed=seed) and env.start_index == -1) == expected for seed in range(10))
    plain, empty_swarm = standin_env(), standin_env()
    empty_swarm.set_swarm([], 0.5)  # no states yet: the same episodes as without the swarm
    for seed in range(5):
        assert np.array_equal(plain.reset(seed=seed)[0], empty_swarm.reset(seed=seed)[0])


def test_a_state_that_does_not_load_is_dropped_and_the_usual_start_taken(standin_env, pokedex_page):
    broken = pokedex_page[: len(pokedex_page) // 2]  # a file cut short, say
    env = standin_env(max_steps=10)
    env.set_swarm([((0, 0, 1, 0, 0), broken)], 1.0)
    _, info = env.reset(seed=0)
    key, message = info["swarm_dropped"]
    assert key == (0, 0, 1, 0, 0) and "swarm state b000_s000_t001_p000_l000.state" in message
    assert position(env) == BEDROOM and env.start_index == 0 and env.swarm == []
    assert env.reset(seed=1)[1] == {}  # dropped once

    swarm = Swarm("unused")
    swarm.states[key] = broken
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert swarm.add([], [info["swarm_dropped"], info["swarm_dropped"]])  # two envs found it broken
    assert len(caught) == 1 and str(caught[0].message).endswith(": dropped from the swarm")
    assert swarm.entries() == []


@pytest.mark.parametrize("backend, num_workers", [("serial", None), ("multiprocessing", 2)])
def test_both_backends_take_new_start_states_while_running_and_collect_discoveries(backend, num_workers, pokedex_page,
                                                                                    tmp_path):
    page = tmp_path / "page.state"
    page.write_bytes(pokedex_page)
    envs = EnvGroups({"rom_path": str(STANDIN_ROM), "init_state": [str(page)], "max_steps": 8}, 4, backend, num_workers)
    try:
        envs.start_swarm(0.0)  # discoveries only
        envs.reset(seed=0)
        episodes = step(envs, 30, "b")  # B closes the page and the starter joins: every env finds that
        assert {key for key, _ in envs.discoveries} >= {(0, 1, 1, 1, 5)}
        assert all(episode["from_swarm"] == 0 for episode in episodes)
        envs.update_swarm()
        assert envs.swarm.furthest >= (0, 1, 1, 1, 5) and envs.discoveries == []
        envs.set_swarm(envs.swarm.entries(), 1.0)  # while running: the next episodes start from the archive
        episodes = step(envs, 20, "b")
        assert episodes and all(episode["from_swarm"] == 1 for episode in episodes[4:])
        assert all(episode["pokedex_owned"] >= 1 for episode in episodes[4:])  # they start with the starter
    finally:
        envs.close()


def step(envs, steps: int, button: str) -> list:
    """Step every env with `button` `steps` times; the episodes that ended."""
    num_envs = envs.num_envs
    results = (np.zeros((num_envs, *envs.single_observation_space.shape), np.uint8), np.zeros(num_envs),
               np.zeros(num_envs), np.zeros(num_envs), np.zeros(num_envs), [])
    for _ in range(steps):
        for rows in envs.groups:
            envs.recv(rows)
            envs.send(np.full(rows.stop - rows.start, ACTIONS.index(button)), rows, results)
    envs.recv()
    return results[5]


# ----- Through the trainer: its archive, resume, evaluation, ranks -----


def swarm_run(cwd, *extra, program=None, timeout=180):
    from test_ppo_train import TINY

    command = [sys.executable, program or TRAINER, "--rom-path", str(STANDIN_ROM), *TINY, "--swarm", *extra]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def page_file(tmp_path_factory, pokedex_page) -> Path:
    path = tmp_path_factory.mktemp("page") / "page.state"
    path.write_bytes(pokedex_page)
    return path


@pytest.mark.slow
def test_the_archive_is_kept_on_disk_survives_resume_and_evaluation_never_starts_from_it(tmp_path, page_file):
    from test_ppo_train import checkpoints, events, readme_tags, scalars

    result = swarm_run(tmp_path, "--init-state", str(page_file), "--swarm-share", "1", "--run-name", "r")
    assert result.returncode == 0, result.stdout + result.stderr
    folder = tmp_path / "checkpoints" / "r" / "swarm"
    saved = torch.load(checkpoints(tmp_path)[-1], weights_only=True)
    assert saved["swarm"] and saved["swarm"] == sorted(path.name for path in folder.iterdir())  # listed, in files
    accumulator = events(tmp_path)
    swarm_tags = {tag for tag in readme_tags()["scalars"] if tag.startswith("swarm/")}
    assert len(swarm_tags) == 6 and swarm_tags <= set(accumulator.Tags()["scalars"])  # as README's metrics table says
    assert scalars(accumulator, "swarm/size")[-1] == (192, len(saved["swarm"]))
    assert scalars(accumulator, "swarm/furthest_pokedex_owned")[-1][1] >= 1  # the starter, at least
    # The first episodes start from the page; once the archive has states, every reset (share 1) draws one.
    assert scalars(accumulator, "episode/from_swarm")[0][1] == 0 and scalars(accumulator, "episode/from_swarm")[-1][1] == 1
    assert all(value == 0 for _, value in scalars(accumulator, "eval/from_swarm"))  # evaluation: the usual start

    resumed = subprocess.run([sys.executable, TRAINER, "--resume", str(checkpoints(tmp_path)[-1]), "--total-timesteps",
                              "320"], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0 and not resumed.stderr, resumed.stdout + resumed.stderr
    again = torch.load(checkpoints(tmp_path)[-1], weights_only=True)
    assert again["update"] == 5 and min(again["swarm"]) >= min(saved["swarm"])
    accumulator = events(tmp_path)
    assert scalars(accumulator, "swarm/size")[-1] == (320, len(again["swarm"]))
    # The resumed run's first episodes (reset as it started) drew from the archive it read: not started anew.
    assert scalars(accumulator, "episode/from_swarm")[-1] == (320, 1)

    played = subprocess.run([sys.executable, str(Path(TRAINER).parent / "play_pokemon.py"), "--checkpoint",
                             str(checkpoints(tmp_path)[-1]), "--init-state", str(folder), "--episodes", "1",
                             "--max-steps", "3"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert played.returncode == 0, played.stdout + played.stderr  # the player starts from the archive's files


@pytest.mark.slow
def test_a_swarm_state_broken_on_disk_is_dropped_with_one_warning_and_the_run_goes_on(tmp_path, page_file):
    from test_ppo_train import checkpoints

    result = swarm_run(tmp_path, "--init-state", str(page_file), "--swarm-share", "1", "--run-name", "r")
    assert result.returncode == 0, result.stdout + result.stderr
    names = torch.load(checkpoints(tmp_path)[-1], weights_only=True)["swarm"]
    folder = tmp_path / "checkpoints" / "r" / "swarm"
    for name in names:  # every one cut short: the next resets that draw them find them broken
        (folder / name).write_bytes((folder / name).read_bytes()[:1000])
    resumed = subprocess.run([sys.executable, TRAINER, "--resume", str(checkpoints(tmp_path)[-1]), "--total-timesteps",
                              "320"], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    lines = resumed.stderr.splitlines()  # the resets that drew a broken one: a warning each, once per state
    dropped = [line.split("swarm state ")[1].split()[0] for line in lines]
    assert lines and all(line.startswith("ppo_pokemon.py: warning: swarm state ") for line in lines), resumed.stderr
    assert all(line.endswith("is not a PyBoy save state of this ROM: No data: dropped from the swarm") for line in lines)
    assert len(set(dropped)) == len(dropped) and set(dropped) <= set(names)
    assert not set(torch.load(checkpoints(tmp_path)[-1], weights_only=True)["swarm"]) & set(dropped)


@pytest.mark.slow
def test_two_ranks_share_their_discoveries(tmp_path, page_file):
    """Rank 0's envs are made to find nothing: what its archive holds, rank 1 found; both ranks end with the same."""
    from test_distributed import torchrun

    driver = tmp_path / "swarm_ranks.py"
    driver.write_text("\n".join([
        "import json, os, sys",
        f"sys.path.insert(0, {str(Path(TRAINER).parent)!r})",
        "import pokemon_env, ppo_pokemon",
        "if os.environ['RANK'] == '0':",
        "    pokemon_env.PokemonRedEnv.progress = lambda env: (0, 0, 0, 0, 0)",
        "end_run = ppo_pokemon.Run.__exit__",
        "def keep_swarm(run, *exception):",
        "    open(f'swarm_rank{run.rank}.json', 'w').write(json.dumps(run.envs.swarm.names()))",
        "    return end_run(run, *exception)",
        "ppo_pokemon.Run.__exit__ = keep_swarm",
        f"sys.argv[0] = {TRAINER!r}",
        "ppo_pokemon.main()",
    ]) + "\n")
    result = torchrun(tmp_path, "--standalone", "--nproc-per-node", "2", program=driver,
                      extra=["--swarm", "--init-state", str(page_file), "--run-name", "r"])
    assert result.returncode == 0, result.stdout + result.stderr
    names = [json.loads((tmp_path / f"swarm_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert names[0] and names[0] == names[1]  # rank 1's discoveries, on both ranks
    assert sorted(path.name for path in (tmp_path / "checkpoints" / "r" / "swarm").iterdir()) == names[0]
