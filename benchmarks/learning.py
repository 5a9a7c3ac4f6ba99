"""Does the trainer learn? PPO at its default settings against a random policy, on the stand-in.

    python benchmarks/learning.py                       # 3 seeds x 300,000 steps: 1-1.5 hours on 2 cores
    python benchmarks/learning.py --total-timesteps 20000 --seeds 1   # a quick look
    python benchmarks/learning.py --workdir DIR -- --gamma 0.997      # other settings: flags after -- go to
                                                                      # every training run (a sweep's best)
    python benchmarks/learning.py --workdir DIR -- --swarm           # with the swarm of start states
    python benchmarks/learning.py --nproc-per-node 2 --parallel 1 --workdir DIR -- --grad-compression powersgd
                                                                      # two data-parallel ranks a run

Trains one run per seed (two at a time by default, one torch thread each), evaluating every 10
updates (2 episodes from the usual start), then plays each final checkpoint with play_pokemon.py
(sampled actions, as in training) and a uniformly random policy for the same number of episodes of
the same length. Prints Markdown tables, writes JSON: the returns (target: the trained agents' mean
at least 3x the random policy's), and the time to the first badge: per seed, the step and the
wall-clock time at which a training episode and an evaluation episode first won it (read from the
run's TensorBoard events), and the median step of the first evaluation badge (never: the run's steps).
"""
import argparse
import datetime
import glob
import json
import os
import subprocess
import sys
import warnings

warnings.filterwarnings("ignore", message="The pynvml package is deprecated")
warnings.filterwarnings("ignore", message="Using SDL2 binaries")

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import pokemon_env  # noqa: E402

ROM = os.path.join(ROOT, "roms", "standin.gb")
METRICS = ["episode_return", "badges", "level_sum", "unique_tiles", "event_flags", "pokedex_owned"]
EVALUATION = ["--eval-interval", "10", "--eval-episodes", "2"]  # the first evaluation badge to within 20,480 steps


def train(seeds, total_timesteps: int, parallel: int, workdir: str, trainer_args: list, ranks: int = 1) -> dict:
    """Run ppo_pokemon.py once per seed (with `trainer_args`; under torchrun with `ranks` > 1), `parallel` at a time;
    return {seed: final checkpoint}."""
    running, checkpoints = [], {}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    for seed in seeds:
        command = [*(launcher if ranks > 1 else [sys.executable]), os.path.join(ROOT, "ppo_pokemon.py"),
                   "--rom-path", ROM, "--seed", str(seed),
                   "--total-timesteps", str(total_timesteps), "--exp-name", "learning", "--torch-threads", "1",
                   *EVALUATION, *trainer_args]
        log = open(os.path.join(workdir, f"train_seed{seed}.log"), "w")
        running.append((seed, subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT), log))
        if len(running) >= parallel or seed == seeds[-1]:
            for done_seed, process, done_log in running:
                if process.wait() != 0:
                    sys.exit(f"training seed {done_seed} failed: see {done_log.name}")
                done_log.close()
            running = []
    for seed in seeds:
        runs = sorted(glob.glob(os.path.join(workdir, "checkpoints", f"standin__learning__{seed}__*")))
        checkpoints[seed] = sorted(glob.glob(os.path.join(runs[-1], "checkpoint_update*.pt")))[-1]
    return checkpoints


def best_badges_in_training(workdir: str, seed: int) -> float:
    """The trainer's progress line ends with the most badges any training episode reached."""
    with open(os.path.join(workdir, f"train_seed{seed}.log")) as f:
        lines = [line for line in f.read().replace("\r", "\n").splitlines() if "best badges" in line]
    return float(lines[-1].rsplit("best badges", 1)[1]) if lines else 0.0


def first_badges(checkpoint: str) -> dict:
    """From the run's TensorBoard events: the step and the seconds since the run started at which a training episode
    (episode/max_badges) and an evaluation (eval/mean_badges) first had a badge; None where none did."""
    run = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(checkpoint))), "runs",
                       os.path.basename(os.path.dirname(checkpoint)))
    events = EventAccumulator(run)
    events.Reload()
    found = {}
    for name, tag in (("training", "episode/max_badges"), ("evaluation", "eval/mean_badges")):
        first = next((e for e in (events.Scalars(tag) if tag in events.Tags()["scalars"] else []) if e.value > 0), None)
        found[name] = first and {"step": first.step, "seconds": round(first.wall_time - events.FirstEventTimestamp())}
    return found


def when(first: dict | None) -> str:
    return f"{first['step']:,} ({datetime.timedelta(seconds=first['seconds'])})" if first else "never"


def median_first_step(results: dict, name: str, never: int) -> float:
    return float(np.median([(s["first_badge"][name] or {"step": never})["step"] for s in results["seeds"].values()]))


def play_checkpoint(checkpoint: str, episodes: int, seed: int, max_steps: int, workdir: str) -> list:
    """The trained agent's episodes, through play_pokemon.py --json."""
    out = os.path.join(workdir, f"play_seed{seed}.json")
    subprocess.run([sys.executable, os.path.join(ROOT, "play_pokemon.py"), "--checkpoint", checkpoint,
                    "--episodes", str(episodes), "--seed", str(seed), "--max-steps", str(max_steps),
                    "--json", out], cwd=workdir, check=True, capture_output=True)
    with open(out) as f:
        return json.load(f)["episodes"]


def play_random(episodes: int, seed: int, max_steps: int) -> list:
    """A uniformly random policy's episodes in the same environment."""
    env = pokemon_env.PokemonRedEnv(rom_path=ROM, max_steps=max_steps)
    rng = np.random.default_rng(seed)
    results = []
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        truncated, info = False, {}
        while not truncated:
            _, _, _, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        results.append({key: info[key] for key in METRICS})
    env.close()
    return results


def mean(episodes: list, key: str) -> float:
    return float(np.mean([episode[key] for episode in episodes]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--total-timesteps", type=int, default=300_000)
    parser.add_argument("--parallel", type=int, default=2, help="training runs at a time")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="data-parallel ranks per run (torchrun)")
    parser.add_argument("--episodes", type=int, default=5, help="evaluation episodes per seed and policy")
    parser.add_argument("--max-steps", type=int, default=4096, help="evaluation episode length (training default)")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "benchmarks", "results", "learning"))
    argv = sys.argv[1:]
    trainer_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    options = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    os.makedirs(options.workdir, exist_ok=True)

    checkpoints = train(options.seeds, options.total_timesteps, options.parallel, options.workdir, trainer_args,
                        options.nproc_per_node)
    rows, results = [], {"command": " ".join(["python benchmarks/learning.py"] + sys.argv[1:]), "seeds": {}}
    for seed in options.seeds:
        trained = play_checkpoint(checkpoints[seed], options.episodes, seed, options.max_steps, options.workdir)
        random_policy = play_random(options.episodes, seed, options.max_steps)
        results["seeds"][seed] = {"checkpoint": os.path.relpath(checkpoints[seed], options.workdir),
                                  "best_badges_in_training": best_badges_in_training(options.workdir, seed),
                                  "first_badge": first_badges(checkpoints[seed]),
                                  "trained": trained, "random": random_policy}
        for name, episodes in (("PPO", trained), ("random", random_policy)):
            badge_episodes = sum(episode["badges"] > 0 for episode in episodes)
            rows.append([seed, name] + [f"{mean(episodes, key):.2f}" for key in METRICS]
                        + [f"{badge_episodes}/{len(episodes)}"])

    trained_return = np.mean([mean(s["trained"], "episode_return") for s in results["seeds"].values()])
    random_return = np.mean([mean(s["random"], "episode_return") for s in results["seeds"].values()])
    seeds_with_badge = sum(any(e["badges"] > 0 for e in s["trained"]) for s in results["seeds"].values())
    seeds_with_badge_in_training = sum(s["best_badges_in_training"] > 0 for s in results["seeds"].values())
    results.update(trained_return=trained_return, random_return=random_return,
                   ratio=trained_return / max(random_return, 1e-9), seeds_with_badge=seeds_with_badge,
                   seeds_with_badge_in_training=seeds_with_badge_in_training,
                   median_first_badge_step={name: median_first_step(results, name, options.total_timesteps)
                                            for name in ("training", "evaluation")})
    with open(os.path.join(options.workdir, "learning.json"), "w") as f:
        json.dump(results, f, indent=2)

    print(f"`{results['command']}`: {options.episodes} evaluation episodes of {options.max_steps} steps "
          f"per seed and policy\n")
    print("| seed | policy | " + " | ".join(METRICS) + " | episodes with badge |")
    print("|" + "---|" * (len(METRICS) + 3))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print(f"\nmean return: PPO {trained_return:.2f}, random {random_return:.2f}, ratio "
          f"{results['ratio']:.1f}x (target >= 3x); seeds whose agent got the badge: "
          f"{seeds_with_badge}/{len(options.seeds)} in evaluation, {seeds_with_badge_in_training}/{len(options.seeds)} "
          f"in some training episode")

    print("\n| seed | first badge in training: step (time) | first badge in evaluation: step (time) "
          "| evaluation at the end: episodes with badge |\n|---|---|---|---|")
    for seed, found in results["seeds"].items():
        badge_episodes = sum(episode["badges"] > 0 for episode in found["trained"])
        print(f"| {seed} | {when(found['first_badge']['training'])} | {when(found['first_badge']['evaluation'])} "
              f"| {badge_episodes}/{len(found['trained'])} |")
    medians = results["median_first_badge_step"]
    print(f"\nmedian step of the first badge (never: {options.total_timesteps:,}): training {medians['training']:,.0f}, "
          f"evaluation {medians['evaluation']:,.0f}")


if __name__ == "__main__":
    main()
