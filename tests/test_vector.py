"""The vector backends: ours (Serial, Multiprocessing) and PufferLib's where it is installed.

Every backend must give the same episodes: env i seeded with seed + i, the step after an episode's
end resetting that env (its action ignored, reward 0), episode infos delivered. Ours must also sleep
while it waits, start under the spawn start method, and report a dead or failing worker in one line.
"""
import importlib.util
import os
import signal
import time

import numpy as np
import psutil
import pytest

import pokemon_env
from pokemon_env import ACTIONS, PokemonRedEnv, make_env

B, START = ACTIONS.index("b"), ACTIONS.index("start")
HAS_PUFFERLIB = importlib.util.find_spec("pufferlib") is not None


def make_backend(name, env_kwargs, num_envs, num_workers=2, monkeypatch=None):
    """A vector env by name: through make_vector_env with and without PufferLib, or a class directly."""
    if name.startswith("make_vector_env"):
        if name.endswith("without PufferLib"):
            monkeypatch.setattr(pokemon_env, "pufferlib", None)  # what a platform without its wheel runs
        backend = name.split()[1]
        return pokemon_env.make_vector_env(env_kwargs, num_envs, backend, num_workers if backend != "serial" else None)
    if name == "PufferLib Multiprocessing":
        import pufferlib.vector

        return pufferlib.vector.make(make_env, env_kwargs=env_kwargs, backend=pufferlib.vector.Multiprocessing,
                                     num_envs=num_envs, num_workers=num_workers)
    backend_class = {"Serial": pokemon_env.Serial, "Multiprocessing": pokemon_env.Multiprocessing}[name]
    return backend_class([make_env] * num_envs, [[]] * num_envs, [env_kwargs] * num_envs, num_envs,
                         num_workers=num_workers)


BACKENDS = ["Serial", "Multiprocessing", "make_vector_env serial without PufferLib",
            "make_vector_env multiprocessing without PufferLib"]
if HAS_PUFFERLIB:
    BACKENDS += ["make_vector_env serial", "make_vector_env multiprocessing", "PufferLib Multiprocessing"]


@pytest.fixture
def env_kwargs(standin_rom, start_state_file):
    return dict(rom_path=str(standin_rom), init_state=str(start_state_file), max_steps=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_episodes_end_reset_and_deliver_their_infos(backend, env_kwargs, monkeypatch):
    envs = make_backend(backend, env_kwargs, num_envs=2, monkeypatch=monkeypatch)
    try:
        obs, infos = envs.reset(seed=0)
        assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
        assert infos == []
        first_obs = obs.copy()
        for step in range(1, 4):
            obs, rewards, terminals, truncations, infos = envs.step(np.full(2, B))
            assert not terminals.any()
            assert truncations.all() == (step == 3)
            assert (infos == []) == (step < 3)
        assert len(infos) == 2
        for info in infos:
            assert info["episode_length"] == 3 and info["unique_tiles"] == 1
            assert info["visited_tiles"].dtype == np.int32
        # A finished env is reset by the next step, whose action (Start: open the menu) is ignored.
        obs, rewards, terminals, truncations, infos = envs.step(np.full(2, START))
        assert not truncations.any() and infos == [] and not rewards.any()
        assert np.array_equal(obs, first_obs)  # the bedroom as after the first reset, no menu
    finally:
        envs.close()


def test_every_backend_plays_the_same_episodes(env_kwargs, monkeypatch):
    """Same seeds and actions: the same observations and rewards from every backend, step by step."""
    env_kwargs = {**env_kwargs, "max_steps": 6}
    actions = np.random.default_rng(0).integers(0, 8, size=(14, 4))
    trajectories = {}
    for backend in BACKENDS:
        with monkeypatch.context() as patch:
            envs = make_backend(backend, env_kwargs, num_envs=4, monkeypatch=patch)
            try:
                obs, _ = envs.reset(seed=5)
                frames, rewards, lengths = [obs.copy()], [], []
                for step_actions in actions:
                    obs, reward, _, _, infos = envs.step(step_actions)
                    frames.append(obs.copy())
                    rewards.append(reward.copy())
                    lengths += [info["episode_length"] for info in infos]
            finally:
                envs.close()
        trajectories[backend] = (np.array(frames), np.array(rewards), lengths)
    reference = trajectories["Serial"]
    assert len(reference[2]) == 8  # two episodes per env ended
    for backend, (frames, rewards, lengths) in trajectories.items():
        assert np.array_equal(frames, reference[0]), backend
        assert np.array_equal(rewards, reference[1]) and lengths == reference[2], backend


def test_multiprocessing_starts_with_spawn_without_replaying_the_intro(standin_rom):
    """macOS and Windows start workers with spawn: they get the start state the main process booted."""
    kwargs = dict(rom_path=str(standin_rom), max_steps=3)  # no init_state: the intro driver's start state
    reference = PokemonRedEnv(**kwargs)  # boots, here
    reference_obs, _ = reference.reset(seed=7)
    reference.close()
    # A frame's budget for the intro: a worker that played it again would fail to start.
    no_intro = {**kwargs, "intro_frame_budget": 1}
    envs = pokemon_env.Multiprocessing([make_env] * 2, [[]] * 2, [no_intro] * 2, 2, num_workers=2,
                                       start_method="spawn")
    try:
        obs, _ = envs.reset(seed=7)
        assert np.array_equal(obs[0], reference_obs)
        for _ in range(3):
            obs, rewards, terminals, truncations, infos = envs.step(np.full(2, B))
        assert truncations.all() and len(infos) == 2
    finally:
        envs.close()


def test_our_multiprocessing_workers_sleep_between_steps(env_kwargs):
    """PufferLib 2.0.2's workers spin for half a second after each step; ours must sleep while waiting:
    the kernel finds them asleep whenever it is asked (a spinning worker is running or runnable)."""
    envs = make_backend("Multiprocessing", env_kwargs, num_envs=2)
    try:
        envs.reset(seed=0)
        envs.step(np.full(2, B))
        workers = [psutil.Process(process.pid) for process in envs.processes]
        states = []
        for _ in range(20):
            time.sleep(0.025)
            states += [worker.status() for worker in workers]
        assert set(states) == {psutil.STATUS_SLEEPING}, states
        envs.step(np.full(2, B))  # and they still answer
    finally:
        envs.close()


def test_our_multiprocessing_refuses_asynchronous_batches(env_kwargs):
    with pytest.raises(ValueError, match="steps all envs together"):
        pokemon_env.Multiprocessing([make_env] * 2, [[]] * 2, [env_kwargs] * 2, 2, num_workers=2, batch_size=1)


def test_a_dead_worker_is_reported_within_seconds(env_kwargs):
    envs = make_backend("Multiprocessing", env_kwargs, num_envs=4)
    try:
        envs.reset(seed=0)
        processes = list(envs.processes)
        victim = processes[1].pid
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(pokemon_env.WorkerError) as error:
            envs.step(np.full(4, B))  # noticed at all: a wait that never ends is the pytest timeout's
        message = str(error.value)
        assert "\n" not in message and f"pid {victim}" in message and "envs 2-3" in message
        assert "exit code -9" in message
    finally:
        envs.close()
    assert not any(process.is_alive() for process in processes)  # the others are stopped too


class EnvThatFails(PokemonRedEnv):
    """An env whose emulator breaks on the second step: what a worker must report, not swallow."""

    def step(self, action):
        if self.steps == 1:
            raise RuntimeError("the emulator broke\nsecond line of its message")
        return super().step(action)


def make_failing_env(**kwargs):
    return EnvThatFails(**kwargs)


def test_an_env_error_in_a_worker_is_reported_in_one_line(env_kwargs):
    envs = pokemon_env.Multiprocessing([make_env, make_env, make_failing_env, make_env], [[]] * 4, [env_kwargs] * 4,
                                       4, num_workers=2)
    try:
        envs.reset(seed=0)
        envs.step(np.full(4, B))
        with pytest.raises(pokemon_env.WorkerError, match="env worker 1 .* failed: RuntimeError: the emulator broke$"):
            envs.step(np.full(4, B))
    finally:
        envs.close()


def test_a_worker_that_cannot_make_its_envs_fails_the_start(standin_rom, tmp_path):
    bad_state = tmp_path / "bad.state"
    bad_state.write_bytes(b"not a state")
    kwargs = [dict(rom_path=str(standin_rom))] * 2 + [dict(rom_path=str(standin_rom), init_state=str(bad_state))] * 2
    with pytest.raises(pokemon_env.WorkerError, match="env worker 1 .* failed: StateError: .*bad.state"):
        pokemon_env.Multiprocessing([make_env] * 4, [[]] * 4, kwargs, 4, num_workers=2)
