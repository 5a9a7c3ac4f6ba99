"""Data-parallel runs under torchrun, on this machine's loopback: two ranks, two "nodes", resume across
modes, a killed rank with and without restarts. Ports are chosen free at run time."""
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
import torch

from test_ppo_train import STANDIN_ROM, TINY, TRAINER, checkpoints, events, scalars

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# 4 envs over the ranks; 2 x 32 steps an update: 128 steps with 2 ranks, 3 updates; episodes of 40 steps
SHARED = ["--num-envs", "4", *TINY[2:], "--total-timesteps", "384"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(cwd, *launcher, extra=(), timeout=180):
    command = [*TORCHRUN, *launcher, TRAINER, "--rom-path", str(STANDIN_ROM), *SHARED, *extra]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_two_ranks_train_one_model_and_log_every_rank(tmp_path):
    result = torchrun(tmp_path, "--standalone", "--nproc-per-node", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 envs (serial) on each of 2 ranks, 3 updates of 128 steps" in result.stdout
    assert "all 2 ranks hold the same weights" in result.stdout  # each rank's checksum, compared
    assert result.stdout.count("done: 384 steps") == 1  # rank 0 alone prints, logs and saves
    assert [path.name for path in checkpoints(tmp_path)] == ["checkpoint_update000002.pt", "checkpoint_update000003.pt"]
    accumulator = events(tmp_path)  # one run folder
    for tag in ("train/value_loss", "train/learning_rate", "perf/steps_per_second"):
        assert [step for step, _ in scalars(accumulator, tag)] == [128, 256, 384], tag  # both ranks' steps
    # The 40-step episodes of all 4 envs end in update 2: both ranks' episodes are counted.
    assert scalars(accumulator, "episode/count")[0] == (256, 4.0)
    assert [step for step, _ in scalars(accumulator, "eval/mean_reward")] == [256]
    saved = torch.load(checkpoints(tmp_path)[-1], weights_only=True)
    assert saved["global_step"] == 384 and saved["args"]["num_envs"] == 4


def test_two_nodes_meet_on_loopback(tmp_path):
    port = free_port()
    launcher = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"127.0.0.1:{port}"]
    command = lambda node: [*TORCHRUN, *launcher, "--node-rank", str(node), TRAINER, "--rom-path",  # noqa: E731
                            str(STANDIN_ROM), *SHARED, "--eval-episodes", "0"]
    nodes = [subprocess.Popen(command(node), cwd=tmp_path / f"node{node}", stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for node in (0, 1) if
             (tmp_path / f"node{node}").mkdir() or True]
    outputs = [node.communicate(timeout=180) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stdout + stderr
    assert sum("all 2 ranks hold the same weights" in stdout for stdout, _ in outputs) == 1


def test_a_machine_without_the_rom_refuses_and_so_do_the_others(tmp_path):
    """The ROM must be at the same path on every machine: here node 1's folder lacks roms/standin.gb."""
    port = free_port()
    launcher = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                f"127.0.0.1:{port}"]
    for node in (0, 1):
        (tmp_path / f"node{node}" / "roms").mkdir(parents=True)
    shutil.copy(STANDIN_ROM, tmp_path / "node0" / "roms" / "standin.gb")
    arguments = [TRAINER, "--rom-path", "roms/standin.gb", *SHARED[:-2]]
    nodes = [subprocess.Popen([*TORCHRUN, *launcher, *arguments], cwd=tmp_path / f"node{node}",
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    outputs = [node.communicate(timeout=120) for node in nodes]
    assert all(node.returncode != 0 for node in nodes), outputs
    errors = [line for _, stderr in outputs for line in stderr.splitlines() if "ppo_pokemon.py: error:" in line]
    assert len(errors) == 2 and all("ROM not found: roms/standin.gb" in line for line in errors), errors
    assert not (tmp_path / "node0" / "runs").exists()  # refused before anything was written


def test_checkpoints_resume_across_modes(tmp_path):
    result = torchrun(tmp_path, "--standalone", "--nproc-per-node", "2", extra=["--total-timesteps", "256"])
    assert result.returncode == 0, result.stdout + result.stderr
    distributed = checkpoints(tmp_path)[-1]
    alone = subprocess.run([sys.executable, TRAINER, "--resume", str(distributed), "--total-timesteps", "384"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "4 envs (" in alone.stdout and "from update 2 of" in alone.stdout
    assert torch.load(checkpoints(tmp_path)[-1], weights_only=True)["global_step"] == 384

    back = torchrun(tmp_path, "--standalone", "--nproc-per-node", "2",
                    extra=["--resume", str(checkpoints(tmp_path)[-1]), "--total-timesteps", "512"])
    assert back.returncode == 0, back.stdout + back.stderr
    assert "from update 3 of" in back.stdout
    assert torch.load(checkpoints(tmp_path)[-1], weights_only=True)["global_step"] == 512


def start_long_run(cwd, *launcher, total_timesteps=1000000):
    extra = ["--total-timesteps", str(total_timesteps), "--save-interval", "2", "--run-name", "long", "--resume", "auto"]
    command = [*TORCHRUN, "--standalone", "--nproc-per-node", "2", *launcher, TRAINER, "--rom-path",
               str(STANDIN_ROM), *SHARED, "--eval-episodes", "0", *extra]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_rank_1_after(process, prefix):
    for line in process.stdout:
        if line.startswith(prefix):
            break
    agent = psutil.Process(process.pid)
    (rank_1,) = [p for p in agent.children() if p.environ().get("RANK") == "1"]
    rank_1.send_signal(signal.SIGKILL)


def test_a_killed_rank_stops_every_rank_and_the_newest_checkpoint_loads(tmp_path):
    process = start_long_run(tmp_path)
    kill_rank_1_after(process, "update 3/")
    start = time.time()
    stdout, stderr = process.communicate(timeout=120)
    assert time.time() - start < 60 and process.returncode != 0, stdout + stderr
    assert f'File "{TRAINER}"' not in stderr, stderr  # ours: one line, no traceback (torchrun shows its own)
    torch.load(checkpoints(tmp_path)[-1], weights_only=True)
    assert not any("ppo_pokemon.py" in " ".join(p.cmdline()) for p in psutil.Process().children(recursive=True))


def test_with_restarts_a_killed_rank_resumes_from_the_checkpoint_and_finishes(tmp_path):
    process = start_long_run(tmp_path, "--max-restarts", "1", total_timesteps=10 * 128)  # 10 updates
    kill_rank_1_after(process, "update 5/")
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stdout + stderr
    # After the restart both ranks continue from the newest checkpoint (every 2 updates) to the end.
    (resumed,) = [line for line in stdout.splitlines() if line.startswith("run long:") and "from update" in line]
    assert int(resumed.split("from update ")[1].split()[0]) >= 4, stdout
    assert "done: 1,280 steps" in stdout
    saved = torch.load(checkpoints(tmp_path)[-1], weights_only=True)
    assert saved["update"] == 10 and saved["global_step"] == 1280
