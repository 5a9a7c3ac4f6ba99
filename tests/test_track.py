"""--track: the run in Weights & Biases, offline (WANDB_MODE=offline), read back from W&B's own record file."""
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from processes import Started
from test_ppo_train import STANDIN_ROM, TINY, TRAINER, assert_one_line_error, checkpoints

wandb_pb2 = pytest.importorskip("wandb.proto.wandb_internal_pb2")
pytestmark = pytest.mark.slow

OFFLINE = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def records(path: Path):
    """The records of a run-<id>.wandb file, parsed with W&B's protobuf definitions. The file is a LevelDB-style log
    (wandb-core writes it, `wandb sync` reads it): a 7-byte header, then 32 KiB blocks of records, each a 7-byte
    header (checksum, length, kind: 1 whole, 2 first, 3 middle, 4 last part) and its bytes."""
    data, position, parts = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header: padding
            position += 32768 - position % 32768
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        parts += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def offline_run(folder: Path) -> dict:
    """{id, name, config, history: {tag: [global_step, ...]}} of an offline run's folder."""
    (path,) = folder.glob("run-*.wandb")
    run = {"history": {}}
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            run.update(id=record.run.run_id, name=record.run.display_name,
                       config={item.key: item.value_json for item in record.run.config.update})
        elif record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            for tag in items.keys() - {"global_step", "_step", "_timestamp", "_runtime"}:
                run["history"].setdefault(tag.split("/_type")[0], []).append(int(items["global_step"]))
    return run


def train(cwd, *extra):
    command = [sys.executable, TRAINER, "--rom-path", str(STANDIN_ROM), *TINY, *extra]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=180, env=OFFLINE)


def test_a_tracked_run_holds_the_config_every_tag_and_its_resume(tmp_path):
    result = train(tmp_path, "--track", "--run-name", "tracked")
    assert result.returncode == 0, result.stdout + result.stderr
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    run = offline_run(folder)
    assert run["name"] == "tracked" and '"num_envs": 2' not in run["config"]
    assert run["config"]["num_envs"] == "2" and run["config"]["max_steps"] == "40"  # the flat arguments
    assert run["history"]["train/policy_loss"] == [64, 128, 192]
    assert run["history"]["eval/mean_reward"] == [128]
    assert 192 in run["history"]["episode/world_map"]  # images too
    saved = torch.load(checkpoints(tmp_path)[-1], weights_only=True)
    assert saved["wandb_id"] == run["id"]

    result = subprocess.run([sys.executable, TRAINER, "--resume", str(checkpoints(tmp_path)[-1]),
                             "--total-timesteps", "256"], cwd=tmp_path, capture_output=True, text=True, timeout=180,
                            env=OFFLINE)
    assert result.returncode == 0, result.stdout + result.stderr
    resumed = [offline_run(path) for path in (tmp_path / "wandb").glob("offline-run-*") if path != folder]
    assert [run["id"]] == [other["id"] for other in resumed]  # the same W&B run, continued
    assert resumed[0]["history"]["train/policy_loss"] == [256]


def test_track_without_a_working_wandb_is_refused_in_one_line(tmp_path):
    env = {**os.environ, "WANDB_MODE": "online", "WANDB_API_KEY": "", "WANDB_BASE_URL": "http://127.0.0.1:9"}
    command = [sys.executable, TRAINER, "--rom-path", str(STANDIN_ROM), *TINY, "--track"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env)
    assert_one_line_error(result, "--track: W&B did not start:")
    assert not checkpoints(tmp_path)


def test_tracking_that_breaks_during_the_run_is_one_warning_and_the_run_finishes(tmp_path):
    """W&B's service process killed while the run goes on: the run ends as it would have, with one warning line."""
    command = [sys.executable, TRAINER, "--rom-path", str(STANDIN_ROM), *TINY, "--total-timesteps", "640", "--track"]
    process = Started(command, tmp_path, env=OFFLINE)
    process.wait_for_line("update 2/")
    service = [child for child in psutil.Process(process.pid).children(recursive=True) if "wandb-core" in child.name()]
    assert service, "no W&B service process"
    for child in service:
        child.kill()
    stdout, stderr = process.finish(timeout=180)
    assert process.returncode == 0, stdout + stderr
    assert "done: 640 steps" in stdout
    ours = [line for line in stderr.splitlines() if line.startswith("ppo_pokemon.py:")]
    assert len(ours) == 1 and ours[0].startswith("ppo_pokemon.py: warning: W&B could not end its run"), ours
    assert len(checkpoints(tmp_path)) == 5


def test_track_refused_under_torchrun_is_one_line_from_rank_0_and_every_rank_stops(tmp_path, monkeypatch):
    from test_distributed import torchrun

    for name, value in {"WANDB_MODE": "online", "WANDB_API_KEY": "", "WANDB_BASE_URL": "http://127.0.0.1:9"}.items():
        monkeypatch.setenv(name, value)
    result = torchrun(tmp_path, "--standalone", "--nproc-per-node", "2", extra=["--track"])
    assert result.returncode != 0, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--track: W&B did not start:" in errors[0], result.stderr
    assert "lost contact" not in result.stdout + result.stderr and not checkpoints(tmp_path)
