"""Subprocess runs of ppo_pokemon.py on the stand-in cartridge, with tiny budgets (as CleanRL tests)."""
import dataclasses
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from processes import Started
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import pokemon_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
STANDIN_ROM = ROOT / "roms" / "standin.gb"
TRAINER = str(ROOT / "ppo_pokemon.py")
# 2 envs x 32 steps = 64 steps an update, 3 updates; 40-step episodes end twice per env.
TINY = [
    "--num-envs", "2", "--num-steps", "32", "--minibatch-size", "32", "--total-timesteps", "192",
    "--max-steps", "40", "--save-interval", "2", "--eval-interval", "2", "--eval-episodes", "1",
    "--eval-max-steps", "20", "--heatmap-interval", "1", "--vec-backend", "serial", "--torch-threads", "1",
]  # fmt: skip


def readme_tags() -> dict:
    """{kind: tags} from the README's metrics table, its placeholders filled in: what a run must write."""
    table = (ROOT / "README.md").read_text().split("### Metrics (TensorBoard")[1].split("\n\n")[1]
    terms = [f.name.rsplit("_", 1)[0] for f in dataclasses.fields(pokemon_env.EnvSettings)
             if f.name.endswith(("_reward", "_penalty"))]
    tags = {"scalars": set(), "images": set(), "text": set()}
    stats = set()
    for row in table.splitlines()[2:]:
        names, meaning = row.strip("|").split("|")[:2]
        kind = "images" if "(image)" in names else "text" if "(text)" in names else "scalars"
        prefix = ""
        for name in re.findall(r"`([^`]+)`", names):
            prefix, name = (name.split("/", 1)[0] + "/", name) if "/" in name else (prefix, prefix + name)
            expanded = {name.replace("<term>", term) for term in terms} if "<term>" in name else {name}
            expanded = {tag.replace("<i>", str(i)) for tag in expanded for i in (0, 1)}  # two start states
            tags[kind] |= expanded
            if "end-of-episode stats" in meaning:
                stats.add(name.split("/", 1)[1])
    tags["scalars"] = {tag for tag in tags["scalars"] if tag != "eval/<stat>"} | {
        f"eval/{stat}" for stat in stats | {f"reward_{term}" for term in terms}}
    return tags


def train(cwd, *extra, timeout=120):
    command = [sys.executable, TRAINER, "--rom-path", str(STANDIN_ROM), *TINY, *extra]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def events(cwd) -> EventAccumulator:
    (run_dir,) = (Path(cwd) / "runs").iterdir()
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator, tag):
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def checkpoints(cwd):
    return sorted((Path(cwd) / "checkpoints").glob("*/checkpoint_update*.pt"))


def assert_one_line_error(result, text):
    assert result.returncode == 2, result.stderr
    # A warning may precede it (say, a stand-in cartridge rebuilt since the checkpoint was made).
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("ppo_pokemon.py: warning:")]
    assert len(lines) == 1 and lines[0].startswith("ppo_pokemon.py: error:"), result.stderr
    assert text in lines[0]


@pytest.fixture(scope="module")
def start_states(tmp_path_factory, start_state_file):
    """A folder of two start states: the bedroom's start, and two steps to the right of it."""
    folder = tmp_path_factory.mktemp("start_states")
    env = pokemon_env.PokemonRedEnv(rom_path=STANDIN_ROM, init_state=start_state_file)
    env.reset(seed=0)
    env.save_state(folder / "a.state")
    for _ in range(2):
        env.step(pokemon_env.ACTIONS.index("right"))
    env.save_state(folder / "b.state")
    env.close()
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory, start_states):
    """One tiny training run from two start states, shared by the tests that read what it wrote."""
    assert STANDIN_ROM.exists(), "roms/standin.gb is missing: run python roms/build_standin.py"
    cwd = tmp_path_factory.mktemp("train")
    result = train(cwd, "--init-state", str(start_states))
    assert result.returncode == 0, result.stdout + result.stderr
    return cwd, result


def test_run_writes_every_tag_of_the_readme_and_sane_episode_stats(run):
    cwd, result = run
    assert "update 3/3" in result.stdout and "done: 192 steps" in result.stdout
    accumulator = events(cwd)
    written = {"scalars": set(accumulator.Tags()["scalars"]), "images": set(accumulator.Tags()["images"]),
               "text": {tag.split("/")[0] for tag in accumulator.Tags()["tensors"]}}
    documented = readme_tags()
    assert len(documented["scalars"]) > 40 and documented["images"] and documented["text"]
    documented["scalars"] = {tag for tag in documented["scalars"] if not tag.startswith("swarm/")}  # test_swarm's
    for kind in documented:
        assert documented[kind] <= written[kind], (kind, documented[kind] - written[kind])
    standin_world = pokemon_env.render_world_map({}, 1, pokemon_env.load_world(pokemon_env.load_rom(STANDIN_ROM)))
    assert accumulator.Images("episode/world_map")[-1].width == standin_world.shape[1]  # not Red's world
    # The trainer received the env's end-of-episode infos (PufferLib passes them as a flat list).
    assert sum(value for _, value in scalars(accumulator, "episode/count")) == 4
    assert all(value == 40 for _, value in scalars(accumulator, "episode/mean_length"))
    assert all(value >= 1 for _, value in scalars(accumulator, "episode/unique_tiles"))
    assert all(value == 20 for _, value in scalars(accumulator, "eval/mean_length"))
    steps = [step for step, _ in scalars(accumulator, "train/policy_loss")]
    assert steps == [64, 128, 192]
    # Linear annealing from 2.5e-4 over the 192 steps, set at the start of each update.
    lrs = [value for _, value in scalars(accumulator, "train/learning_rate")]
    assert lrs == pytest.approx([2.5e-4, 2.5e-4 * 2 / 3, 2.5e-4 / 3], rel=1e-5)
    assert all(0 <= value <= 1 for _, value in scalars(accumulator, "train/clipfrac"))


def test_run_writes_loadable_checkpoints(run):
    cwd, _ = run
    names = [path.name for path in checkpoints(cwd)]
    assert names == ["checkpoint_update000002.pt", "checkpoint_update000003.pt"]
    checkpoint = torch.load(checkpoints(cwd)[-1], weights_only=True)
    assert checkpoint["global_step"] == 192 and checkpoint["update"] == 3
    assert checkpoint["obs_shape"] == [4, 84, 84] and checkpoint["num_actions"] == 8
    assert checkpoint["rom_sha1"] == hashlib.sha1(STANDIN_ROM.read_bytes()).hexdigest()
    assert checkpoint["args"]["max_steps"] == 40 and checkpoint["args"]["num_envs"] == 2
    env_names = [field.name for field in dataclasses.fields(pokemon_env.EnvSettings)]
    assert set(env_names) <= set(checkpoint["args"]) and "env_kwargs" not in checkpoint  # every setting, once
    assert {"model", "optimizer", "rng", "run_name"} <= set(checkpoint)
    from ppo_pokemon import Agent

    agent = Agent(tuple(checkpoint["obs_shape"]), checkpoint["num_actions"])
    agent.load_state_dict(checkpoint["model"])


def test_resume_continues_global_step_schedule_and_curves(run, start_states, tmp_path):
    cwd, _ = run
    shutil.copytree(cwd / "runs", tmp_path / "runs")
    shutil.copytree(cwd / "checkpoints", tmp_path / "checkpoints")
    first_update2, first_update3 = checkpoints(tmp_path)
    original = torch.load(first_update3, weights_only=True)
    first_update3.unlink()

    result = subprocess.run([sys.executable, TRAINER, "--resume", str(first_update2)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)  # settings come from the checkpoint
    assert result.returncode == 0, result.stdout + result.stderr
    assert "update 3/3" in result.stdout and "update 1/" not in result.stdout
    resumed = torch.load(first_update3, weights_only=True)
    assert resumed["global_step"] == 192 and resumed["update"] == 3
    assert resumed["run_name"] == original["run_name"]
    lr = resumed["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(original["optimizer"]["param_groups"][0]["lr"])
    before = torch.load(first_update2, weights_only=True)["optimizer"]["state"][0]["step"]
    assert resumed["optimizer"]["state"][0]["step"] > before  # Adam's state was carried on
    # One curve, continued: the events after the checkpoint's step were purged and rewritten.
    lrs = scalars(events(tmp_path), "train/learning_rate")
    assert [step for step, _ in lrs] == [64, 128, 192]
    assert lrs[-1][1] == pytest.approx(2.5e-4 / 3, rel=1e-5)

    # A flag given again overrides the checkpoint's setting: extend the run by one update. Meanwhile the
    # start states' folder has gained a file that sorts first, and the ROM has changed (its global
    # checksum, which nothing checks): the run keeps its recorded files, in their order, and warns.
    recorded = original["args"]["init_state"]
    assert recorded == [str(start_states / "a.state"), str(start_states / "b.state")]
    shutil.copy(start_states / "b.state", start_states / "0.state")
    rom = bytearray(STANDIN_ROM.read_bytes())
    rom[0x14E] ^= 0xFF
    (tmp_path / "changed.gb").write_bytes(bytes(rom))
    command = [sys.executable, TRAINER, "--resume", str(first_update3), "--total-timesteps", "256",
               "--rom-path", "changed.gb"]
    try:
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    finally:
        (start_states / "0.state").unlink()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "ppo_pokemon.py: warning: changed.gb is not the ROM this checkpoint was trained on"]
    extended = torch.load(checkpoints(tmp_path)[-1], weights_only=True)
    assert extended["global_step"] == 256 and extended["update"] == 4
    assert extended["args"]["init_state"] == recorded


def test_target_kl_ends_an_update_after_its_first_epoch_and_no_anneal_lr_keeps_the_rate(tmp_path):
    """Both PPO options in one run: Adam's step count shows how many minibatches each update took."""
    result = train(tmp_path, "--update-epochs", "4", "--target-kl", "1e-9", "--no-anneal-lr", "--eval-episodes", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    accumulator = events(tmp_path)
    assert [value for _, value in scalars(accumulator, "train/learning_rate")] == pytest.approx([2.5e-4] * 3)
    assert all(value > 1e-9 for _, value in scalars(accumulator, "train/approx_kl"))
    saved = torch.load(checkpoints(tmp_path)[-1], weights_only=True)
    # 3 updates of 2 minibatches (64 steps or 62 without reset steps, 32 a minibatch): one epoch each.
    assert saved["optimizer"]["state"][0]["step"] == 3 * 2
    assert saved["optimizer"]["param_groups"][0]["lr"] == 2.5e-4


def test_ctrl_c_saves_a_loadable_checkpoint(tmp_path, standin_rom):
    command = [sys.executable, TRAINER, "--rom-path", str(standin_rom), *TINY, "--total-timesteps", "100000"]
    process = Started(command, tmp_path)
    process.wait_for_line("update 1/")  # progress lines end in newlines when stdout is not a terminal
    process.signal_group(signal.SIGINT)  # as a terminal's Ctrl-C does: to the whole process group
    stdout, stderr = process.finish(timeout=60)
    assert process.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr and "--resume" in stdout
    (path,) = checkpoints(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["update"] >= 1 and checkpoint["global_step"] == 64 * checkpoint["update"]
    assert not list(path.parent.glob("*.tmp*"))


def test_unusable_checkpoints_are_refused_in_one_line(run, tmp_path):
    """Junk, foreign and missing files are covered in-process (test_ppo.py); here the whole script."""
    cwd, _ = run
    good = checkpoints(cwd)[0]
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # a kill mid-copy
    result = subprocess.run([sys.executable, TRAINER, "--resume", str(tmp_path / "cut.pt")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert_one_line_error(result, "cannot read checkpoint")
    rom = bytearray(STANDIN_ROM.read_bytes())
    rom[0x14E] ^= 0xFF  # the global checksum, which nothing checks: another ROM, and a warning before the error
    (tmp_path / "changed.gb").write_bytes(bytes(rom))
    command = [sys.executable, TRAINER, "--resume", str(good), "--frame-stack", "2", "--rom-path", "changed.gb"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert_one_line_error(result, "checkpoint observations are (4, 84, 84), this env gives (2, 84, 84)")
    assert result.stderr.startswith("ppo_pokemon.py: warning: changed.gb is not the ROM this checkpoint")


def test_bad_arguments_are_refused_in_one_line(tmp_path):
    """Every refusal is checked in-process (test_ppo.py); here that the script prints one line."""
    assert_one_line_error(train(tmp_path, "--minibatch-size", "100"), "--minibatch-size")
    not_a_rom = tmp_path / "empty.gb"
    not_a_rom.write_bytes(b"")
    result = subprocess.run([sys.executable, TRAINER, "--rom-path", str(not_a_rom)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert_one_line_error(result, "is not a Game Boy ROM")  # the environment's own error, passed on
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_multiprocessing_backend_delivers_episode_infos(tmp_path):
    """PufferLib's Multiprocessing passes infos through pipes from its workers: they must arrive too."""
    result = train(tmp_path, "--vec-backend", "multiprocessing", "--num-workers", "1", "--total-timesteps", "128",
                   "--eval-episodes", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 envs (multiprocessing, 1 worker)" in result.stdout
    accumulator = events(tmp_path)
    assert scalars(accumulator, "episode/count") == [(128, 2.0)]  # both envs' 40-step episodes ended
    assert scalars(accumulator, "episode/mean_length") == [(128, 40.0)]
    assert "episode/exploration_heatmap" in accumulator.Tags()["images"]


def test_an_unknown_rom_warns_once_in_one_line(tmp_path):
    rom = bytearray(STANDIN_ROM.read_bytes())
    rom[0x134:0x13B] = b"UNKNOWN"  # another title, with the header checksum to match
    rom[0x14D] = -sum(byte + 1 for byte in rom[0x134:0x14D]) & 0xFF
    (tmp_path / "unknown.gb").write_bytes(bytes(rom))
    command = [sys.executable, TRAINER, *TINY, "--rom-path", "unknown.gb", "--total-timesteps", "64",
               "--vec-backend", "multiprocessing", "--num-workers", "2"]  # workers make envs too
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("ppo_pokemon.py: warning: unknown.gb ('UNKNOWN'") and "not Pokemon Red or Blue" in line


def test_the_readmes_first_run_draws_curves_a_person_can_read(tmp_path):
    """The README's first training command, shortened to 4 updates: an episode point nearly every
    update, an evaluation and the maps after the 4th, and the start line says how the total was rounded."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## First run, without the ROM")[1].split("```bash")[1].split("```")[0]
    command = block.split("\\\n")  # the first command spans two lines
    first = " ".join(part.split("#")[0].strip() for part in command[:2]).split()
    assert first[:2] == ["python", "ppo_pokemon.py"]
    (tmp_path / "roms").mkdir()
    shutil.copy(STANDIN_ROM, tmp_path / "roms" / "standin.gb")
    result = subprocess.run([sys.executable, TRAINER, *first[2:], "--total-timesteps", "9000"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 updates of 2,048 steps = 8,192 steps (--total-timesteps 9,000 rounded down" in result.stdout
    accumulator = events(tmp_path)
    # An episode takes 513 rollout steps (the reset step is one), so one update in 512 ends none.
    assert [step for step, _ in scalars(accumulator, "episode/mean_reward")] == [2048, 6144, 8192]
    assert [step for step, _ in scalars(accumulator, "eval/mean_reward")] == [8192]
    assert [event.step for event in accumulator.Images("episode/world_map")] == [8192]


def test_the_two_group_rollout_stays_on_policy(tmp_path):
    """Two env groups take turns with the policy; every stored action, log-probability and observation
    must still belong together. With one epoch of one minibatch the update sees exactly the rollout's
    policy, so its ratios are 1: KL 0, nothing clipped. A stored observation or log-probability from
    the wrong env or step would show here."""
    result = train(tmp_path, "--num-envs", "4", "--vec-backend", "multiprocessing", "--num-workers", "2",
                   "--num-steps", "32", "--minibatch-size", "128", "--update-epochs", "1", "--total-timesteps", "384",
                   "--eval-episodes", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 envs (multiprocessing, 2 workers in 2 groups)" in result.stdout
    accumulator = events(tmp_path)
    for tag in ("train/approx_kl", "train/old_approx_kl", "train/clipfrac"):
        values = [value for _, value in scalars(accumulator, tag)]
        assert len(values) == 3 and max(abs(value) for value in values) < 1e-5, (tag, values)
