"""Throughput, memory and the cost of each stage, measured in one run on the stand-in cartridge.

    python benchmarks/throughput.py            # about 6 minutes on 2 cores
    python benchmarks/throughput.py --quick    # about 2 minutes

Prints Markdown tables (paste them into benchmarks/README.md) and writes the figures as JSON.
Stages: (1) the emulator alone, (2) one environment, (3) vectorised collection per backend,
(4) the PPO update against a bare training loop of the same network, (5) the whole trainer,
(6) resident memory. Ratios within one run are what to compare across machines.
"""
import argparse
import glob
import importlib.util
import io
import json
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from importlib.metadata import version

warnings.filterwarnings("ignore", message="The pynvml package is deprecated")
warnings.filterwarnings("ignore", message="Using SDL2 binaries")

import numpy as np
import psutil
import torch
from pyboy import PyBoy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import pokemon_env  # noqa: E402
import ppo_pokemon  # noqa: E402

ROM = os.path.join(ROOT, "roms", "standin.gb")


def make_envs(backend: str, num_envs: int, num_workers):
    """"serial" and "multiprocessing" as the trainer makes them (through PufferLib where it is installed;
    the latter is ours, its main process asleep while the workers step); "pufferlib-multiprocessing" is
    PufferLib's own, whose processes spin."""
    if backend == "pufferlib-multiprocessing":
        import pufferlib.vector

        return pufferlib.vector.make(pokemon_env.make_env, env_kwargs={"rom_path": ROM},
                                     backend=pufferlib.vector.Multiprocessing, num_envs=num_envs,
                                     num_workers=num_workers)
    return pokemon_env.make_vector_env({"rom_path": ROM}, num_envs, backend, num_workers)


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        **{package: version(package) if importlib.util.find_spec(package) else "not installed"
           for package in ("pyboy", "pufferlib", "torch", "numpy", "gymnasium")},
    }


class Emulator:
    """(1) One PyBoy, the env's button pattern and one rendered frame per step, nothing else."""

    def __init__(self, start_state: bytes):
        self.pyboy = PyBoy(ROM, window="null", sound_emulated=False, cgb=False, log_level="ERROR")
        self.pyboy.set_emulation_speed(0)
        self.pyboy.load_state(io.BytesIO(start_state))

    def step(self, button):
        self.pyboy.button(pokemon_env.ACTIONS[button], pokemon_env.HOLD_FRAMES)
        self.pyboy.tick(24, True)

    def play(self, buttons) -> float:
        """Seconds to play `buttons`, one step each, continuing from where the last call stopped."""
        start = time.perf_counter()
        for button in buttons:
            self.step(button)
        return time.perf_counter() - start


def against_emulator(plays: dict, windows: int, window_steps: int, start_state: bytes) -> tuple[dict, float]:
    """Steps/s of each `play(buttons)` and of the bare emulator on the same buttons, in alternating windows.

    This machine's speed drifts by up to 2x within seconds (a shared host), so figures taken a
    minute apart are not comparable. Here each window of the plays (in turn, the order reversed
    every other window) sits between two windows of the emulator, and all follow the same button
    sequence from the same start state, so they are timed under the same conditions in the same
    game states. Each play returns (seconds, steps taken).
    """
    emulator = Emulator(start_state)
    rng = np.random.default_rng(0)
    emulator_seconds = 0.0
    totals = {name: [0.0, 0] for name in plays}
    for window in range(windows):
        buttons = rng.integers(len(pokemon_env.ACTIONS), size=window_steps)
        emulator_seconds += emulator.play(buttons[: window_steps // 2])
        for name in (list(plays) if window % 2 == 0 else list(plays)[::-1]):
            seconds, steps = plays[name](buttons)
            totals[name][0] += seconds
            totals[name][1] += steps
        emulator_seconds += emulator.play(buttons[window_steps // 2:])
    emulator.pyboy.stop(save=False)
    return {name: steps / seconds for name, (seconds, steps) in totals.items()}, windows * window_steps / emulator_seconds


class Workers:
    """Controls for (3): worker processes holding bare emulators ("emulator") or our env without
    PufferLib ("env"), woken by semaphores as our Multiprocessing's workers are, every one pressing
    the emulator's buttons. Stepped in lockstep, the emulators show what any synchronous backend
    could reach on this machine; the gap from there to the env's is the env's own work, and from
    the env's to the default backend's is PufferLib's buffers and bookkeeping and the copy of
    observations out. Running free (each worker plays the whole window, one wait at its end), the
    emulators show what a backend that never waits for the slowest worker could reach."""

    STOP, WINDOW = -1, -2  # commands in place of a button

    def __init__(self, kind: str, num_workers: int, per_worker: int, start_state: bytes, max_window: int):
        context = multiprocessing.get_context()
        self.button = context.Value("i", 0, lock=False)
        self.window = context.Array("i", max_window, lock=False)  # the buttons of a free-running window
        self.window_length = context.Value("i", 0, lock=False)
        self.wake = [context.Semaphore(0) for _ in range(num_workers)]
        self.finished = context.Semaphore(0)
        self.steps_per_round = num_workers * per_worker
        self.processes = [context.Process(target=self.work, args=(kind, per_worker, start_state, wake), daemon=True)
                          for wake in self.wake]
        for process in self.processes:
            process.start()
        self._wait_for_all()  # every worker has built its emulators

    def work(self, kind, per_worker, start_state, wake):
        if kind == "emulator":
            units = [Emulator(start_state) for _ in range(per_worker)]
        else:
            units = [pokemon_env.PokemonRedEnv(rom_path=ROM) for _ in range(per_worker)]
            for unit in units:
                unit.reset(seed=0)
        self.finished.release()
        while True:
            wake.acquire()
            command = self.button.value
            if command == self.STOP:
                return
            for button in self.window[: self.window_length.value] if command == self.WINDOW else [command]:
                for unit in units:
                    unit.step(button)
            self.finished.release()

    def _wait_for_all(self):
        for _ in self.wake:
            if not self.finished.acquire(timeout=60):  # a worker that died would otherwise hang the run
                raise RuntimeError("a control worker stopped answering: see its traceback above")

    def _run(self, command):
        self.button.value = command
        for wake in self.wake:
            wake.release()
        self._wait_for_all()

    def lockstep(self, buttons):
        start = time.perf_counter()
        for button in buttons:
            self._run(button)
        return time.perf_counter() - start, len(buttons) * self.steps_per_round

    def free_running(self, buttons):
        self.window[: len(buttons)], self.window_length.value = buttons, len(buttons)
        start = time.perf_counter()
        self._run(self.WINDOW)
        return time.perf_counter() - start, len(buttons) * self.steps_per_round

    def close(self):
        self.button.value = self.STOP
        for wake in self.wake:
            wake.release()
        for process in self.processes:
            process.join(timeout=10)


def play_env(env):
    """(2) One PokemonRedEnv: the emulator plus observations, rewards and bookkeeping."""
    env.reset(seed=0)

    def play(buttons):
        start = time.perf_counter()
        for button in buttons:
            env.step(button)
        return time.perf_counter() - start, len(buttons)
    return play


def play_vector(envs, num_envs: int, agent=None, settle_seconds: float = 0.0):
    """(3) Collection through pufferlib.vector: every env presses the same random buttons as the
    emulator (so all play the same game), or the policy chooses, its forward pass in the loop.
    `settle_seconds` of sleep after each window keeps spinning workers out of the emulator's time."""
    obs, _ = envs.reset(seed=0)
    stored = None  # as the trainer's rollout storage: preallocated, one row of observations per step

    def play(buttons):
        nonlocal obs, stored
        if stored is None or len(stored) < len(buttons):
            stored = np.full((len(buttons), *obs.shape), 0, dtype=obs.dtype)  # written: no page faults later
        torch.set_num_threads(1)  # as the trainer's rollout: more threads only spin on the emulators' cores
        start = time.perf_counter()
        for step, button in enumerate(buttons):
            stored[step] = obs
            if agent is None:
                actions = np.full(num_envs, button)
            else:
                with torch.no_grad():
                    actions = agent.get_action_and_value(torch.as_tensor(obs))[0].numpy()
            obs, *_ = envs.step(actions)
        seconds = time.perf_counter() - start
        torch.set_num_threads(psutil.cpu_count(logical=False) or 1)
        time.sleep(settle_seconds)
        return seconds, len(buttons) * num_envs
    return play


def learner_samples_per_second(batch_size: int, minibatch_size: int, epochs: int) -> tuple[float, float]:
    """(4) The trainer's PPO update (its loss function, clipping and all, in its memory layout and with
    its optimizer) and a bare training loop of the same network in PyTorch's defaults: the default
    memory layout, fp32, Adam's default kernels, x / 255.0.

    Both run on the same minibatches, taking turns minibatch by minibatch so that they share the
    machine's conditions; the bare loop's loss is a plain mean of the outputs. Returns (PPO, bare).
    """
    torch.manual_seed(0)
    agent = ppo_pokemon.Agent((4, 84, 84))
    optimizer = torch.optim.Adam(agent.parameters(), lr=2.5e-4, eps=1e-5, fused=True)  # as the trainer's
    plain = ppo_pokemon.Agent((4, 84, 84)).to(memory_format=torch.contiguous_format)
    plain_optimizer = torch.optim.Adam(plain.parameters(), lr=2.5e-4, eps=1e-5)
    b_obs = torch.randint(0, 256, (batch_size, 4, 84, 84), dtype=torch.uint8)
    b_obs_channels_last = b_obs.contiguous(memory_format=torch.channels_last)  # as the trainer stores them
    b_actions = torch.randint(0, 8, (batch_size,))
    b_logprobs = torch.full((batch_size,), -np.log(8.0))
    b_advantages, b_returns, b_values = torch.randn(batch_size), torch.randn(batch_size), torch.randn(batch_size)

    def ppo_step(mb_inds):
        _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs_channels_last[mb_inds],
                                                                      b_actions[mb_inds])
        pg_loss, v_loss, entropy_loss, *_ = ppo_pokemon.ppo_loss(
            newlogprob, entropy, newvalue, b_logprobs[mb_inds], b_advantages[mb_inds],
            b_returns[mb_inds], b_values[mb_inds], 0.2, True, True)
        optimizer.zero_grad()
        (pg_loss - 0.01 * entropy_loss + 0.5 * v_loss).backward()
        torch.nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
        optimizer.step()

    def bare_step(mb_inds):
        hidden = plain.network(b_obs[mb_inds] / 255.0)
        plain_optimizer.zero_grad()
        (plain.actor(hidden).mean() + plain.critic(hidden).mean()).backward()
        plain_optimizer.step()

    seconds = {ppo_step: 0.0, bare_step: 0.0}
    for _ in range(epochs):
        for mb_inds in np.array_split(np.random.permutation(batch_size), batch_size // minibatch_size):
            for step in seconds:
                start = time.perf_counter()
                step(mb_inds)
                seconds[step] += time.perf_counter() - start
    return batch_size * epochs / seconds[ppo_step], batch_size * epochs / seconds[bare_step]


def trainer_run(total_timesteps: int) -> dict:
    """(5) ppo_pokemon.py at its defaults on the stand-in; its own TensorBoard perf/ scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    command = [sys.executable, os.path.join(ROOT, "ppo_pokemon.py"), "--rom-path", ROM,
               "--total-timesteps", str(total_timesteps), "--eval-episodes", "0"]
    with tempfile.TemporaryDirectory(prefix="bench_trainer_") as workdir:  # its checkpoints: 20 MB a run
        subprocess.run(command, cwd=workdir, check=True, capture_output=True, text=True)
        events = EventAccumulator(glob.glob(os.path.join(workdir, "runs", "*"))[0])
        events.Reload()

    def scalars(tag):
        return [event.value for event in events.Scalars(tag)]

    rollout, update = scalars("perf/rollout_seconds"), scalars("perf/update_seconds")
    return {
        "steps_per_second": scalars("perf/steps_per_second")[-1],
        "rollout_seconds": float(np.mean(rollout)),
        "update_seconds": float(np.mean(update)),
        "update_samples_per_second": float(np.mean(scalars("perf/update_samples_per_second"))),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "command": " ".join(["python ppo_pokemon.py"] + command[2:]).replace(ROM, "roms/standin.gb"),
    }


def table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and configurations")
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "throughput.json"))
    options = parser.parse_args()
    torch.set_num_threads(psutil.cpu_count(logical=False) or 1)
    results = {"machine": machine(), "command": " ".join(["python benchmarks/throughput.py"] + sys.argv[1:])}
    cores = results["machine"]["physical_cores"]

    # (1) and (2): the emulator and one env on the same buttons, in alternating windows.
    env = pokemon_env.PokemonRedEnv(rom_path=ROM)
    windows, window_steps = (6, 100) if options.quick else (12, 120)
    rates, results["emulator_steps_per_second"] = against_emulator(
        {"env": play_env(env)}, windows, window_steps, env.start_state)
    results["env_steps_per_second"] = rates["env"]
    results["env_overhead"] = results["emulator_steps_per_second"] / results["env_steps_per_second"] - 1
    rss_before = psutil.Process().memory_info().rss

    # (3) Vectorised collection, each configuration against the emulator in its own windows; the default
    # backend's random-action rows share theirs with the controls (see Workers).
    agent = ppo_pokemon.Agent((4, 84, 84))
    configs = [("serial", 4, None), ("multiprocessing", 4, 2)]
    if importlib.util.find_spec("pufferlib"):
        configs.append(("pufferlib-multiprocessing", 4, 2))
    if not options.quick:
        configs += [("serial", 8, None), ("multiprocessing", 8, 2), ("multiprocessing", 2, 2)]
    results["vector"] = []
    for backend, num_envs, num_workers in configs:
        for policy in (None, agent):
            envs = make_envs(backend, num_envs, num_workers)
            settle = 0.6 if backend == "pufferlib-multiprocessing" else 0.0  # its workers spin for 0.5 s
            plays = {backend: play_vector(envs, num_envs, policy, settle)}
            controls = []
            if backend == "multiprocessing" and policy is None:
                per_worker, max_window = num_envs // num_workers, window_steps // 2
                free, lockstep, envs_alone = controls = [
                    Workers(kind, num_workers, per_worker, env.start_state, max_window)
                    for kind in ("emulator", "emulator", "env")]  # each plays every window once, as the envs do
                plays.update(free_emulator=free.free_running, lockstep_emulator=lockstep.lockstep,
                             lockstep_env=envs_alone.lockstep)
            rates, emulator_rate = against_emulator(plays, windows, window_steps // 2, env.start_state)
            # USS: the memory a worker holds on its own, not the pages it shares with its forked parent.
            workers = [psutil.Process(p.pid).memory_full_info() for p in getattr(envs, "processes", [])]
            envs.close()
            for control in controls:
                control.close()
            rate = rates.pop(backend)
            results["vector"].append({
                "backend": backend, "num_envs": num_envs, "num_workers": num_workers, "policy": policy is not None,
                "steps_per_second": rate, "emulator_steps_per_second": emulator_rate,
                "efficiency": rate / (cores * emulator_rate),
                "worker_rss_mb": [w.rss / 2**20 for w in workers], "worker_uss_mb": [w.uss / 2**20 for w in workers],
                **{f"{name}_steps_per_second": control_rate for name, control_rate in rates.items()}})
    env.close()

    # (4) The learner at the default batch 2,048 and minibatch 256, 4 epochs.
    results["learner_ppo_samples_per_second"], results["learner_bare_samples_per_second"] = \
        learner_samples_per_second(2048, 256, 4)

    # (5) The whole trainer at its defaults, and the bound that (3) and (4) set for it.
    trainer = trainer_run(2048 * (3 if options.quick else 6))
    results["trainer"] = trainer
    default_backend, _, _ = ppo_pokemon.choose_vectorization(ppo_pokemon.Args(), 4, cores)
    collect = max(run["steps_per_second"] for run in results["vector"]
                  if run["backend"] == default_backend and run["num_envs"] == 4 and run["policy"])
    seconds_per_step = 1 / collect + 4 / results["learner_ppo_samples_per_second"]
    results["trainer_bound_steps_per_second"] = 1 / seconds_per_step
    results["trainer_of_bound"] = trainer["steps_per_second"] * seconds_per_step

    # (6) Memory: per multiprocessing worker (each holds its envs), and this whole process with one env.
    results["env_rss_mb_in_process"] = rss_before / 2**20

    os.makedirs(os.path.dirname(options.json), exist_ok=True)
    with open(options.json, "w") as f:
        json.dump(results, f, indent=2)
    print(report(results, default_backend))


def report(results: dict, default_backend: str) -> str:
    m = results["machine"]
    out = [f"`{results['command']}` on {m['physical_cores']} physical / {m['logical_cores']} logical cores "
           f"({m['cpu']}), GPU: {m['gpu']}; Python {m['python']}, PyBoy {m['pyboy']}, PufferLib "
           f"{m['pufferlib']}, torch {m['torch']}, numpy {m['numpy']}, gymnasium {m['gymnasium']}.", ""]
    emulator = results["emulator_steps_per_second"]
    out.append(table(["stage", "steps/s", "ratio", "target"], [
        ["(1) emulator alone (24 frames, 1 render)", f"{emulator:,.0f}", "1.00", ""],
        ["(2) one env.step", f"{results['env_steps_per_second']:,.0f}",
         f"overhead {results['env_overhead']:+.1%}", "overhead <= 10%"],
    ]))
    out.append("")
    rows = []
    for run in results["vector"]:
        workers = run["num_workers"] or "-"
        memory = (f"{max(run['worker_uss_mb']):.0f} / {max(run['worker_rss_mb']):.0f}"
                  if run["worker_rss_mb"] else "-")
        rows.append([run["backend"] + (" (default)" if run["backend"] == default_backend else ""), run["num_envs"],
                     workers, "policy" if run["policy"] else "random", f"{run['steps_per_second']:,.0f}",
                     f"{run['efficiency']:.0%}", memory])
    out.append("(3) vectorised collection; efficiency = steps/s / (physical cores x the emulator's steps/s, "
               "timed in windows alternating with this configuration's); target >= 85% for the default backend "
               "with random actions")
    out.append("")
    out.append(table(["backend", "envs", "workers", "actions", "steps/s", "efficiency",
                     "worker USS / RSS MB (target USS <= 150)"], rows))
    out.append("")
    rows = []
    for run in results["vector"]:
        if "lockstep_emulator_steps_per_second" not in run:
            continue
        capacity = m["physical_cores"] * run["emulator_steps_per_second"]
        cells = [run["free_emulator_steps_per_second"], run["lockstep_emulator_steps_per_second"],
                 run["lockstep_env_steps_per_second"], run["steps_per_second"]]
        rows.append([run["num_envs"], run["num_workers"], *(f"{rate:,.0f} ({rate / capacity:.0%})" for rate in cells),
                     f"{run['steps_per_second'] / run['lockstep_emulator_steps_per_second']:.0%}"])
    out.append("(3) controls, timed in the same windows as the default backend with random actions: the same "
               "workers stepping bare emulators free-running (one wait per window: what a backend that never waits "
               "for the slowest worker could reach) and in lockstep (what any synchronous backend can reach here), "
               "and our env in lockstep without PufferLib; steps/s (efficiency)")
    out.append("")
    out.append(table(["envs", "workers", "bare emulators free-running", "bare emulators in lockstep",
                      "our env in lockstep",
                      f"{default_backend} (default)", "default of emulators in lockstep"], rows))
    out.append("")
    ppo, bare = results["learner_ppo_samples_per_second"], results["learner_bare_samples_per_second"]
    trainer = results["trainer"]
    out.append(table(["stage", "figure", "ratio", "target"], [
        ["(4) PPO update, batch 2048, minibatch 256", f"{ppo:,.0f} samples/s", f"{ppo / bare:.2f}x the bare loop",
         ">= 1.3x"],
        ["(4) bare forward/backward/step loop (default layout, fp32)", f"{bare:,.0f} samples/s", "", ""],
        ["(5) trainer at defaults", f"{trainer['steps_per_second']:,.0f} steps/s",
         f"{results['trainer_of_bound']:.0%} of bound {results['trainer_bound_steps_per_second']:,.0f}", ">= 80%"],
        ["(5) rollout / update per 2048-step batch", f"{trainer['rollout_seconds']:.1f} s / "
         f"{trainer['update_seconds']:.1f} s", "", ""],
        ["(6) trainer process peak RSS", f"{trainer['peak_rss_mb']:,.0f} MB", "", ""],
        ["(6) benchmark process RSS (torch loaded, one env)", f"{results['env_rss_mb_in_process']:,.0f} MB", "", ""],
    ]))
    out.append("")
    out.append(f"(5) ran `{trainer['command']}`.")
    return "\n".join(out)


if __name__ == "__main__":
    main()
