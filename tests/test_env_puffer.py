"""make_env works as a PufferLib 2.0.2 creator, and the episode infos reach the trainer."""
import time

import numpy as np
import psutil
import pufferlib.exceptions
import pufferlib.vector
import pytest

import pokemon_env
from pokemon_env import ACTIONS, make_env

B = ACTIONS.index("b")


BACKENDS = {  # ours sleeps instead of spinning while it waits; the results must not change
    "Serial": pufferlib.vector.Serial,
    "Multiprocessing": pufferlib.vector.Multiprocessing,
    "pokemon_env.Multiprocessing": pokemon_env.Multiprocessing,
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_vectorised_episodes_deliver_their_infos(standin_rom, start_state_file, backend):
    max_steps = 3
    envs = pufferlib.vector.make(
        make_env,
        env_kwargs=dict(rom_path=str(standin_rom), init_state=str(start_state_file), max_steps=max_steps),
        backend=BACKENDS[backend],
        num_envs=2,
        **({"num_workers": 2} if backend != "Serial" else {}),
    )
    try:
        obs, infos = envs.reset(seed=0)
        assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
        assert infos == []
        first_obs = obs.copy()
        actions = np.full(2, B)
        for step in range(1, max_steps + 1):
            obs, rewards, terminals, truncations, infos = envs.step(actions)
            assert not terminals.any()
            assert truncations.all() == (step == max_steps)
            assert (infos == []) == (step < max_steps)
        assert len(infos) == 2
        for info in infos:
            assert info["episode_length"] == max_steps and info["unique_tiles"] == 1
            assert info["visited_tiles"].dtype == np.int32
        # A finished env is reset by the next step, whose action (Start: open the menu) is ignored.
        obs, rewards, terminals, truncations, infos = envs.step(np.full(2, ACTIONS.index("start")))
        assert not truncations.any() and infos == [] and not rewards.any()
        assert np.array_equal(obs, first_obs)  # the bedroom as after the first reset, no menu
    finally:
        envs.close()


def test_our_multiprocessing_workers_sleep_between_steps(standin_rom, start_state_file):
    """PufferLib's workers spin for half a second after each step; ours must use no CPU while waiting."""
    envs = pufferlib.vector.make(make_env, env_kwargs=dict(rom_path=str(standin_rom), init_state=str(start_state_file)),
                                 backend=pokemon_env.Multiprocessing, num_envs=2, num_workers=2)
    try:
        envs.reset(seed=0)
        envs.step(np.full(2, B))
        workers = [psutil.Process(process.pid) for process in envs.processes]
        cpu_before = [sum(worker.cpu_times()[:2]) for worker in workers]
        time.sleep(0.5)
        cpu_used = [sum(worker.cpu_times()[:2]) - before for worker, before in zip(workers, cpu_before)]
        assert max(cpu_used) < 0.1, f"workers used {cpu_used} s of CPU in 0.5 s of waiting"
        envs.step(np.full(2, B))  # and they still answer
    finally:
        envs.close()


def test_our_multiprocessing_refuses_asynchronous_batches(standin_rom, start_state_file):
    with pytest.raises(ValueError, match="steps all envs together"):
        pufferlib.vector.make(make_env, env_kwargs=dict(rom_path=str(standin_rom), init_state=str(start_state_file)),
                              backend=pokemon_env.Multiprocessing, num_envs=2, num_workers=2, batch_size=1)


def test_make_env_passes_keyword_arguments(standin_rom, start_state_file):
    env = make_env(
        rom_path=standin_rom, init_state=start_state_file, frame_stack=2, obs_height=72, obs_width=80
    )
    try:
        obs, info = env.reset(seed=0)
        assert obs.shape == (2, 72, 80) and info == {}
        assert env.env.pyboy is not None
    finally:
        env.close()
