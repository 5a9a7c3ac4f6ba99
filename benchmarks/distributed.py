"""Data-parallel training on one machine: two torchrun ranks against one process, and the all-reduce.

    python benchmarks/distributed.py           # about 6 minutes on 2 cores
    python benchmarks/distributed.py --quick   # about 3 minutes

At the trainer's defaults on the stand-in (4 envs, batch 2,048, minibatch 256, 4 epochs, evaluation
off), in alternating runs: `torchrun --standalone --nproc-per-node 2` (2 envs and 1 torch thread per
rank) against `python ppo_pokemon.py` (4 envs, a thread per core). Speeds come from each run's
TensorBoard events, from the end of its first update to the end of its last. Then two gloo
processes on loopback time the all-reduce of the trainer's gradients (1.69M floats), the exchange
every minibatch costs. Prints a Markdown table and writes the figures as JSON.
"""
import argparse
import json
import os
import socket
import sys
import time
import warnings

warnings.filterwarnings("ignore", message="The pynvml package is deprecated")

import numpy as np
import psutil
import torch
import torch.distributed as dist
import torch.multiprocessing
from speedup import run_speeds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROM = os.path.join(ROOT, "roms", "standin.gb")
TRAINER = os.path.join(ROOT, "ppo_pokemon.py")


def trainer_run(ranks: int, updates: int) -> dict:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    command = [*(launcher if ranks > 1 else [sys.executable]), TRAINER, "--rom-path", ROM,
               "--total-timesteps", str(2048 * updates), "--eval-episodes", "0"]
    return run_speeds(command, updates)


def time_all_reduce(rank: int, port: int, numel: int, repeats: int, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    tensor = torch.randn(numel)
    for _ in range(3):
        dist.all_reduce(tensor)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(tensor)
    seconds = (time.perf_counter() - start) / repeats
    if rank == 0:
        results.put(seconds)
    dist.barrier()
    dist.destroy_process_group()


def all_reduce_seconds(numel: int, repeats: int) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = torch.multiprocessing.get_context("spawn").SimpleQueue()
    torch.multiprocessing.spawn(time_all_reduce, args=(port, numel, repeats, results), nprocs=2)
    return results.get()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "distributed.json"))
    options = parser.parse_args()
    pairs, updates = (2, 4) if options.quick else (3, 6)
    sys.path.insert(0, ROOT)
    from ppo_pokemon import Agent

    numel = sum(p.numel() for p in Agent((4, 84, 84)).parameters())
    runs = {1: [], 2: []}
    for pair in range(pairs):
        for ranks in ((1, 2) if pair % 2 == 0 else (2, 1)):
            runs[ranks].append(trainer_run(ranks, updates))
    results = {"command": " ".join(["python benchmarks/distributed.py"] + sys.argv[1:]), "runs": runs,
               "cores": psutil.cpu_count(logical=False), "gradient_floats": numel,
               "all_reduce_seconds": all_reduce_seconds(numel, 20 if options.quick else 50)}
    os.makedirs(os.path.dirname(options.json), exist_ok=True)
    with open(options.json, "w") as f:
        json.dump(results, f, indent=2)
    print(report(results))


def report(results: dict) -> str:
    runs = results["runs"]
    rows = []
    for key, label in (("steps_per_second", "trainer steps/s"), ("rollout_seconds", "rollout s per update"),
                       ("update_seconds", "update s per update")):
        one, two = (float(np.median([run[key] for run in runs[ranks]])) for ranks in (1, 2))
        ratio = two / one if key == "steps_per_second" else one / two
        rows.append(f"| {label} | {one:,.2f} | {two:,.2f} | {ratio:.2f}x |")
    seconds = results["all_reduce_seconds"]
    return "\n".join([
        f"`{results['command']}` on {results['cores']} physical cores; medians of alternating runs",
        "",
        "| what | 1 process (4 envs, 2 threads) | 2 ranks (2 envs, 1 thread each) | 2 ranks / 1 process |",
        "|---|---|---|---|",
        *rows,
        "",
        f"all-reduce of the gradients ({results['gradient_floats']:,} floats, "
        f"{results['gradient_floats'] * 4 / 2**20:.1f} MiB) between 2 gloo processes on loopback: "
        f"{seconds * 1000:.1f} ms; 32 a default update (8 minibatches x 4 epochs): {32 * seconds:.2f} s",
    ])


if __name__ == "__main__":
    main()
