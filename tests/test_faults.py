"""Faults must never hang a run or lose work: a dead worker, SIGTERM, a second Ctrl-C, an exception in
the main process, non-finite numbers, a failed save, unwritable folders, stale temporary files.

Each test runs the real trainer in a subprocess on the stand-in cartridge. Failures are injected by a
small driver (processes.patched_script) that patches a library function and then runs ppo_pokemon.py.
"""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from processes import Started, children_in, patched_script, processes_in, signal_inside_the_tick
from test_ppo_train import STANDIN_ROM, TINY, TRAINER, assert_one_line_error, checkpoints

pytestmark = pytest.mark.slow

LONG = [*TINY, "--total-timesteps", "1000000", "--save-interval", "1000"]  # runs until something happens
WORKERS = ["--vec-backend", "multiprocessing", "--num-workers", "2"]  # the default on 2 cores, asked for


def start(cwd, *extra, patch=None) -> Started:
    """The trainer in a session of its own (so a test can signal it as a terminal would)."""
    program = [str(patched_script(cwd, TRAINER, patch))] if patch else [TRAINER]
    return Started([sys.executable, *program, "--rom-path", str(STANDIN_ROM), *extra], cwd)


def test_an_exception_in_the_main_process_stops_the_workers(tmp_path):
    patch = """
        import torch.nn.utils
        def broken(*args, **kwargs):
            raise RuntimeError("injected bug")
        torch.nn.utils.clip_grad_norm_ = broken
    """
    process = start(tmp_path, *LONG, *WORKERS, patch=patch)
    stdout, stderr = process.finish(timeout=60)
    assert process.returncode == 1, stdout + stderr
    assert "Traceback" in stderr and "injected bug" in stderr  # a bug: its traceback is shown
    assert not processes_in(tmp_path)


def test_a_killed_worker_ends_the_run_in_one_line_with_a_checkpoint(tmp_path):
    process = start(tmp_path, *LONG, *WORKERS)
    process.wait_for_line("update 2/")
    victim = children_in(process.pid, tmp_path)[1]
    victim.kill()
    stdout, stderr = process.finish(timeout=60)
    assert process.returncode == 1, stdout + stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("ppo_pokemon.py: error: env worker 1 (pid") and "died (exit code -9)" in line
    assert f"pid {victim.pid}" in line and "--resume" in line
    (path,) = checkpoints(tmp_path)  # the last whole update, saved on the way out
    assert torch.load(path, weights_only=True)["update"] >= 2
    assert not processes_in(tmp_path)


def test_an_env_that_fails_in_a_worker_ends_the_run_in_one_line_with_a_checkpoint(tmp_path):
    patch = """
        import pokemon_env
        real_reset, real_step = pokemon_env.PokemonRedEnv.reset, pokemon_env.PokemonRedEnv.step
        def reset(self, *, seed=None, options=None):
            if seed is not None and not hasattr(self, "first_seed"):
                self.first_seed = seed  # env i of the run is first reset with seed 1 + i
            return real_reset(self, seed=seed, options=options)
        def step(self, action):
            self.stepped = getattr(self, "stepped", 0) + 1
            if getattr(self, "first_seed", None) == 2 and self.stepped == 100:  # env 1, in update 4
                raise RuntimeError("the emulator broke\\nsecond line of its message")
            return real_step(self, action)
        pokemon_env.PokemonRedEnv.reset, pokemon_env.PokemonRedEnv.step = reset, step
    """
    process = start(tmp_path, *LONG, *WORKERS, patch=patch)
    stdout, stderr = process.finish(timeout=120)
    assert process.returncode == 1, stdout + stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("ppo_pokemon.py: error: env worker 1 (pid") and "envs 1-1" in line, line
    assert "failed: RuntimeError: the emulator broke; last checkpoint " in line and "--resume" in line
    (path,) = checkpoints(tmp_path)
    assert torch.load(path, weights_only=True)["update"] == 3  # the last whole update
    assert not processes_in(tmp_path)


def test_sigterm_saves_the_last_whole_update_and_the_run_resumes_from_its_folder(tmp_path):
    process = start(tmp_path, *LONG)
    process.wait_for_line("update 2/")
    os.kill(process.pid, signal.SIGTERM)  # `timeout`, docker stop and batch schedulers send it to the trainer
    stdout, stderr = process.finish(timeout=60)
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


def test_ctrl_c_to_the_process_group_with_workers_saves_and_leaves_no_process(tmp_path):
    """As a terminal's Ctrl-C: the trainer and its 2 env workers get the signal."""
    process = start(tmp_path, *LONG, *WORKERS)
    process.wait_for_line("update 2/")
    process.signal_group(signal.SIGINT)
    stdout, stderr = process.finish(timeout=60)
    assert process.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr and "stopped at step" in stdout
    (path,) = checkpoints(tmp_path)
    assert torch.load(path, weights_only=True)["update"] >= 2
    assert not processes_in(tmp_path)


def test_sigterm_to_the_process_group_during_evaluation_saves_and_leaves_no_process(tmp_path):
    """One update, saved, then an evaluation far too long to finish: the signal must stop it."""
    process = start(tmp_path, *TINY, *WORKERS, "--total-timesteps", "64", "--eval-interval", "1",
                    "--eval-max-steps", "1000000")
    process.wait_for_line("update 1/1")
    deadline = time.monotonic() + 60
    while not checkpoints(tmp_path):  # saved just before the evaluation starts
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.05)
    time.sleep(0.5)  # well into the evaluation's million steps
    process.signal_group(signal.SIGTERM)
    stdout, stderr = process.finish(timeout=60)
    assert process.returncode == 143, stdout + stderr
    assert "stopped at step 64" in stdout and "eval after update" not in stdout
    assert stdout.count("SIGTERM: stopping") == 1  # the main process's: a worker does not run its handler
    (path,) = checkpoints(tmp_path)
    assert torch.load(path, weights_only=True)["update"] == 1
    assert not processes_in(tmp_path)


def test_a_signal_handled_inside_the_emulators_tick_still_stops_the_run_with_a_checkpoint(tmp_path):
    """A stop that the signal handler raised would be lost inside PyBoy's tick (see signal_inside_the_tick)."""
    patch = signal_inside_the_tick(signal.SIGTERM, when="glob.glob('checkpoints/*/*.pt')")
    process = start(tmp_path, *LONG, "--save-interval", "1", "--eval-episodes", "0", patch=patch)
    stdout, stderr = process.finish(timeout=60)
    assert "signal from inside the tick" in stderr, stdout + stderr
    assert process.returncode == 143 and "Traceback" not in stderr, stdout + stderr
    assert "stopped at step 64;" in stdout
    (path,) = checkpoints(tmp_path)
    assert torch.load(path, weights_only=True)["update"] == 1


def test_a_second_ctrl_c_aborts_the_save_at_once_and_leaves_no_partial_file(tmp_path):
    patch = """
        import time, torch
        real_save = torch.save
        def slow_save(*args, **kwargs):  # a slow disk: long enough for a second Ctrl-C
            print("saving slowly", flush=True)
            time.sleep(600)
            return real_save(*args, **kwargs)
        torch.save = slow_save
    """
    process = start(tmp_path, *LONG, patch=patch)
    process.wait_for_line("update 2/")
    process.signal_group(signal.SIGINT)
    process.wait_for_line("Ctrl-C: stopping to save")
    process.wait_for_line("saving slowly")  # the save of the last whole update has begun
    process.signal_group(signal.SIGINT)
    stdout, stderr = process.finish(timeout=60)  # not the save's ten minutes
    assert process.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr and "stopped at step" not in stdout
    assert checkpoints(tmp_path) == [] and not list((tmp_path / "checkpoints").glob("*/*.tmp*"))
    assert not processes_in(tmp_path)


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
    process = start(tmp_path, *LONG, "--save-interval", "1", patch=patch)
    stdout, stderr = process.finish(timeout=120)
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
    result = subprocess.run([sys.executable, TRAINER, "--rom-path", str(STANDIN_ROM), *TINY], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert_one_line_error(result, "cannot write to checkpoints/")
    assert ": Not a directory" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_stale_temporary_files_are_removed_when_a_run_starts_and_when_it_resumes(tmp_path):
    folder = tmp_path / "checkpoints" / "mine"
    folder.mkdir(parents=True)
    left_before = folder / "checkpoint_update000003.pt.tmp4194998"  # a killed earlier attempt's
    left_before.write_bytes(b"x" * 1000)
    result = subprocess.run([sys.executable, TRAINER, "--rom-path", str(STANDIN_ROM), *TINY, "--total-timesteps",
                             "64", "--run-name", "mine"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not left_before.exists()  # a fresh start of the name cleans up too
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
