"""Tune ppo_pokemon.py's hyperparameters with Optuna: every trial trains, in a subprocess, with sampled flags.

    python sweep_pokemon.py --trials 20 -- --rom-path roms/standin.gb --total-timesteps 300000
    python sweep_pokemon.py --trials 40 --storage postgresql://user@host/pokemon -- ...   # on every machine
    python sweep_pokemon.py --report                                                     # the best, and pictures

The flags after `--` go to every trial's ppo_pokemon.py, the sampled ones after them (they win). A trial's value
is the mean over its --seeds of the mean of --metric's last --last-values points (higher is better). While the
first seed's run trains, its --metric points are reported to Optuna as they are logged, and a trial that falls
below the median of the others at the same point (MedianPruner) is pruned: its trainer gets SIGTERM, which saves
and ends it cleanly. A trainer that fails (any exit status but 0) fails its trial, and the sweep goes on.

The study lives in --storage: by default a SQLite file, sweeps/<study-name>/study.db; with a PostgreSQL URL,
workers on several machines share one study, each running the same command (--trials counts the study's
trials, whoever runs them). Stopping a sweep and running the same command again continues the study; a trial
whose worker was killed is marked failed once its heartbeat is --heartbeat x 2 seconds old. Each trial's runs
go under sweeps/<study-name>/ (runs/, checkpoints/ keeping --keep-checkpoints each, and the trainers' logs).
At the end, and with --report, it prints the best trials as the ppo_pokemon.py commands that train with their
settings, and draws history.png (each trial's value, and the best so far) and importance.png (each flag's
importance, by Optuna's fANOVA) in the study's folder.

Exit status: 0 done; 2 refused (bad arguments, an unknown flag in the space, an unusable storage: one line on
stderr, prefixed "sweep_pokemon.py: error:"); 130 stopped by Ctrl-C, 143 by SIGTERM.
"""
import dataclasses
import math
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

# Import-time notices from dependencies, not for our users: keep stderr for our own messages.
warnings.filterwarnings("ignore", message="The pynvml package is deprecated")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import sqlalchemy  # noqa: E402
import tyro  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

import pokemon_env  # noqa: E402

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the heartbeat's
ROOT = Path(__file__).resolve().parent
TRAINER = ROOT / "ppo_pokemon.py"

# The search space: a flag of ppo_pokemon.py and its range (low, high, whether on a log scale), or its choices.
# Integer flags are sampled as integers. Pokemon Red's anchors train with a discount near 0.998 and far larger
# batches than CleanRL's Atari settings: the ranges reach there. Override with --space flag=... (see Args).
SPACE = {
    "learning-rate": (1e-5, 1e-3, True),
    "gamma": (0.98, 0.999, False),
    "gae-lambda": (0.9, 0.99, False),
    "ent-coef": (1e-4, 0.05, True),
    "clip-coef": (0.1, 0.3, False),
    "update-epochs": (1, 8, False),
    "num-steps": ("256", "512", "1024"),  # steps per env per rollout: with --num-envs, the batch
    "minibatch-size": ("128", "256", "512"),  # divides every batch above for a power-of-two --num-envs
    "explore-reward": (0.001, 0.05, True),
    "event-reward": (0.4, 4.0, True),
}
POLL_SECONDS = 1  # how often a running trial's TensorBoard events are read


@dataclasses.dataclass
class Args:
    trials: int = 20
    """trials in the study, whoever runs them: a sweep stops when the study has this many finished"""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [1])
    """seeds each trial trains with (--seed of the trainer); its value is the mean over them"""
    study_name: str = "pokemon"
    """the study's name in the storage; its runs go to sweeps/<study-name>/"""
    storage: Optional[str] = None
    """an Optuna storage URL (postgresql://user@host/db for several machines); None: a SQLite file in the study's folder"""
    metric: str = "episode/event_flags"
    """the trainer's TensorBoard tag that judges a trial (higher is better); not a return, which the swept reward
    weights would scale: the story's event flags of the training episodes (free: no evaluation needed)"""
    last_values: int = 3
    """a run's value: the mean of the metric's last this many points"""
    space: list[str] = dataclasses.field(default_factory=list)
    """changes to SPACE: flag=low:high, flag=low:high:log, flag=a,b,c (choices) or flag=a (fixed); flag= leaves it out"""
    prune_after: int = 2
    """points of the metric a trial reports before it can be pruned (and trials finished before any is)"""
    keep_checkpoints: int = 1
    """checkpoints each run keeps (the trainer's --keep-checkpoints)"""
    heartbeat: int = 60
    """seconds between a running trial's heartbeats; a trial silent for twice this is marked failed"""
    report: bool = False
    """only print the best trials and draw the pictures"""


class TrainingFailed(Exception):
    """A trial's trainer ended with an error: the trial fails, the sweep goes on."""


def fail(message: str):
    print(f"sweep_pokemon.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def trainer_flags() -> dict:
    """{flag: type} of every ppo_pokemon.py option that takes a number or a word, read from its Args."""
    import ppo_pokemon  # torch and all: only to know the flags

    fields = [*dataclasses.fields(ppo_pokemon.Args), *dataclasses.fields(pokemon_env.EnvSettings)]
    return {field.name.replace("_", "-"): type(field.default) for field in fields if field.name != "env"}


def search_space(changes: list[str], flags: dict) -> dict:
    """SPACE with --space's changes, every flag checked against the trainer's. Raises ValueError in one line."""
    space = dict(SPACE)
    for change in changes:
        flag, _, spec = change.partition("=")
        if not spec:
            space.pop(flag, None)
        elif ":" not in spec:
            space[flag] = tuple(spec.split(","))  # choices, or one value
        else:
            try:
                low, high, *log = spec.split(":")
                space[flag] = (float(low), float(high), log == ["log"])
            except ValueError:
                raise ValueError(f"--space {change}: give flag=low:high, flag=low:high:log or flag=a,b,c") from None
    for flag, spec in space.items():
        if flag not in flags:
            raise ValueError(f"--space: ppo_pokemon.py has no flag --{flag}")
        if not isinstance(spec[0], str) and not (spec[0] < spec[1] and (spec[0] > 0 or not spec[2])):
            raise ValueError(f"--space: --{flag} needs low < high (and low > 0 on a log scale), got {spec}")
    return space


def open_storage(url: str, heartbeat: int) -> optuna.storages.RDBStorage:
    """Optuna's storage at `url`. Workers that start together on a new database all create its tables, and all
    but one of them collide: those try again, and find the tables made."""
    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == 3:
                raise
            time.sleep(0.5 + random.random())


def sample(trial: optuna.Trial, space: dict, flags: dict) -> list[str]:
    """The trial's flags, as ppo_pokemon.py takes them."""
    argv = []
    for flag, spec in space.items():
        if isinstance(spec[0], str):
            value = trial.suggest_categorical(flag, list(spec))
        elif flags[flag] is int:
            value = trial.suggest_int(flag, int(spec[0]), int(spec[1]), log=spec[2])
        else:
            value = trial.suggest_float(flag, spec[0], spec[1], log=spec[2])
        argv += [f"--{flag}", as_flag(value)]
    return argv


def as_flag(value) -> str:
    """A sampled value as the trainer gets it, and the report shows it: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class MetricPoints:
    """A run's points of the metric so far, from its TensorBoard events: each read parses only what is new."""

    def __init__(self, run_dir: Path, metric: str):
        self.run_dir, self.metric, self.events = run_dir, metric, None

    def read(self) -> list[float]:
        if self.events is None and self.run_dir.is_dir():  # made by the trainer when it starts
            self.events = EventAccumulator(str(self.run_dir), size_guidance={"scalars": 0, "images": 1})
        if self.events is None:
            return []
        self.events.Reload()
        found = self.metric in self.events.Tags()["scalars"]
        return [event.value for event in self.events.Scalars(self.metric)] if found else []


def ends_with_this_process():
    """In a trainer's process, before it runs: SIGTERM (it saves and stops) when this sweep dies, on Linux."""
    if PRCTL is not None:
        PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


if sys.platform.startswith("linux"):
    import ctypes

    PRCTL = ctypes.CDLL(None).prctl  # found before any fork: the child only calls it
else:
    PRCTL = None


def train(trial: optuna.Trial, seed: int, command: list, folder: Path, args: Args, reports: bool) -> float:
    """One run of the trial; its value. Reports the metric's points to Optuna when `reports`, and prunes."""
    run_name = f"trial{trial.number:04d}_seed{seed}"
    metric = MetricPoints(folder / "runs" / run_name, args.metric)
    argv = [*command, "--seed", str(seed), "--run-name", run_name, "--resume", "auto",
            "--keep-checkpoints", str(args.keep_checkpoints)]
    with open(folder / f"{run_name}.log", "w") as log:
        process = subprocess.Popen([sys.executable, str(TRAINER), *argv], cwd=folder, stdout=log,
                                   stderr=subprocess.STDOUT, preexec_fn=ends_with_this_process)
        try:
            reported = 0
            while process.poll() is None:
                time.sleep(POLL_SECONDS)
                points = metric.read() if reports else []
                for point in range(reported, len(points)):
                    trial.report(float(np.mean(points[max(0, point + 1 - args.last_values) : point + 1])), point)
                reported = len(points)
                if trial.should_prune():
                    process.send_signal(signal.SIGTERM)  # the trainer saves and ends
                    process.wait(timeout=600)
                    raise optuna.TrialPruned()
        finally:
            if process.poll() is None:  # this sweep is stopping (Ctrl-C reaches the trainer too) or failing
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=600)
    points = metric.read()
    if process.returncode != 0:
        lines = (folder / f"{run_name}.log").read_text().strip().splitlines() or ["no output"]
        why = next((line for line in reversed(lines) if "error:" in line), lines[-1])
        raise TrainingFailed(f"seed {seed}: exit status {process.returncode}: {why[:300]}")
    if not points:
        raise TrainingFailed(f"seed {seed}: its run logged no {args.metric} (see {folder / run_name}.log)")
    return float(np.mean(points[-args.last_values :]))


def draw_history(study: optuna.Study, path: Path):
    """Each finished trial's value by trial number (pruned ones at their last report, grey), the best so far."""
    trials = [t for t in study.trials if t.value is not None or t.intermediate_values]
    values = [t.value if t.value is not None else list(t.intermediate_values.values())[-1] for t in trials]
    image = np.full((360, 640, 3), 255, np.uint8)
    if values:
        low, high = min(values), max(values) + 1e-9
        place = lambda n, v: (40 + int(560 * n / max(1, trials[-1].number)), 320 - int(280 * (v - low) / (high - low)))  # noqa: E731
        best = []  # the best value so far: a step line from the first complete trial to the last trial
        for trial, value in zip(trials, values):
            complete = trial.state == optuna.trial.TrialState.COMPLETE
            cv2.circle(image, place(trial.number, value), 4, (60, 90, 200) if complete else (170, 170, 170), -1)
            if complete and (not best or value > best[-1][1]):
                best += [(trial.number, best[-1][1])] if best else []
                best.append((trial.number, value))
        if best:
            best.append((trials[-1].number, best[-1][1]))
            cv2.polylines(image, [np.array([place(*point) for point in best], np.int32)], False, (40, 160, 40), 2)
        cv2.putText(image, f"{high:.3g}", (2, 44), cv2.FONT_HERSHEY_PLAIN, 0.9, (0, 0, 0), 1)
        cv2.putText(image, f"{low:.3g}", (2, 324), cv2.FONT_HERSHEY_PLAIN, 0.9, (0, 0, 0), 1)
        for number in (trials[0].number, trials[-1].number):
            cv2.putText(image, f"trial {number}", (place(number, low)[0] - 20, 348), cv2.FONT_HERSHEY_PLAIN, 0.9,
                        (0, 0, 0), 1)
    cv2.putText(image, f"{study.study_name}: each trial's value (grey: pruned), the best so far (green)",
                (10, 20), cv2.FONT_HERSHEY_PLAIN, 0.9, (0, 0, 0), 1)
    cv2.imwrite(str(path), image[..., ::-1])


def draw_importance(importances: dict, path: Path):
    """One bar per flag: its share of the value's variance (Optuna's fANOVA)."""
    image = np.full((40 + 26 * max(1, len(importances)), 640, 3), 255, np.uint8)
    cv2.putText(image, "importance of each flag for the value (fANOVA)", (10, 20), cv2.FONT_HERSHEY_PLAIN, 1.0, (0, 0, 0), 1)
    for row, (flag, share) in enumerate(importances.items()):
        top = 34 + 26 * row
        cv2.putText(image, f"--{flag}", (10, top + 16), cv2.FONT_HERSHEY_PLAIN, 1.0, (0, 0, 0), 1)
        cv2.rectangle(image, (200, top + 4), (200 + int(380 * share), top + 20), (60, 90, 200), -1)
        cv2.putText(image, f"{share:.2f}", (210 + int(380 * share), top + 16), cv2.FONT_HERSHEY_PLAIN, 1.0, (0, 0, 0), 1)
    cv2.imwrite(str(path), image[..., ::-1])


def report(study: optuna.Study, folder: Path, best: int = 5):
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    states = [t.state.name.lower() for t in study.trials]
    print(f"study {study.study_name}: {len(study.trials)} trials ("
          + ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) + ")")
    command = study.user_attrs.get("command", [])
    for trial in sorted(complete, key=lambda t: t.value, reverse=True)[:best]:
        flags = " ".join(f"--{flag} {as_flag(value)}" for flag, value in trial.params.items())
        print(f"trial {trial.number}: {study.user_attrs.get('metric')} {trial.value:.4g}\n"
              f"    python ppo_pokemon.py {' '.join(command)} {flags}".rstrip())
    draw_history(study, folder / "history.png")
    importances = optuna.importance.get_param_importances(study) if len(complete) > 1 else {}
    draw_importance(importances, folder / "importance.png")
    print(f"pictures: {folder / 'history.png'}, {folder / 'importance.png'}")


def stop(signum, frame):
    raise KeyboardInterrupt(signum)  # SIGTERM as Ctrl-C: the trial in progress fails, the study stays


def main():
    argv = sys.argv[1:]
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = tyro.cli(Args, args=argv[: argv.index("--")] if "--" in argv else argv)
    if min(args.trials, args.last_values, args.keep_checkpoints, args.heartbeat) < 1 or args.prune_after < 0:
        fail("--trials, --last-values, --keep-checkpoints and --heartbeat must be at least 1, --prune-after 0 or more")
    if not args.study_name.strip() or os.sep in args.study_name or args.study_name in "..":
        fail(f"--study-name must be a plain folder name (got {args.study_name!r})")
    folder = Path("sweeps") / args.study_name
    # The trainers run in the study's folder: paths given to them (--rom-path, --init-state) must still lead there.
    trainer_argv = [os.path.abspath(arg) if not arg.startswith("-") and os.path.exists(arg) else arg for arg in command]
    flags = trainer_flags()
    try:
        space = search_space(args.space, flags)
    except ValueError as e:
        fail(str(e))
    folder.mkdir(parents=True, exist_ok=True)  # once the space is sound: a refused one leaves nothing behind
    try:
        storage = open_storage(args.storage or f"sqlite:///{folder / 'study.db'}", args.heartbeat)
    except Exception as e:  # SQLAlchemy's or the database's: no such driver, server, database or user
        fail(f"--storage {args.storage}: {pokemon_env.first_line(e)[:300]}")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # what a trial did, we say ourselves, in one line
    pruner = optuna.pruners.MedianPruner(n_startup_trials=args.prune_after, n_warmup_steps=args.prune_after)
    study = optuna.create_study(study_name=args.study_name, storage=storage, direction="maximize", pruner=pruner,
                                load_if_exists=True)
    if args.report:
        return report(study, folder)
    study.set_user_attr("command", command)
    study.set_user_attr("metric", args.metric)

    def objective(trial: optuna.Trial) -> float:
        sampled = sample(trial, space, flags)
        print(f"trial {trial.number}: {' '.join(sampled)}", flush=True)
        try:
            values = [train(trial, seed, [*trainer_argv, *sampled], folder, args, reports=index == 0)
                      for index, seed in enumerate(args.seeds)]
        except TrainingFailed as e:
            print(f"trial {trial.number}: failed: {e}", flush=True)
            raise
        print(f"trial {trial.number}: {args.metric} {np.mean(values):.4g}", flush=True)
        return float(np.mean(values))

    def done(study, trial):  # --trials counts the study's finished trials, whoever ran them
        finished = [t for t in study.trials if t.state.is_finished()]
        if trial.state == optuna.trial.TrialState.PRUNED:
            print(f"trial {trial.number}: pruned", flush=True)
        if len(finished) >= args.trials:
            study.stop()

    signal.signal(signal.SIGTERM, stop)
    try:
        if len([t for t in study.trials if t.state.is_finished()]) < args.trials:
            study.optimize(objective, n_trials=args.trials, callbacks=[done], catch=(TrainingFailed,))
    except KeyboardInterrupt as interrupt:
        signum = interrupt.args[0] if interrupt.args else signal.SIGINT
        print(f"\n{'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'}: the sweep stops; run the same command to "
              f"continue it", flush=True)
        sys.exit(128 + signum)
    report(study, folder)


if __name__ == "__main__":
    main()
