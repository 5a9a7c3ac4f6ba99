"""Data-parallel training as two one-core machines run it: 1 rank on one core against 2 ranks on one core each, on
plain loopback and over a simulated network link, for each --grad-compression; then what each compression does to
the update.

    python benchmarks/distributed.py                 # 3 pairs of turns: about 20 minutes on 2 cores
    python benchmarks/distributed.py --quick         # 1 pair, 5 updates a run: about 6 minutes
    python benchmarks/distributed.py --pairs 5       # more turns, where the machine's speed drifts
    python benchmarks/distributed.py --rate 10gbit   # another link (tc's units)
    python benchmarks/distributed.py --num-envs 16   # more envs in all: fewer policy steps a rank

Every trainer run is the stand-in at 4 envs in all (--num-envs), the serial backend, --torch-threads 1 and evaluation
off, each rank pinned to a core of its own by taskset (1 rank: core 0; 2 ranks: cores 0 and 1), alternating. Speeds
come from each run's TensorBoard events, from the end of its first update to the end of its last. The link is a
network namespace of this script's whose loopback is shaped by `tc qdisc add dev lo root tbf rate RATE` (on `lo`
tbf shapes both directions together: a half-duplex link); its bytes are tc's count. It needs root and iproute2:
without them the link's runs are skipped, in one line. Then the update: two gloo ranks each collect rollouts on the
stand-in with the initial policy and learn from them, from the same weights and on the same minibatches, once per
compression; the losses and KL of each against the exact gradient's (none), and how far its weights end from the
exact run's. Prints Markdown tables and writes the figures as JSON.
"""
import argparse
import copy
import datetime
import json
import os
import shutil
import subprocess
import sys
import warnings

warnings.filterwarnings("ignore", message="The pynvml package is deprecated")
warnings.filterwarnings("ignore", message="Using SDL2 binaries")

import numpy as np
import psutil
import torch
import torch.distributed as dist
import torch.multiprocessing
from speedup import run_speeds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import pokemon_env  # noqa: E402
import ppo_pokemon  # noqa: E402

ROM = os.path.join(ROOT, "roms", "standin.gb")
TRAINER = os.path.join(ROOT, "ppo_pokemon.py")
COMPRESSIONS = ["none", "fp16", "powersgd"]
NAMESPACE = f"ppo_pokemon_link{os.getpid()}"


def trainer_command(ranks: int, compression: str, updates: int, link: bool, num_envs: int) -> list:
    """The trainer at the issue's setup, each rank on its own core; in the link's namespace if `link`."""
    trainer = [TRAINER, "--rom-path", ROM, "--num-envs", str(num_envs), "--vec-backend", "serial",
               "--torch-threads", "1", "--total-timesteps", str(2048 * updates), "--eval-episodes", "0"]
    if ranks == 1:
        command = ["taskset", "-c", "0", sys.executable, *trainer]
    else:  # torchrun starts `sh`, which becomes taskset on core LOCAL_RANK, which becomes the trainer
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
                   "--no-python", "sh", "-c", 'exec taskset -c "$LOCAL_RANK" "$0" "$@"', sys.executable, *trainer,
                   "--grad-compression", compression]
    return ["ip", "netns", "exec", NAMESPACE, *command] if link else command


def make_link(rate: str):
    """The namespace with its shaped loopback; None, or why it cannot be made."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc") or not shutil.which("taskset"):
        return "needs root, ip and tc (iproute2) and taskset"
    for command in (["ip", "netns", "add", NAMESPACE], ["ip", "netns", "exec", NAMESPACE, "ip", "link", "set", "lo",
                    "up"], ["ip", "netns", "exec", NAMESPACE, "tc", "qdisc", "add", "dev", "lo", "root", "tbf",
                    "rate", rate, "burst", "128kb", "latency", "50ms"]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            return f"{' '.join(command)}: {result.stderr.strip()}"
    return None


def link_bytes() -> int:
    """The bytes the link's loopback has carried, as tc counts them."""
    shown = subprocess.run(["ip", "netns", "exec", NAMESPACE, "tc", "-s", "qdisc", "show", "dev", "lo"],
                           capture_output=True, text=True, check=True).stdout
    return int(shown.split("Sent ")[1].split()[0])


def rollout(env, agent, steps: int, seed: int) -> dict:
    """One env's rollout with `agent`'s sampled actions: the batch an update learns from, its advantages by GAE."""
    obs, actions, logprobs, values, rewards = [], [], [], [], []
    next_obs, _ = env.reset(seed=seed)
    with torch.no_grad():
        for _ in range(steps):
            obs.append(torch.as_tensor(next_obs))
            action, logprob, _, value = agent.get_action_and_value(obs[-1][None])
            next_obs, reward, _, _, _ = env.step(int(action))
            for stored, new in ((actions, action), (logprobs, logprob), (values, value.flatten()), (rewards, reward)):
                stored.append(new)
        values, zeros = torch.stack(values), np.zeros((steps, 1), np.float32)
        next_value = agent.get_value(torch.as_tensor(next_obs)[None]).flatten()
        advantages, returns = ppo_pokemon.compute_gae(np.array(rewards, np.float32)[:, None], values, zeros, zeros,
                                                      zeros, next_value, 0.99, 0.95)
    return dict(obs=torch.stack(obs), actions=torch.cat(actions), logprobs=torch.cat(logprobs),
                values=values.flatten(), advantages=advantages.flatten(), returns=returns.flatten())


def updates_per_compression(rank: int, port: int, updates: int, steps: int, results):
    """One of two gloo ranks: `updates` rollouts of `steps` steps with the initial policy, then, once per compression,
    one PPO update on each (the trainer's defaults: 4 epochs, 8 minibatches) from the same weights and minibatches.
    Rank 0 puts {compression: {"losses": per update, the ranks' means of (policy loss, value loss, approx KL),
    "off_path": the distance of its end weights from the exact run's, over the distance the exact run moved}}."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed.checkpoint  # noqa: F401  before the group, as ppo_pokemon.start_process_group does
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=300))
    torch.set_num_threads(1)
    torch.manual_seed(1)
    env = pokemon_env.PokemonRedEnv(rom_path=ROM)
    agent = ppo_pokemon.Agent(env.observation_space.shape)
    batches = [rollout(env, agent, steps, seed=2 * update + rank) for update in range(updates)]
    env.close()
    start, found = copy.deepcopy(agent.state_dict()), {}
    weights = lambda: torch.cat([p.detach().flatten() for p in agent.parameters()])  # noqa: E731
    for compression in COMPRESSIONS:  # none first: the exact run
        agent.load_state_dict(start)
        start_weights, optimizer = weights(), torch.optim.Adam(agent.parameters(), lr=2.5e-4, eps=1e-5)
        run = argparse.Namespace(world_size=2, gradient_group=None, compression=compression)
        ddp_agent, minibatches, losses = ppo_pokemon.Run.data_parallel(run, agent), np.random.default_rng(rank), []
        for b in batches:
            stats = []
            for _ in range(4):
                for mb in np.array_split(minibatches.permutation(steps), 8):
                    _, newlogprob, entropy, newvalue = ddp_agent(b["obs"][mb], b["actions"][mb])
                    pg_loss, v_loss, entropy_loss, _, approx_kl, _ = ppo_pokemon.ppo_loss(
                        newlogprob, entropy, newvalue, b["logprobs"][mb], b["advantages"][mb], b["returns"][mb],
                        b["values"][mb], 0.2, True, True)
                    optimizer.zero_grad()
                    (pg_loss - 0.01 * entropy_loss + 0.5 * v_loss).backward()
                    torch.nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                    optimizer.step()
                    stats.append(torch.stack([pg_loss.detach(), v_loss.detach(), approx_kl]))
            update_means = torch.stack(stats).mean(0)
            dist.all_reduce(update_means)
            losses.append((update_means / 2).tolist())
        exact = found.get("none", {}).get("end", weights())
        found[compression] = {"losses": losses, "end": weights(),
                              "off_path": float((weights() - exact).norm() / (exact - start_weights).norm())}
    if rank == 0:  # numbers only: a queue's pipe holds less than the weights, and the parent reads after join
        results.put({name: {"losses": f["losses"], "off_path": f["off_path"]} for name, f in found.items()})
    dist.barrier()
    dist.destroy_process_group()


def compare_updates(updates: int, steps: int) -> dict:
    results = torch.multiprocessing.get_context("spawn").SimpleQueue()
    port = 20_000 + os.getpid() % 10_000
    torch.multiprocessing.spawn(updates_per_compression, args=(port, updates, steps, results), nprocs=2)
    return results.get()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    parser.add_argument("--pairs", type=int, help="turns of every setup, in alternating order (default 3; --quick 1)")
    parser.add_argument("--num-envs", type=int, default=4, help="envs in all, shared out over the ranks")
    parser.add_argument("--rate", default="1gbit", help="the simulated link's rate, in tc's units (1gbit, 100mbit)")
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "distributed.json"))
    options = parser.parse_args()
    if options.pairs is not None and options.pairs < 1:
        parser.error(f"--pairs {options.pairs}: give at least 1")
    pairs, updates = options.pairs or (1 if options.quick else 3), 5 if options.quick else 6
    problem = make_link(options.rate)
    if problem:
        print(f"no simulated link ({problem}): loopback only", flush=True)
    setups = [("1 rank", 1, "none", False)] + [(f"2 ranks, loopback, {c}", 2, c, False) for c in ("none", "powersgd")]
    setups += [(f"2 ranks, {options.rate} link, {c}", 2, c, True) for c in COMPRESSIONS] * (problem is None)
    runs = {name: [] for name, *_ in setups}
    try:
        for pair in range(pairs):
            for name, ranks, compression, link in (setups if pair % 2 == 0 else setups[::-1]):
                command = trainer_command(ranks, compression, updates, link, options.num_envs)
                sent = link and link_bytes()
                runs[name].append(run_speeds(command, updates))
                if link:
                    runs[name][-1]["link_mb_per_update"] = (link_bytes() - sent) / updates / 2**20
                print(f"{name}: {runs[name][-1]['steps_per_second']:.0f} steps/s", flush=True)
    finally:
        if problem is None:
            subprocess.run(["ip", "netns", "del", NAMESPACE], check=False)
    results = {"command": " ".join(["python benchmarks/distributed.py"] + sys.argv[1:]), "runs": runs,
               "num_envs": options.num_envs, "cores": psutil.cpu_count(logical=False), "python": sys.version.split()[0],
               "torch": torch.__version__,
               "updates": compare_updates(2 if options.quick else 3, 1024)}
    os.makedirs(os.path.dirname(options.json), exist_ok=True)
    with open(options.json, "w") as f:
        json.dump(results, f, indent=2)
    print(report(results))


def report(results: dict) -> str:
    runs = results["runs"]
    one = float(np.median([run["steps_per_second"] for run in runs["1 rank"]]))
    rows = []
    for name, measured in runs.items():
        median = {key: float(np.median([run[key] for run in measured])) for key in measured[0]}
        link = f"{median['link_mb_per_update']:,.1f}" if "link_mb_per_update" in median else "-"
        rows.append(f"| {name} | {median['steps_per_second']:,.0f} | {median['steps_per_second'] / one:.2f}x | "
                    f"{median['rollout_seconds']:.2f} | {median['update_seconds']:.2f} | {link} |")
    update_rows = []
    for name, found in results["updates"].items():
        cells = " | ".join(f"{pg:+.4f}, {v:.4f}, {kl:.5f}" for pg, v, kl in found["losses"])
        update_rows.append(f"| {name} | {cells} | {found['off_path']:.3f} |")
    updates = len(next(iter(results["updates"].values()))["losses"])
    return "\n".join([
        f"`{results['command']}` on {results['cores']} physical cores, Python {results['python']}, torch "
        f"{results['torch']}; medians of alternating runs ({len(runs['1 rank'])} each)",
        "",
        f"| setup (stand-in, {results['num_envs']} envs in all, serial, 1 core and 1 thread a rank) | steps/s | "
        "against 1 rank | rollout s | update s | link MiB an update |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"The update with each compression, from the same weights on the same {updates} batches of 2 x 1,024 steps "
        "(one update each): policy loss, value loss and approx KL, the ranks' means over the update's minibatches; "
        "off path: how far its end weights lie from the exact run's, over how far the exact run moved them",
        "",
        "| compression | " + " | ".join(f"update {i + 1}" for i in range(updates)) + " | off path |",
        "|---|" + "---|" * (updates + 1),
        *update_rows,
    ])


if __name__ == "__main__":
    main()
