"""sweep_pokemon.py: tiny sweeps of real trainers on the stand-in, in SQLite and on a real PostgreSQL server."""
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from processes import Started, processes_in
from test_distributed import free_port

import sweep_pokemon

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SWEEP = str(ROOT / "sweep_pokemon.py")
# Ten updates of 64 steps a trial; the learning rate held, so that a trial's value is its learning rate.
TRAINER_ARGS = ["--rom-path", str(ROOT / "roms" / "standin.gb"), "--num-envs", "2", "--total-timesteps", "640",
                "--max-steps", "40", "--eval-episodes", "0", "--vec-backend", "serial", "--torch-threads", "1",
                "--no-anneal-lr"]
ONLY_LEARNING_RATE = [*(f"{flag}=" for flag in sweep_pokemon.SPACE), "num-steps=32", "minibatch-size=32",
                      "learning-rate=0.0003,0.0002,0.0001"]
SWEEP_ARGS = ["--metric", "train/learning_rate", "--prune-after", "1", "--space", *ONLY_LEARNING_RATE]


def sweep(cwd, *extra, timeout=300):
    return subprocess.run([sys.executable, SWEEP, *extra, "--", *TRAINER_ARGS], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def study(storage: str, name: str = "pokemon") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def test_a_three_trial_sweep_prunes_the_trial_below_the_median(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    queued = optuna.create_study(study_name="pokemon", storage=storage, direction="maximize")
    for learning_rate in ("0.0003", "0.0001", "0.0002"):  # the second falls below the first at once
        queued.enqueue_trial({"learning-rate": learning_rate})
    result = sweep(tmp_path, "--trials", "3", "--storage", storage, *SWEEP_ARGS)
    assert result.returncode == 0, result.stdout + result.stderr
    trials = study(storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "PRUNED"]
    assert trials[0].value == pytest.approx(3e-4) and trials[1].params["learning-rate"] == "0.0001"
    assert "trial 1: pruned" in result.stdout and "study pokemon: 3 trials (1 complete, 2 pruned)" in result.stdout
    # The pruned trial's trainer was stopped by SIGTERM: it saved, and said so.
    log = (tmp_path / "sweeps" / "pokemon" / "trial0001_seed1.log").read_text()
    assert "SIGTERM: stopping to save" in log and "stopped at step" in log
    # The best trial as the command that trains with its settings, and the pictures
    (best,) = [line for line in result.stdout.splitlines() if line.startswith("    python ppo_pokemon.py")]
    assert best.startswith(f"    python ppo_pokemon.py {' '.join(TRAINER_ARGS)} --") and "--learning-rate 0.0003" in best
    for picture in ("history.png", "importance.png"):
        assert (tmp_path / "sweeps" / "pokemon" / picture).stat().st_size > 1000
    report = sweep(tmp_path, "--report", "--storage", storage)
    assert report.returncode == 0 and "trial 0: train/learning_rate 0.0003" in report.stdout


def test_a_killed_worker_fails_its_trial_and_the_same_command_goes_on(tmp_path):
    command = [sys.executable, SWEEP, "--trials", "2", "--heartbeat", "1", *SWEEP_ARGS, "--", *TRAINER_ARGS]
    worker = Started(command, tmp_path)
    worker.wait_for_line("trial 0:", timeout=120)
    time.sleep(3)  # its trainer under way
    os.kill(worker.pid, signal.SIGKILL)  # the worker alone: its trainer gets SIGTERM from the kernel (Linux)
    worker.finish(timeout=60)
    deadline = time.monotonic() + 60
    while processes_in(tmp_path, settle=0):
        assert time.monotonic() < deadline, "the killed worker's trainer outlived it"
        time.sleep(0.5)
    time.sleep(2.5)  # twice the heartbeat: the trial is stale
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    trials = study(f"sqlite:///{tmp_path / 'sweeps' / 'pokemon' / 'study.db'}").trials
    assert trials[0].state.name == "FAIL" and "COMPLETE" in [t.state.name for t in trials[1:]]


def test_an_unknown_flag_or_an_unusable_storage_is_refused_in_one_line(tmp_path):
    for extra, message in [(["--space", "learning_rate=1:2"], "--space: ppo_pokemon.py has no flag --learning_rate"),
                           (["--space", "gamma=0.9:x"], "--space gamma=0.9:x: give flag=low:high"),
                           (["--trials", "0"], "--trials"),
                           (["--storage", "nosuchdb://nowhere/x"], "--storage nosuchdb://nowhere/x:")]:
        result = sweep(tmp_path, *extra)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.splitlines() == [result.stderr.strip()] and message in result.stderr, result.stderr
        assert result.stderr.startswith("sweep_pokemon.py: error: ")
        assert "--storage" in extra or not (tmp_path / "sweeps").exists()  # a refused space leaves no folder


# ----- Several workers on one PostgreSQL server, as on several machines -----


@pytest.fixture
def postgres():
    """A PostgreSQL server of Debian's packages (.ci/run installs them), in a folder of its own, on loopback."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        pytest.skip("Debian's postgresql is not installed (apt-get install postgresql; .ci/run does)")
    bin_dir, data = versions[-1].parent, Path(tempfile.mkdtemp(prefix="pg_"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:  # the server refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
    subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True, timeout=120)
    for attempt in range(5):  # a port another process took in between: another
        port = free_port()
        started = subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-w", "-t", "60",
                                  "-l", str(data / "log"), "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
                                  "start"], capture_output=True, timeout=120)
        if started.returncode == 0:
            break
    assert started.returncode == 0, (data / "log").read_text()
    yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"],
                   capture_output=True, timeout=120)
    shutil.rmtree(data, ignore_errors=True)


def test_two_workers_on_one_postgresql_server_share_a_study(tmp_path, postgres):
    folders = [tmp_path / "machine0", tmp_path / "machine1"]
    command = [sys.executable, SWEEP, "--trials", "4", "--storage", postgres, "--study-name", "shared",
               "--metric", "train/learning_rate", "--space", *ONLY_LEARNING_RATE[:-1], "--", *TRAINER_ARGS]
    workers = []
    for folder in folders:
        folder.mkdir()
        workers.append(Started(command, folder))
    for worker in workers:
        stdout, stderr = worker.finish(timeout=600)
        assert worker.returncode == 0, stdout + stderr
    trials = study(postgres, "shared").trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) >= 4 and all(t.state.name == "COMPLETE" for t in trials)
    ran = [log.name for folder in folders for log in (folder / "sweeps" / "shared").glob("trial*.log")]
    assert sorted(ran) == sorted(f"trial{n:04d}_seed1.log" for n in numbers)  # every trial run once, by one worker
    assert all((folder / "sweeps" / "shared").glob("trial*.log") for folder in folders)  # both worked
