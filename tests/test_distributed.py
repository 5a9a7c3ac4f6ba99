"""Data-parallel runs under torchrun, on this machine's loopback: two ranks, two "nodes", resume across
modes, a killed rank with and without restarts; the gradients each --grad-compression leaves the ranks."""
import copy
import datetime
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing
from processes import Started, processes_in
from test_ppo_train import STANDIN_ROM, TINY, TRAINER, checkpoints, events, scalars

import ppo_pokemon

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# 4 envs over the ranks; 2 x 32 steps an update: 128 steps with 2 ranks, 3 updates; episodes of 40 steps
SHARED = ["--num-envs", "4", *TINY[2:], "--total-timesteps", "384"]


def free_port() -> int:
    """A free port below the kernel's ephemeral range, where it never puts the ports it hands out itself:
    nothing else takes it between this check and torchrun's bind (a port picked by bind(0) could be)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_start = int(f.read().split()[0])
    while True:
        port = random.randrange(10_000, ephemeral_start)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:  # taken: another
                continue


def torchrun(cwd, *launcher, extra=(), timeout=180, program=TRAINER):
    command = [*TORCHRUN, *launcher, str(program), "--rom-path", str(STANDIN_ROM), *SHARED, *extra]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def keeping_every_ranks_weights(folder) -> Path:
    """The trainer, made to write each rank's final weights to weights_rank<R>.pt as the run ends."""
    driver = Path(folder) / "keep_weights.py"
    driver.write_text("\n".join([
        "import sys, torch",
        f"sys.path.insert(0, {str(Path(TRAINER).parent)!r})",
        "import ppo_pokemon",
        "end_run = ppo_pokemon.Run.__exit__",
        "def keep_weights(run, *exception):",
        "    torch.save(run.agent.state_dict(), f'weights_rank{run.rank}.pt')",
        "    return end_run(run, *exception)",
        "ppo_pokemon.Run.__exit__ = keep_weights",
        f"sys.argv[0] = {TRAINER!r}",
        "ppo_pokemon.main()",
    ]) + "\n")
    return driver


def assert_same_weights(*paths):
    """The invariant of data-parallel PPO: every rank ends with the same weights."""
    first, *others = [torch.load(path, weights_only=True) for path in paths]
    for other in others:
        assert all(torch.equal(first[name], other[name]) for name in first)


def test_two_ranks_train_one_model_and_log_every_rank(tmp_path):
    result = torchrun(tmp_path, "--standalone", "--nproc-per-node", "2", program=keeping_every_ranks_weights(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 envs (serial) on each of 2 ranks (gradients: none), 3 updates of 128 steps" in result.stdout
    assert_same_weights(tmp_path / "weights_rank0.pt", tmp_path / "weights_rank1.pt")
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
    driver = keeping_every_ranks_weights(tmp_path)
    command = lambda node: [*TORCHRUN, *launcher, "--node-rank", str(node), str(driver), "--rom-path",  # noqa: E731
                            str(STANDIN_ROM), *SHARED, "--eval-episodes", "0"]
    nodes = [subprocess.Popen(command(node), cwd=tmp_path / f"node{node}", stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for node in (0, 1) if
             (tmp_path / f"node{node}").mkdir() or True]
    outputs = [node.communicate(timeout=180) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stdout + stderr
    assert sum("on each of 2 ranks (gradients: fp16)" in stdout for stdout, _ in outputs) == 1  # across machines
    assert sum("done: 384 steps" in stdout for stdout, _ in outputs) == 1  # rank 0's machine
    assert_same_weights(*tmp_path.glob("node*/weights_rank*.pt"))
    assert len(list(tmp_path.glob("node*/weights_rank*.pt"))) == 2


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

    back = torchrun(tmp_path, "--standalone", "--nproc-per-node", "2", extra=[
        "--resume", str(checkpoints(tmp_path)[-1]), "--total-timesteps", "512", "--grad-compression", "fp16"])
    assert back.returncode == 0, back.stdout + back.stderr
    assert "(gradients: fp16)" in back.stdout and "from update 3 of" in back.stdout
    assert torch.load(checkpoints(tmp_path)[-1], weights_only=True)["global_step"] == 512


def start_long_run(cwd, *launcher, total_timesteps=1000000, extra=()) -> Started:
    extra = ["--total-timesteps", str(total_timesteps), "--save-interval", "2", "--run-name", "long", "--resume", "auto",
             *extra]
    return Started([*TORCHRUN, "--standalone", "--nproc-per-node", "2", *launcher, TRAINER, "--rom-path",
                    str(STANDIN_ROM), *SHARED, "--eval-episodes", "0", *extra], cwd)


def ranks(process: Started) -> dict:
    """{rank: psutil.Process} of torchrun's workers on this machine."""
    return {int(p.environ()["RANK"]): p for p in psutil.Process(process.pid).children() if "RANK" in p.environ()}


def kill_rank_1_after(process: Started, prefix: str):
    process.wait_for_line(prefix)
    ranks(process)[1].send_signal(signal.SIGKILL)


def test_a_killed_rank_stops_the_others_in_one_line_and_the_newest_checkpoint_loads(tmp_path):
    """As when the rank lost is on another machine: here torchrun looks at its ranks every 60 s, not every
    0.1 s, so rank 0 finds rank 1 gone in its next collective, before torchrun would stop it."""
    process = start_long_run(tmp_path, "--monitor-interval", "60")
    process.wait_for_line("update 3/")
    rank_0, rank_1 = ranks(process)[0], ranks(process)[1]
    rank_1.send_signal(signal.SIGKILL)
    line = process.wait_for_line("ppo_pokemon.py: error:", timeout=60, stream="stderr")
    assert line.startswith("ppo_pokemon.py: error: rank 0: lost contact with another rank (") and "--resume" in line
    deadline = time.monotonic() + 30
    while rank_0.is_running() and rank_0.status() != psutil.STATUS_ZOMBIE:  # torchrun has not reaped it yet
        assert time.monotonic() < deadline, "rank 0 did not end by itself"
        time.sleep(0.05)
    process.popen.terminate()  # torchrun, which would look in a minute: the job has failed
    stdout, stderr = process.finish(timeout=60)
    assert process.returncode != 0, stdout + stderr
    assert f'File "{TRAINER}"' not in stderr, stderr  # ours: one line, no traceback (torchrun shows its own)
    torch.load(checkpoints(tmp_path)[-1], weights_only=True)
    assert not processes_in(tmp_path)


def test_with_restarts_a_killed_rank_resumes_from_the_checkpoint_and_finishes(tmp_path):
    process = start_long_run(tmp_path, "--max-restarts", "1", total_timesteps=10 * 128,  # 10 updates
                             extra=["--grad-compression", "powersgd"])  # its state starts again with the ranks
    kill_rank_1_after(process, "update 5/")
    stdout, stderr = process.finish(timeout=180)
    assert process.returncode == 0, stdout + stderr
    # After the restart both ranks continue from the newest checkpoint (every 2 updates) to the end.
    (resumed,) = [line for line in stdout.splitlines() if line.startswith("run long:") and "from update" in line]
    assert int(resumed.split("from update ")[1].split()[0]) >= 4, stdout
    assert "done: 1,280 steps" in stdout
    saved = torch.load(checkpoints(tmp_path)[-1], weights_only=True)
    assert saved["update"] == 10 and saved["global_step"] == 1280


def gradients_against_the_exact_mean(rank: int, port: int, compression: str, steps: int, results):
    """One of two gloo ranks: backward passes of the trainer's DistributedDataParallel agent on each rank's own
    observations. Rank 0 puts, per step, the relative distance of its gradient from the exact mean, and whether
    every rank's gradient is the same."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed.checkpoint  # noqa: F401  before the group, as ppo_pokemon.start_process_group does
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))  # a deadline
    torch.manual_seed(0)
    agent = ppo_pokemon.Agent((4, 84, 84))
    alone = copy.deepcopy(agent)  # the same weights, its gradient this rank's own
    run = type("Run", (), dict(world_size=2, gradient_group=None, compression=compression))()
    ddp_agent = ppo_pokemon.Run.data_parallel(run, agent)
    observations = torch.Generator().manual_seed(rank)  # each rank its own batch
    distances, same = [], []
    for _ in range(steps):
        obs = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8, generator=observations)
        for model in (alone, ddp_agent):
            model.zero_grad()
            _, logprob, entropy, value = model(obs, torch.arange(8) % 8)
            (logprob.mean() + entropy.mean() + value.square().mean()).backward()
        exact = torch.cat([p.grad.flatten() for p in alone.parameters()])
        dist.all_reduce(exact)
        exact /= 2
        sent = torch.cat([p.grad.flatten() for p in agent.parameters()])
        distances.append(float((sent - exact).norm() / exact.norm()))
        every_ranks = [torch.empty_like(sent) for _ in range(2)]
        dist.all_gather(every_ranks, sent)
        same.append(torch.equal(*every_ranks))
    if rank == 0:
        results.put((distances, same))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("compression", ["none", "fp16", "powersgd"])
def test_every_rank_steps_with_one_gradient_near_the_exact_mean(compression):
    """The invariant (every rank the same gradient, so the same weights), and how near each compression is."""
    results = torch.multiprocessing.get_context("spawn").SimpleQueue()
    torch.multiprocessing.spawn(gradients_against_the_exact_mean, args=(free_port(), compression, 14, results),
                                nprocs=2, join=True)
    distances, same = results.get()
    assert all(same)
    if compression == "none":
        assert max(distances) < 1e-6, distances
    elif compression == "fp16":  # 11 bits of mantissa: about 3 digits
        assert all(1e-5 < distance < 1e-2 for distance in distances), distances
    else:  # exact for 10 steps, then rank-4 factors of each weight matrix: approximate, in the gradient's direction
        assert max(distances[:10]) < 1e-6 and all(1e-3 < distance < 1 for distance in distances[10:]), distances
