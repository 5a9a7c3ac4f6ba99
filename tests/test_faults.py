"""Faults must never hang a run or lose work: a dead worker, SIGTERM, a second Ctrl-C, an exception in
the main process, non-finite numbers, a failed save, unwritable folders, stale temporary files.

Each test runs the real trainer in a subprocess on the stand-in cartridge. Failures are injected by a
small driver that patches a library function and then runs ppo_pokemon.py as __main__.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import torch

from test_ppo_train import STANDIN_ROM, TINY, TRAINER, assert_one_line_error, checkpoints

pytestmark = pytest.mark.slow

LONG = [*TINY, "--total-timesteps", "1000000", "--save-interval", "1000"]  # runs until something happens


def start(cwd, *extra, driver=None):
    """The trainer in a session of its own (so a test can signal it as a terminal would)."""
    program = [str(driver)] if driver else [TRAINER]
    return subprocess.Popen([sys.executable, *program, "--rom-path", str(STANDIN_ROM), *extra], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_line(process, prefix, timeout=90):
    deadline = time.time() + timeout
    for line in process.stdout:  # progress lines end in newlines when stdout is not a terminal
        if line.startswith(prefix):
            return line
        assert time.time() < deadline, f"no line starting {prefix!r} within {timeout} s"
    raise AssertionError(f"the trainer exited before printing {prefix!r}: {process.stderr.read()}")


def finish(process, timeout):
    """(stdout, stderr, seconds it took to exit); fails the test if it hangs."""
    start_time = time.time()
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"the trainer did not exit within {timeout} s") from None
    return stdout, stderr, time.time() - start_time


def env_workers(process):
    """The trainer's env worker processes (forked: they share its command line)."""
    trainer = psutil.Process(process.pid)
    return [child for child in trainer.children() if child.cmdline() == trainer.cmdline()]


def leftover_processes(cwd):
    """Processes still running from the test's folder (workers that outlived their trainer)."""
    time.sleep(0.5)
    found = []
    for process in psutil.process_iter(["pid", "cwd"]):
        try:
            if process.info["cwd"] == str(cwd) and process.pid != os.getpid():
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def driver(tmp_path, patch: str) -> Path:
    """A script that applies `patch`, then runs the trainer as `python ppo_pokemon.py` would."""
    path = tmp_path / "driver.py"
    path.write_text("\n".join([
        "import runpy, sys, warnings",
        "warnings.filterwarnings('ignore', message='The pynvml package is deprecated')  # as the trainer does",
        f"sys.path.insert(0, {str(Path(TRAINER).parent)!r})",
        textwrap.dedent(patch).strip(),
        f"sys.argv[0] = {TRAINER!r}",
        f"runpy.run_path({TRAINER!r}, run_name='__main__')",
    ]) + "\n")
    return path


def test_an_exception_in_the_main_process_stops_the_workers(tmp_path):
    patch = """
        import torch.nn.utils
        def broken(*args, **kwargs):
            raise RuntimeError("injected bug")
        torch.nn.utils.clip_grad_norm_ = broken
    """
    process = start(tmp_path, *LONG, "--vec-backend", "multiprocessing", "--num-workers", "2",
                    driver=driver(tmp_path, patch))
    stdout, stderr, seconds = finish(process, timeout=60)
    assert process.returncode == 1, stdout + stderr
    assert "Traceback" in stderr and "injected bug" in stderr  # a bug: its traceback is shown
    assert not leftover_processes(tmp_path)


def test_a_killed_worker_ends_the_run_in_one_line_with_a_checkpoint(tmp_path):
    process = start(tmp_path, *LONG, "--vec-backend", "multiprocessing", "--num-workers", "2")
    wait_for_line(process, "update 2/")
    victim = env_workers(process)[1]
    victim.kill()
    stdout, stderr, seconds = finish(process, timeout=30)
    assert seconds < 10
    assert process.returncode == 1, stdout + stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("ppo_pokemon.py: error: env worker 1 (pid") and "died (exit code -9)" in line
    assert f"pid {victim.pid}" in line and "--resume" in line
    (path,) = checkpoints(tmp_path)  # the last whole update, saved on the way out
    assert torch.load(path, weights_only=True)["update"] >= 2
    assert not leftover_processes(tmp_path)


def test_sigterm_saves_the_last_whole_update_and_the_run_resumes_from_its_folder(tmp_path):
    process = start(tmp_path, *LONG)
    wait_for_line(process, "update 2/")
    process.send_signal(signal.SIGTERM)  # `timeout`, docker stop and batch schedulers send it to the trainer
    stdout, stderr, seconds = finish(process, timeout=30)
    assert process.returncode == 143, stdout + stderr
    assert "SIGTERM" in stdout and "continue with: python ppo_pokemon.py --resume" in stdout
    (path,) = checkpoints(tmp_path)
    saved = torch.load(path, weights_only=True)
    assert saved["update"] >= 2 and saved["global_step"] == 64 * saved["update"]

    total = str(64 * (saved["update"] + 1))  # one update more, resumed from the run's folder
    result = subprocess.run([sys.executable, TRAINER, "--resume", str(path.parent), "--total-timesteps", total],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert torch.load(checkpoints(tmp_path)[-1], weights_only=True)["global_step"] == int(total)


def test_a_second_ctrl_c_aborts_at_once_and_leaves_whole_files(tmp_path):
    process = start(tmp_path, *LONG, "--save-interval", "1")
    wait_for_line(process, "update 2/")
    os.killpg(process.pid, signal.SIGINT)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr, seconds = finish(process, timeout=30)
    # 130 from our handler; or killed by the signal itself if it came while Python was shutting down
    assert process.returncode in (130, -signal.SIGINT) and seconds < 5, stdout + stderr
    for path in checkpoints(tmp_path):
        torch.load(path, weights_only=True)
    assert not list((tmp_path / "checkpoints").glob("*/*.tmp*"))
    assert not leftover_processes(tmp_path)


def test_a_failed_save_keeps_the_previous_checkpoint_and_no_temporary_file(tmp_path):
    patch = """
        import errno, torch
        real_save, saves = torch.save, []
        def save_on_a_full_disk(obj, f, *args, **kwargs):
            saves.append(1)
            if len(saves) == 2:  # the second checkpoint: part written, then the disk is full
                f.write(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_save(obj, f, *args, **kwargs)
        torch.save = save_on_a_full_disk
    """
    process = start(tmp_path, *LONG, "--save-interval", "1", driver=driver(tmp_path, patch))
    stdout, stderr, seconds = finish(process, timeout=120)
    assert process.returncode == 1, stdout + stderr
    (line,) = stderr.strip().splitlines()
    assert "cannot save" in line and "checkpoint_update000002.pt: No space left on device" in line
    (path,) = checkpoints(tmp_path)
    assert path.name == "checkpoint_update000001.pt" and torch.load(path, weights_only=True)["update"] == 1
    assert not list(path.parent.glob("*.tmp*"))


def test_non_finite_losses_stop_the_run_and_the_good_checkpoint_stays(tmp_path):
    result = subprocess.run([sys.executable, TRAINER, "--rom-path", str(STANDIN_ROM), *TINY, "--total-timesteps", "64"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    (good,) = checkpoints(tmp_path)
    before = good.read_bytes()
    # A reward so large that the returns overflow: accepted (finite), but the value loss is not.
    command = [sys.executable, TRAINER, "--resume", str(good), "--total-timesteps", "192", "--explore-reward", "1e308"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    # numpy 2 also warns of the overflow where the reward is stored as float32: a line, not a traceback
    *warnings, line = result.stderr.strip().splitlines()
    assert all(warning.startswith("ppo_pokemon.py: warning: overflow") for warning in warnings), result.stderr
    assert "update 2:" in line and "value loss" in line and "not finite" in line
    assert checkpoints(tmp_path) == [good] and good.read_bytes() == before


def test_an_unwritable_checkpoint_folder_is_refused_before_the_envs_start(tmp_path):
    (tmp_path / "checkpoints").write_text("a file where the folder should be")
    start_time = time.time()
    result = subprocess.run([sys.executable, TRAINER, "--rom-path", str(STANDIN_ROM), *TINY], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert_one_line_error(result, "cannot create checkpoints/")
    assert "checkpoints is a file" in result.stderr
    assert not (tmp_path / "runs").exists() and time.time() - start_time < 30


def test_stale_temporary_files_are_removed_when_a_run_resumes(tmp_path):
    result = subprocess.run([sys.executable, TRAINER, "--rom-path", str(STANDIN_ROM), *TINY, "--total-timesteps", "64"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    (good,) = checkpoints(tmp_path)
    dead = good.parent / "checkpoint_update000007.pt.tmp4194999"  # above Linux's largest pid: no such process
    alive = good.parent / f"checkpoint_update000008.pt.tmp{os.getpid()}"  # a save still being written
    dead.write_bytes(b"x" * 1000)
    alive.write_bytes(b"x" * 1000)
    result = subprocess.run([sys.executable, TRAINER, "--resume", str(good.parent), "--total-timesteps", "128"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not dead.exists() and alive.exists()
    assert [path.name for path in checkpoints(tmp_path)] == [good.name, "checkpoint_update000002.pt"]


def test_two_runs_started_together_get_folders_of_their_own(tmp_path):
    command = [sys.executable, TRAINER, "--rom-path", str(STANDIN_ROM), *TINY, "--total-timesteps", "64"]
    processes = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stdout + stderr
    assert len(list((tmp_path / "runs").iterdir())) == 2
    assert len(checkpoints(tmp_path)) == 2


def test_a_named_run_refuses_to_start_over_its_checkpoints_and_resume_auto_continues_it(tmp_path):
    named = [sys.executable, TRAINER, "--rom-path", str(STANDIN_ROM), *TINY, "--run-name", "mine"]
    result = subprocess.run([*named, "--resume", "auto", "--total-timesteps", "64"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)  # nothing to continue: a new run
    assert result.returncode == 0, result.stdout + result.stderr
    assert [path.parent.name for path in checkpoints(tmp_path)] == ["mine"]
    assert_one_line_error(subprocess.run([*named, "--total-timesteps", "128"], cwd=tmp_path, capture_output=True,
                                         text=True, timeout=60), "--resume auto --run-name mine")
    result = subprocess.run([*named, "--resume", "auto", "--total-timesteps", "128"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert torch.load(checkpoints(tmp_path)[-1], weights_only=True)["global_step"] == 128
    assert_one_line_error(subprocess.run([*named, "--resume", "auto", "--total-timesteps", "128"], cwd=tmp_path,
                                         capture_output=True, text=True, timeout=60), "the run is complete")
