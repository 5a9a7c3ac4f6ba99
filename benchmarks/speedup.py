"""This trainer against an older commit's, on the same machine in the same run, taking turns.

    python benchmarks/speedup.py                      # against d6513ec; about 12 minutes on 2 cores
    python benchmarks/speedup.py --quick              # fewer, shorter turns: about 5 minutes
    python benchmarks/speedup.py --against <commit>

The older commit is checked out into a temporary folder (git archive), never into the repository.
Both trainers run at their defaults on the stand-in cartridge (evaluation off: it is excluded from
steps/s anyway), with 4 envs and with 16, in alternating runs, old then new then old...: this
machine's speed drifts, so only figures taken side by side compare. A run's speed is read from its
own TensorBoard events: the wall time from the end of its first update to the end of its last (so
start-up is left out), and its perf/rollout_seconds and perf/update_seconds. Then the default
vector backend of each commit collects with random actions (the same buttons for both) in
alternating windows. Prints a Markdown table of medians and their ratios, and writes the figures as JSON.
"""
import argparse
import glob
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore", message="The pynvml package is deprecated")
warnings.filterwarnings("ignore", message="Using SDL2 binaries")

import numpy as np
import psutil
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROM = os.path.join(ROOT, "roms", "standin.gb")


def check_out(commit: str, folder: str) -> None:
    archive = subprocess.run(["git", "-C", ROOT, "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)


def trainer_run(code: str, num_envs: int, updates: int) -> dict:
    """One run of `code`/ppo_pokemon.py at its defaults."""
    return run_speeds([sys.executable, os.path.join(code, "ppo_pokemon.py"), "--rom-path", ROM, "--num-envs",
                       str(num_envs), "--total-timesteps", str(2048 * updates), "--eval-episodes", "0"], updates)


def run_speeds(command: list, updates: int) -> dict:
    """Run a trainer `command` of `updates` updates of 2,048 steps in a fresh folder; its speeds, read from
    its TensorBoard events: steps/s from the end of its first update to the end of its last (no start-up)."""
    with tempfile.TemporaryDirectory(prefix="speedup_") as workdir:  # its checkpoints: 20 MB a run
        subprocess.run(command, cwd=workdir, check=True, capture_output=True, text=True)
        events = EventAccumulator(glob.glob(os.path.join(workdir, "runs", "*"))[0])
        events.Reload()
    update_ends = events.Scalars("perf/update_seconds")
    return {
        "steps_per_second": 2048 * (updates - 1) / (update_ends[-1].wall_time - update_ends[0].wall_time),
        "rollout_seconds": float(np.median([e.value for e in events.Scalars("perf/rollout_seconds")[1:]])),
        "update_seconds": float(np.median([e.value for e in update_ends[1:]])),
    }


def load_module(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def default_collectors(old_code: str, num_envs: int = 4, num_workers: int = 2):
    """Each commit's default backend for `num_envs` envs, as its trainer makes it (old: via PufferLib)."""
    import pufferlib.vector

    sys.path.insert(0, ROOT)
    new_env = load_module("pokemon_env", os.path.join(ROOT, "pokemon_env.py"))
    old_env = load_module("old_pokemon_env", os.path.join(old_code, "pokemon_env.py"))
    new = new_env.make_vector_env({"rom_path": ROM}, num_envs, "multiprocessing", num_workers)
    old = pufferlib.vector.make(old_env.make_env, env_kwargs={"rom_path": ROM}, backend=old_env.Multiprocessing,
                                num_envs=num_envs, num_workers=num_workers)
    return {"old": old, "new": new}


def collection_rates(collectors: dict, windows: int, window_steps: int) -> dict:
    """Steps/s of each backend with random actions (the same buttons for all), in alternating windows."""
    rng = np.random.default_rng(0)
    seconds = dict.fromkeys(collectors, 0.0)
    for envs in collectors.values():
        envs.reset(seed=0)
    for window in range(windows):
        buttons = rng.integers(8, size=window_steps)
        for name in (list(collectors) if window % 2 == 0 else list(collectors)[::-1]):
            envs = collectors[name]
            start = time.perf_counter()
            for button in buttons:
                envs.step(np.full(envs.num_envs, button))
            seconds[name] += time.perf_counter() - start
    for envs in collectors.values():
        envs.close()
    return {name: windows * window_steps * 4 / total for name, total in seconds.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", default="d6513ec", help="the older commit")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "speedup.json"))
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix=f"old_{options.against}_") as old_code:
        check_out(options.against, old_code)
        results = measure(options, old_code)
    os.makedirs(os.path.dirname(options.json), exist_ok=True)
    with open(options.json, "w") as f:
        json.dump(results, f, indent=2)
    print(report(results))


def measure(options, old_code: str) -> dict:
    pairs, updates = (2, 4) if options.quick else (3, 6)
    results = {"command": " ".join(["python benchmarks/speedup.py"] + sys.argv[1:]), "against": options.against,
               "cores": psutil.cpu_count(logical=False), "python": sys.version.split()[0], "trainer": {}}
    for num_envs in (4, 16):
        runs = {"old": [], "new": []}
        for pair in range(pairs):
            for name in (("old", "new") if pair % 2 == 0 else ("new", "old")):
                runs[name].append(trainer_run(old_code if name == "old" else ROOT, num_envs, updates))
        results["trainer"][num_envs] = runs
    results["collection"] = collection_rates(default_collectors(old_code), *((10, 100) if options.quick else (30, 100)))
    return results


def report(results: dict) -> str:
    rows = []
    targets = {  # the issues' targets against the commits they were set against; none against any other
        "d6513ec": {(4, "steps_per_second"): ">= 1.5x", (16, "steps_per_second"): ">= 1.3x",
                    (4, "rollout_seconds"): ">= 1.3x", "collection": ">= 1.0x"},
        "f575624": {(4, "steps_per_second"): ">= 0.97x", (16, "steps_per_second"): ">= 0.97x"},
    }.get(results["against"], {})
    labels = {"steps_per_second": "trainer steps/s", "rollout_seconds": "rollout s per update",
              "update_seconds": "update s per update"}
    for num_envs, runs in results["trainer"].items():
        for key, label in labels.items():
            old = float(np.median([run[key] for run in runs["old"]]))
            new = float(np.median([run[key] for run in runs["new"]]))
            speedup = new / old if key == "steps_per_second" else old / new
            each = [n[key] / o[key] if key == "steps_per_second" else o[key] / n[key]
                    for o, n in zip(runs["old"], runs["new"])]
            rows.append([f"{label}, {num_envs} envs", f"{old:,.2f}", f"{new:,.2f}", f"{speedup:.2f}x",
                         ", ".join(f"{x:.2f}" for x in each), targets.get((int(num_envs), key), "")])
    collection = results["collection"]
    rows.append(["default backend, 4 envs, random actions, steps/s", f"{collection['old']:,.0f}",
                 f"{collection['new']:,.0f}", f"{collection['new'] / collection['old']:.2f}x", "", targets.get("collection", "")])
    header = (f"`{results['command']}`: commit {results['against']} (old) against this tree (new), "
              f"{results['cores']} physical cores, Python {results['python']}; medians of alternating runs")
    lines = ["| what | old | new | speed-up | each pair | target |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return header + "\n\n" + "\n".join(lines)


if __name__ == "__main__":
    main()
