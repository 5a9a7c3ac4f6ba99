"""The throughput benchmark's timing harness and its (3) controls, on the stand-in."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import throughput  # noqa: E402

import pokemon_env  # noqa: E402


@pytest.fixture(scope="module")
def start_state():
    env = pokemon_env.PokemonRedEnv(rom_path=throughput.ROM)
    yield env.start_state
    env.close()


@pytest.mark.parametrize("kind", ["emulator", "env"])
def test_control_workers_answer_every_round_and_stop(start_state, kind):
    workers = throughput.Workers(kind, num_workers=2, per_worker=2, start_state=start_state, max_window=8)
    try:
        buttons = np.array([0, 3, 5, 7])
        assert workers.lockstep(buttons)[1] == 4 * 2 * 2
        assert workers.free_running(buttons)[1] == 4 * 2 * 2
    finally:
        workers.close()
    assert all(process.exitcode == 0 for process in workers.processes)


def test_against_emulator_times_every_play_in_every_window(start_state):
    calls = {"a": [], "b": []}

    def play(name):
        def run(buttons):
            calls[name].append(len(buttons))
            return 0.5, len(buttons)  # 2 steps/s whatever the buttons
        return run

    rates, emulator_rate = throughput.against_emulator({"a": play("a"), "b": play("b")}, windows=3, window_steps=4,
                                                       start_state=start_state)
    assert calls == {"a": [4, 4, 4], "b": [4, 4, 4]}
    assert rates == {"a": 8.0, "b": 8.0} and emulator_rate > 0


def test_speedup_checks_out_a_commit_and_times_backends_in_turn(tmp_path):
    import speedup

    folder = tmp_path
    speedup.check_out("HEAD", folder)
    committed = __import__("subprocess").run(["git", "-C", speedup.ROOT, "show", "HEAD:ppo_pokemon.py"],
                                             capture_output=True, text=True, check=True).stdout
    assert (Path(folder) / "ppo_pokemon.py").read_text() == committed
    turns = []

    class Recorded:
        """A real vector env that notes whose turn each step was."""

        def __init__(self, name):
            self.name, self.envs = name, pokemon_env.make_vector_env({"rom_path": throughput.ROM}, 4, "serial")
            self.num_envs, self.reset, self.close = self.envs.num_envs, self.envs.reset, self.envs.close

        def step(self, actions):
            turns.append(self.name)
            return self.envs.step(actions)

    rates = speedup.collection_rates({"old": Recorded("old"), "new": Recorded("new")}, windows=3, window_steps=5)
    assert set(rates) == {"old", "new"} and min(rates.values()) > 0
    windows = [turns[i : i + 5] for i in range(0, len(turns), 5)]
    assert windows == [["old"] * 5, ["new"] * 5, ["new"] * 5, ["old"] * 5, ["old"] * 5, ["new"] * 5]


@pytest.mark.slow
def test_learning_benchmark_trains_every_seed_with_the_flags_after_the_separator(tmp_path):
    """learning.py as a sweep's best settings are compared with it: every seed's run takes the flags after --."""
    import json
    import subprocess

    import torch

    command = [sys.executable, str(Path(throughput.ROOT) / "benchmarks" / "learning.py"), "--seeds", "1", "2",
               "--total-timesteps", "128", "--episodes", "1", "--max-steps", "8", "--workdir", str(tmp_path), "--",
               "--num-envs", "2", "--num-steps", "32", "--minibatch-size", "32", "--gamma", "0.97", "--eval-episodes", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((tmp_path / "learning.json").read_text())
    assert sorted(results["seeds"]) == ["1", "2"] and "-- --num-envs 2" in results["command"]
    for seed, found in results["seeds"].items():
        checkpoint = torch.load(tmp_path / found["checkpoint"], weights_only=True)
        assert checkpoint["args"]["gamma"] == 0.97 and checkpoint["args"]["seed"] == int(seed)
        assert checkpoint["global_step"] == 128 and len(found["trained"]) == len(found["random"]) == 1
    assert "| 1 | PPO |" in result.stdout and "| 2 | random |" in result.stdout


@pytest.mark.slow
def test_learning_benchmark_trains_with_data_parallel_ranks(tmp_path):
    """learning.py --nproc-per-node 2: each seed's run under torchrun, the flags after -- on every rank."""
    import json
    import subprocess

    command = [sys.executable, str(Path(throughput.ROOT) / "benchmarks" / "learning.py"), "--seeds", "1",
               "--nproc-per-node", "2", "--total-timesteps", "128", "--episodes", "1", "--max-steps", "8",
               "--workdir", str(tmp_path), "--", "--num-envs", "2", "--num-steps", "32", "--minibatch-size", "32",
               "--eval-episodes", "0", "--grad-compression", "fp16"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 envs (serial) on each of 2 ranks (gradients: fp16)" in (tmp_path / "train_seed1.log").read_text()
    assert json.loads((tmp_path / "learning.json").read_text())["seeds"]["1"]["checkpoint"].endswith(".pt")


def test_distributed_benchmark_refuses_fewer_than_one_pair_before_it_starts(tmp_path):
    """distributed.py --pairs 0: one line and exit 2, before any link, run or JSON."""
    import subprocess

    command = [sys.executable, str(Path(throughput.ROOT) / "benchmarks" / "distributed.py"), "--pairs", "0",
               "--json", str(tmp_path / "distributed.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--pairs 0: give at least 1" in result.stderr
    assert "steps/s" not in result.stdout and not (tmp_path / "distributed.json").exists()
