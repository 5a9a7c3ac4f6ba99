"""play_pokemon.py on the stand-in cartridge, from the checkpoint of a tiny training run.

The successful runs are subprocesses, as a user runs the script; being independent, they start
together (as many at a time as there are cores) and the tests read their results. Every test that
needs the trained checkpoint is marked slow (tests/conftest.py). Most refusals
call main() in this process (the same code path, without a fresh interpreter each); one runs as a
subprocess to check the exit status and a clean stderr.
"""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from processes import Started, patched_script, signal_inside_the_tick

import pokemon_env

ROOT = Path(__file__).resolve().parent.parent
STANDIN_ROM = ROOT / "roms" / "standin.gb"
PLAYER = str(ROOT / "play_pokemon.py")
TRAINER = str(ROOT / "ppo_pokemon.py")
# Not the defaults, so the player must take them from the checkpoint: 36x40 observations, 12
# frames a step (a recording's default frame rate is then 60 / 12 * 4 = 20 fps, 50 ms a frame).
OBS_SHAPE, FRAME_SKIP, FRAME_MS = (4, 36, 40), 12, 50
TINY_TRAINING = [
    "--rom-path", "roms/standin.gb", "--obs-height", "36", "--obs-width", "40", "--frame-skip", "12",
    "--num-envs", "1", "--num-steps", "16", "--minibatch-size", "16", "--total-timesteps", "16",
    "--max-steps", "16", "--update-epochs", "1", "--eval-episodes", "0", "--vec-backend", "serial",
    "--no-cuda",
]  # fmt: skip
EPISODES, MAX_STEPS = 2, 12
DOCUMENTED_KEYS = {
    "checkpoint", "run_name", "update", "global_step", "rom_path", "rom_sha1", "trained_rom_sha1",
    "env_kwargs", "greedy", "seed", "episodes_requested", "interrupted", "seconds", "episodes",
    "summary", "recording", "saved_states",
}  # fmt: skip
EPISODE_KEYS = {
    "episode", "seed", "episode_return", "episode_length", "badges", "unique_tiles", "maps_visited",
    "event_flags", "level_sum", "pokedex_seen", "pokedex_owned", "blackouts", "reward_explore",
    "reward_badge", "start_state", "action_counts",
}  # fmt: skip
TABLE_METRICS = ["return", "length", "badges", "unique tiles", "maps visited", "event flags", "level sum"]


def run_all(commands: dict) -> dict:
    """{name: (argv, cwd, extra env)} -> {name: CompletedProcess}, run concurrently."""

    def run(spec):
        argv, cwd, extra_env = spec
        env = {**os.environ, **extra_env}
        return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=180)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(run, spec) for name, spec in commands.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A folder holding roms/standin.gb (a private copy) and checkpoints/<run>/...pt from a tiny run."""
    assert STANDIN_ROM.exists(), "roms/standin.gb is missing: run python roms/build_standin.py"
    cwd = tmp_path_factory.mktemp("trained")
    (cwd / "roms").mkdir()
    shutil.copy(STANDIN_ROM, cwd / "roms" / "standin.gb")  # the checkpoint stores a relative path to it
    result = subprocess.run([sys.executable, TRAINER, *TINY_TRAINING], cwd=cwd, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (checkpoint,) = (cwd / "checkpoints").glob("*/*.pt")
    return cwd, checkpoint


@pytest.fixture(scope="module")
def played(trained):
    """The successful runs, played concurrently."""
    cwd, checkpoint = trained
    other_rom = cwd / "roms" / "standin_other.gb"
    rom = bytearray((cwd / "roms" / "standin.gb").read_bytes())
    rom[0x14E] ^= 0xFF  # the global checksum, which nothing checks: a valid cartridge, another SHA-1
    other_rom.write_bytes(bytes(rom))
    common = ["--episodes", str(EPISODES), "--max-steps", str(MAX_STEPS), "--seed", "7"]
    results = run_all({
        # No --checkpoint: the newest under checkpoints/.
        "gif": ([PLAYER, *common, "--json", "gif.json", "--record", "out/agent.gif",
                 "--world-map", "out/world.png"], cwd, {}),
        # A folder as --checkpoint: its newest .pt. The same seed as "gif".
        "mp4": ([PLAYER, *common, "--checkpoint", "checkpoints", "--json", "mp4.json",
                 "--record", "agent.mp4"], cwd, {}),
        # Another seed: other sampled actions.
        "other_seed": ([PLAYER, "--episodes", "1", "--max-steps", str(MAX_STEPS), "--seed", "100",
                        "--json", "other_seed.json"], cwd, {}),
        # In a window, at the default real-time speed: 8 steps of 12 frames take 1.6 s at least.
        "render": ([PLAYER, "--checkpoint", str(checkpoint), "--render", "--greedy", "--max-steps", "8",
                    "--json", "render.json"], cwd, {"SDL_VIDEODRIVER": "dummy"}),
        "headless_greedy": ([PLAYER, "--checkpoint", str(checkpoint), "--greedy", "--max-steps", "8",
                             "--json", "headless_greedy.json"], cwd, {}),
        "other_rom": ([PLAYER, "--rom-path", str(other_rom), "--max-steps", "4"], cwd, {}),
    })  # fmt: skip
    return cwd, results


def assert_ok(result):
    assert result.returncode == 0, result.stdout + result.stderr


def read_json(cwd, name):
    return json.loads((cwd / name).read_text())


def test_headless_episodes_print_lines_and_summary_table(played, trained):
    cwd, results = played
    result = results["gif"]
    assert_ok(result)
    assert result.stderr == ""
    _, checkpoint = trained
    assert f"checkpoint: {checkpoint.relative_to(cwd)} (the newest)" in result.stdout
    for episode in range(1, EPISODES + 1):
        assert f"episode {episode}/{EPISODES}: return " in result.stdout
    assert f"length {MAX_STEPS} |" in result.stdout
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in table[1:]] == TABLE_METRICS
    assert [cell.strip() for cell in table[0].split("|")[1:-1]] == ["metric", "mean", "std", "min", "max"]


def test_json_holds_the_documented_keys(played):
    cwd, results = played
    assert_ok(results["gif"])
    report = read_json(cwd, "gif.json")
    assert DOCUMENTED_KEYS <= set(report)
    assert len(report["episodes"]) == EPISODES and report["episodes_requested"] == EPISODES
    for number, episode in enumerate(report["episodes"], start=1):
        assert EPISODE_KEYS <= set(episode), EPISODE_KEYS - set(episode)
        assert episode["episode"] == number and episode["seed"] == 7 + number - 1
        assert episode["episode_length"] == MAX_STEPS
        assert sum(episode["action_counts"].values()) == MAX_STEPS
    for key in ("episode_return", "episode_length", "badges", "unique_tiles", "maps_visited",
                "event_flags", "level_sum"):
        assert set(report["summary"][key]) == {"mean", "std", "min", "max"}
    assert report["summary"]["episode_length"]["mean"] == MAX_STEPS
    # The settings came from the checkpoint, with --max-steps overriding.
    assert report["env_kwargs"]["frame_skip"] == FRAME_SKIP
    assert (report["env_kwargs"]["obs_height"], report["env_kwargs"]["obs_width"]) == OBS_SHAPE[1:]
    assert report["env_kwargs"]["max_steps"] == MAX_STEPS
    assert report["rom_sha1"] == report["trained_rom_sha1"]
    assert report["greedy"] is False and report["interrupted"] is False
    frames = EPISODES * (MAX_STEPS + 1)
    assert report["recording"] == {"path": "out/agent.gif", "fps": 1000 / FRAME_MS, "frames": frames}


def test_gif_has_every_step_at_full_resolution(played):
    cwd, results = played
    assert_ok(results["gif"])
    expected_frames = EPISODES * (MAX_STEPS + 1)  # each episode's first screen, then one per step
    with Image.open(cwd / "out" / "agent.gif") as gif:
        assert gif.size == (160, 144)
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
    # An unchanged screen is stored as one longer frame: count the frames by their duration.
    assert 1 < len(durations) <= expected_frames
    assert all(duration % FRAME_MS == 0 for duration in durations)
    assert sum(durations) == expected_frames * FRAME_MS
    assert (cwd / "out" / "agent.gif").stat().st_size < 200_000


def test_mp4_has_every_step_at_full_resolution(played):
    import imageio.v2 as imageio

    cwd, results = played
    assert_ok(results["mp4"])
    reader = imageio.get_reader(str(cwd / "agent.mp4"))
    try:
        assert reader.count_frames() == EPISODES * (MAX_STEPS + 1)
        assert reader.get_meta_data()["fps"] == 1000 / FRAME_MS
        assert reader.get_data(0).shape == (144, 160, 3)
    finally:
        reader.close()


def test_world_map_shows_the_episodes_played(played):
    """Both episodes start on the bedroom's (3, 6), and 12 steps do not leave the bedroom."""
    cwd, results = played
    assert "world map: out/world.png" in results["gif"].stdout
    assert all(episode["maps_visited"] == 1 for episode in read_json(cwd, "gif.json")["episodes"])
    world = pokemon_env.load_world(pokemon_env.load_rom(STANDIN_ROM))
    layout = pokemon_env.world_layout({0x26: np.ones((256, 256), np.int32)}, world)
    expected = pokemon_env.render_world_map({0x26: np.ones((256, 256), np.int32)}, 1, world)
    scale = expected.shape[1] // layout["size"][1]
    top, left, _, _ = layout["places"][0x26]
    with Image.open(cwd / "out" / "world.png") as png:
        image = np.asarray(png.convert("RGB"))
    assert image.shape == expected.shape
    start = (pokemon_env.LEGEND_HEIGHT + (top + 6) * scale + scale // 2, (left + 3) * scale + scale // 2)
    assert tuple(image[start]) == tuple(pokemon_env.colour_share(np.ones((1, 1)))[0, 0])  # both episodes


def test_same_seed_same_episodes(played):
    cwd, results = played
    for name in ("gif", "mp4", "other_seed"):
        assert_ok(results[name])
    first, second = read_json(cwd, "gif.json"), read_json(cwd, "mp4.json")
    assert first["checkpoint"] == second["checkpoint"]
    assert first["episodes"] == second["episodes"]  # everything, action counts included
    other = read_json(cwd, "other_seed.json")["episodes"][0]
    assert other["action_counts"] != first["episodes"][0]["action_counts"]


def test_render_in_a_window_in_real_time(played):
    cwd, results = played
    result = results["render"]
    assert_ok(result)
    assert "greedy actions" in result.stdout and "episode 1/1: " in result.stdout
    assert result.stderr == ""
    report = read_json(cwd, "render.json")
    assert report["greedy"] is True and report["episodes"][0]["episode_length"] == 8
    assert report["seconds"] >= 0.9 * 8 * FRAME_SKIP / 60  # never faster than the Game Boy
    # What the window shows is what a headless evaluation measures.
    assert_ok(results["headless_greedy"])
    assert report["episodes"] == read_json(cwd, "headless_greedy.json")["episodes"]


def test_finds_the_newest_checkpoint(tmp_path):
    from play_pokemon import PlayError, find_checkpoint

    # By modification time, not by name; a half-written temporary file is no checkpoint.
    from ppo_pokemon import CHECKPOINT_FORMAT

    for name, mtime in [("run_b/checkpoint_update000002.pt", 1_000_000),
                        ("run_a/checkpoint_update000001.pt", 900_000),
                        ("run_a/checkpoint_update000003.pt.tmp99", 2_000_000)]:
        path = tmp_path / "checkpoints" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": CHECKPOINT_FORMAT, "name": name}, path)
        os.utime(path, (mtime, mtime))
    newest = str(tmp_path / "checkpoints" / "run_b" / "checkpoint_update000002.pt")
    assert find_checkpoint(str(tmp_path / "checkpoints"))[0] == newest
    with pytest.raises(PlayError, match="checkpoint not found: given.pt"):
        find_checkpoint("given.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlayError, match="no checkpoint found") as error:
        find_checkpoint(str(tmp_path / "empty"))
    assert "train one" not in str(error.value)  # the hint is for the default folder


def test_other_rom_warns_in_one_line(played):
    _, results = played
    result = results["other_rom"]
    assert_ok(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("play_pokemon.py: warning: ")
    assert "trained on standin.gb" in lines[0] and "standin_other.gb" in lines[0]
    assert "episode 1/1: " in result.stdout


def test_gif_holds_exactly_the_screens(standin_env, tmp_path):
    """Decoded frame by frame (an unchanged screen: one frame, several delays), the GIF is the screens."""
    import numpy as np

    from play_pokemon import GifWriter, screen_rgb

    env = standin_env(frame_skip=FRAME_SKIP)
    env.reset(seed=3)
    screens = [screen_rgb(env)]
    for action in np.random.default_rng(0).integers(env.action_space.n, size=80):
        env.step(int(action))
        screens.append(screen_rgb(env))
    writer = GifWriter(str(tmp_path / "exact.gif"), FRAME_MS)
    for screen in screens:
        writer.add(screen)
    writer.close()
    decoded = []
    with Image.open(tmp_path / "exact.gif") as gif:
        for index in range(gif.n_frames):
            gif.seek(index)
            decoded += [np.asarray(gif.convert("RGB"))] * (gif.info["duration"] // FRAME_MS)
    assert len(decoded) == len(screens)
    for number, (got, want) in enumerate(zip(decoded, screens)):
        assert np.array_equal(got, want), f"screen {number} differs"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_keep_what_was_played(trained, tmp_path, signum):
    """Ctrl-C (or SIGTERM): exit 130 (143), the finished episodes reported and written, the recording so far."""
    cwd, checkpoint = trained
    command = [sys.executable, PLAYER, "--checkpoint", str(checkpoint), "--episodes", "1000",
               "--max-steps", "20", "--json", str(tmp_path / "stopped.json"),
               "--record", str(tmp_path / "stopped.gif")]
    process = Started(command, cwd)
    process.wait_for_line("episode 2/1000")
    os.kill(process.pid, signum)
    stdout, stderr = process.finish(timeout=60)
    assert process.returncode == 128 + signum, stdout + stderr
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert f"{name}: stopped after" in stdout and "| return " in stdout
    report = json.loads((tmp_path / "stopped.json").read_text())
    assert report["interrupted"] is True and 2 <= len(report["episodes"]) < 1000
    with Image.open(tmp_path / "stopped.gif") as gif:
        assert gif.size == (160, 144) and gif.n_frames > 1


def test_ctrl_c_inside_the_emulators_tick_still_stops_the_episodes(trained, tmp_path):
    """A KeyboardInterrupt that the signal handler raised would be lost inside PyBoy's tick."""
    cwd, checkpoint = trained
    patch = signal_inside_the_tick(signal.SIGINT, when="calls[0] > 2000")  # a few episodes in
    command = [sys.executable, str(patched_script(tmp_path, PLAYER, patch)), "--checkpoint", str(checkpoint),
               "--episodes", "1000", "--max-steps", "20"]
    process = Started(command, cwd)
    stdout, stderr = process.finish(timeout=120)
    assert "signal from inside the tick" in stderr, stdout + stderr
    assert process.returncode == 130 and "Traceback" not in stderr, stdout + stderr
    assert "Ctrl-C: stopped after" in stdout


# ----- refusals: one line on stderr, exit status 2 -----


@pytest.fixture(scope="module")
def bad_inputs(trained, tmp_path_factory):
    """Files that must be refused, and the folders to run from."""
    cwd, checkpoint = trained
    bad = tmp_path_factory.mktemp("bad")
    (bad / "empty").mkdir()
    (bad / "notes.txt").write_text("not a checkpoint\n")
    data = checkpoint.read_bytes()
    (bad / "truncated.pt").write_bytes(data[: len(data) // 2])
    saved = torch.load(checkpoint, weights_only=True)
    torch.save(saved["model"], bad / "weights_only.pt")  # a bare state_dict: a common mistake
    # The env now gives 84x40 observations; the agent was trained on 36x40.
    mismatch = {**saved, "args": {**saved["args"], "rom_path": str(cwd / "roms" / "standin.gb"), "obs_height": 84}}
    torch.save(mismatch, bad / "mismatch.pt")
    # Trained from a start state that is not here any more.
    gone_state = {**saved, "args": {**saved["args"], "init_state": "states/gone.state"}}
    torch.save(gone_state, bad / "gone_state.pt")
    # An agent with 6 buttons, for an env that has 8.
    six = {name: tensor[:6] if name.startswith("actor.") else tensor for name, tensor in saved["model"].items()}
    torch.save({**saved, "model": six, "num_actions": 6}, bad / "six_actions.pt")
    # An agent that leans towards Up, but only just: sampling presses the other buttons too.
    leans_up = {**saved["model"], "actor.weight": torch.zeros_like(saved["model"]["actor.weight"]),
                "actor.bias": torch.eye(8)[pokemon_env.ACTIONS.index("up")]}  # p(up) = e / (e + 7) = 0.28
    torch.save({**saved, "model": leans_up}, bad / "leans_up.pt")
    return cwd, checkpoint, bad


def main_in_process(argv, monkeypatch, where):
    """play_pokemon.main(argv) run from `where`; the exit status (0 when it returns)."""
    import play_pokemon

    monkeypatch.chdir(where)
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    try:
        play_pokemon.main([str(arg) for arg in argv])
        return 0
    except SystemExit as exit_info:
        return exit_info.code
    finally:  # main() sets them for the whole process
        torch.set_num_threads(threads)
        torch.set_rng_state(rng)


def test_init_state_overrides(bad_inputs, start_state_file, monkeypatch, capsys):
    """A checkpoint whose start state is gone: refused with a hint; plays from another, or from power-on."""
    cwd, _, bad = bad_inputs
    status = main_in_process(["--checkpoint", bad / "gone_state.pt"], monkeypatch, cwd)
    assert status == 2
    assert capsys.readouterr().err.strip() == (
        "play_pokemon.py: error: init_state states/gone.state does not exist (the checkpoint's; give "
        "--init-state PATH, or --init-state boot to start from power-on)"
    )
    for init_state in (start_state_file, "boot"):
        argv = ["--checkpoint", bad / "gone_state.pt", "--init-state", init_state, "--max-steps", "3",
                "--json", bad / "state.json"]
        assert main_in_process(argv, monkeypatch, cwd) == 0
        assert "episode 1/1: " in capsys.readouterr().out
        played_from = json.loads((bad / "state.json").read_text())["env_kwargs"]["init_state"]
        assert played_from == (None if init_state == "boot" else [str(init_state)])


def test_refusal_from_the_command_line(bad_inputs):
    """The whole process: exit status 2 and nothing on stderr but the one line."""
    _, _, bad = bad_inputs
    result = subprocess.run([sys.executable, PLAYER], cwd=bad / "empty", capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "play_pokemon.py: error: no checkpoint found: no *.pt under checkpoints/ "
        "(train one with ppo_pokemon.py, or give --checkpoint PATH)"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["play_pokemon.py", "ppo_pokemon.py"])
def test_help_gives_one_default_per_flag(script):
    result = subprocess.run([sys.executable, str(Path(PLAYER).parent / script), "--help"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    flags = [line for line in result.stdout.splitlines() if "--" in line]
    assert len(flags) > 10 and not [line for line in flags if line.count("(default:") > 1]
    assert "(default: the checkpoint's)" in result.stdout or script == "ppo_pokemon.py"


def test_unknown_rom_warns_in_one_line(bad_inputs, monkeypatch, capsys):
    """A Game Boy ROM that is neither Pokemon Red nor the stand-in: pokemon_env's warning, in one line."""
    cwd, checkpoint, bad = bad_inputs
    rom = bytearray((cwd / "roms" / "standin.gb").read_bytes())
    rom[0x134:0x13B] = b"UNKNOWN"  # another title, with the header checksum to match
    rom[0x14D] = -sum(byte + 1 for byte in rom[0x134:0x14D]) & 0xFF
    (bad / "unknown.gb").write_bytes(bytes(rom))
    argv = ["--checkpoint", checkpoint, "--rom-path", bad / "unknown.gb", "--max-steps", "2"]
    assert main_in_process(argv, monkeypatch, cwd) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("play_pokemon.py: warning: ") for line in lines), lines
    assert "is not Pokemon Red or Blue" in lines[0] and "trained on standin.gb" in lines[1]


@pytest.mark.parametrize("case, argv, where, message", [
    ("no_checkpoint", [], "empty", "no checkpoint found"),
    ("missing_file", ["--checkpoint", "nowhere.pt"], "trained", "checkpoint not found: nowhere.pt"),
    ("text_file", ["--checkpoint", "{bad}/notes.txt"], "trained", "corrupt or not one"),
    ("truncated", ["--checkpoint", "{bad}/truncated.pt"], "trained", "corrupt or not one"),
    ("not_a_checkpoint", ["--checkpoint", "{bad}/weights_only.pt"], "trained",
     "is not a checkpoint written by ppo_pokemon.py"),
    ("obs_mismatch", ["--checkpoint", "{bad}/mismatch.pt"], "trained",
     "checkpoint observations are (4, 36, 40), this env gives (4, 84, 40)"),
    ("missing_rom", ["--checkpoint", "{checkpoint}", "--rom-path", "roms/nowhere.gb"], "trained",
     "ROM not found: roms/nowhere.gb"),
    ("checkpoints_rom_missing", ["--checkpoint", "{checkpoint}"], "empty",  # it stores a relative path
     "ROM not found: roms/standin.gb (the checkpoint's ROM path; give --rom-path)"),
    ("not_a_rom", ["--checkpoint", "{checkpoint}", "--rom-path", "{bad}/notes.txt"], "trained",
     "is not a Game Boy ROM"),
    ("zero_episodes", ["--episodes", "0"], "trained", "--episodes must be at least 1"),
    ("record_extension", ["--record", "agent.avi"], "trained", "--record must end in .gif or .mp4"),
    ("world_map_extension", ["--world-map", "map.jpg"], "trained", "--world-map must end in .png"),
    ("world_map_unwritable", ["--world-map", "{bad}/notes.txt/map.png"], "trained",
     "cannot write --world-map"),
    ("negative_speed", ["--render", "--speed", "-1"], "trained", "--speed must be 0 (unlimited) or more"),
    ("save_states_unwritable", ["--save-states", "{bad}/notes.txt/states"], "trained",
     "cannot write --save-states"),
    ("save_states_beside_rom", ["--save-states", "roms"], "trained", "--save-states roms is the ROM's"),
    ("save_every_alone", ["--save-every", "10"], "trained", "--save-every goes with --save-states DIR"),
    ("save_every_negative", ["--save-states", "states", "--save-every", "-1"], "trained",
     "--save-every must be 0 (only on a new map or badge count) or more"),
    ("init_state_empty_folder", ["--init-state", "{bad}/empty"], "trained", "holds no *.state files"),
    ("json_unwritable", ["--json", "{bad}/notes.txt/results.json"], "trained", "cannot write --json"),
    ("json_folder", ["--json", "{bad}/empty"], "trained", "--json {bad}/empty is a folder; give a file name"),
    ("action_count", ["--checkpoint", "{bad}/six_actions.pt"], "trained",
     "checkpoint has 6 actions, this env has 8"),
    ("record_fps_too_high", ["--record", "agent.gif", "--record-fps", "60"], "trained",
     "--record-fps must be in (0, 50] for a .gif"),
    ("record_fps_nan", ["--record", "agent.mp4", "--record-fps", "nan"], "trained", "--record-fps must be in"),
    ("record_unwritable", ["--record", "{bad}/notes.txt/agent.gif"], "trained", "cannot write --record"),
])  # fmt: skip
def test_refuses_in_one_line(bad_inputs, monkeypatch, capsys, case, argv, where, message):
    """In this process, through main(): the same code path as the command line, at a fraction of the cost."""
    cwd, checkpoint, bad = bad_inputs
    argv = [arg.format(bad=bad, checkpoint=checkpoint) for arg in argv]
    assert main_in_process(argv, monkeypatch, bad / "empty" if where == "empty" else cwd) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("play_pokemon.py: error: "), lines
    assert message.format(bad=bad) in lines[0] and "episode 1/" not in captured.out  # refused before playing


def test_greedy_takes_the_most_likely_action(bad_inputs, monkeypatch, capsys, tmp_path):
    cwd, _, bad = bad_inputs
    counts = {}
    for mode in ("--greedy", "--seed"):  # --seed 1: the default, sampled
        argv = ["--checkpoint", bad / "leans_up.pt", mode, *(["1"] if mode == "--seed" else []),
                "--max-steps", "30", "--json", tmp_path / "actions.json"]
        assert main_in_process(argv, monkeypatch, cwd) == 0
        counts[mode] = json.loads((tmp_path / "actions.json").read_text())["episodes"][0]["action_counts"]
    assert counts["--greedy"]["up"] == 30
    assert counts["--seed"]["up"] < 30  # sampled: other buttons too


@pytest.mark.parametrize("extension, fps", [(".gif", 5.0), (".mp4", 7.5)])
def test_record_fps_sets_the_recordings_frame_rate(trained, monkeypatch, tmp_path, extension, fps):
    import imageio.v2 as imageio

    cwd, checkpoint = trained
    video = tmp_path / f"slow{extension}"
    argv = ["--checkpoint", checkpoint, "--max-steps", "3", "--record", video, "--record-fps", str(fps),
            "--json", tmp_path / "fps.json"]
    assert main_in_process(argv, monkeypatch, cwd) == 0
    assert json.loads((tmp_path / "fps.json").read_text())["recording"]["fps"] == fps
    if extension == ".gif":
        with Image.open(video) as gif:
            durations = []
            for index in range(gif.n_frames):
                gif.seek(index)
                durations.append(gif.info["duration"])
        assert sum(durations) == 4 * 1000 / fps  # 3 steps and the first screen, 200 ms each
    else:
        reader = imageio.get_reader(str(video))
        try:
            assert reader.get_meta_data()["fps"] == fps and reader.count_frames() == 4
        finally:
            reader.close()


# ----- start states: save them while playing, train from them, play from them -----


@pytest.fixture(scope="module")
def walks_upstairs(trained, tmp_path_factory):
    """A state below the bedroom's stairs, and the trained checkpoint made to press Up always."""
    _, checkpoint = trained
    folder = tmp_path_factory.mktemp("walks_upstairs")
    env = pokemon_env.PokemonRedEnv(rom_path=STANDIN_ROM)
    env.reset(seed=0)
    for button in ["right"] * 3 + ["up"] * 4:  # bedroom (3, 6) -> (6, 6) -> (6, 2), below the stairs
        env.step(pokemon_env.ACTIONS.index(button))
    env.save_state(folder / "below_stairs.state")
    env.close()
    saved = torch.load(checkpoint, weights_only=True)
    saved["model"]["actor.weight"].zero_()
    saved["model"]["actor.bias"][:] = torch.eye(8)[pokemon_env.ACTIONS.index("up")] * 100  # up, p = 1 - 1e-43
    torch.save(saved, folder / "always_up.pt")
    return folder / "below_stairs.state", folder / "always_up.pt"


def test_save_states_then_train_and_play_from_them(trained, walks_upstairs, tmp_path, monkeypatch, capsys):
    """The workflow: play, saving states (on a new map, every N steps); train from that folder; play it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cwd, _ = trained
    below_stairs, always_up = walks_upstairs
    states = tmp_path / "states"
    argv = ["--checkpoint", always_up, "--init-state", below_stairs, "--episodes", "2", "--max-steps", "6",
            "--save-states", states, "--save-every", "4", "--json", tmp_path / "saved.json"]
    assert main_in_process(argv, monkeypatch, cwd) == 0
    assert f"saved states: {len(list(states.iterdir()))} in {states}" in capsys.readouterr().out
    names = sorted(path.name for path in states.iterdir())
    assert names == [f"ep0{episode}_step00000{step}_REDS_HOUSE_1F_badges0.state"
                     for episode in (1, 2) for step in (1, 4)]  # downstairs, a new map; every 4 steps
    report = json.loads((tmp_path / "saved.json").read_text())
    assert sorted(report["saved_states"]) == [str(states / name) for name in names]
    env = pokemon_env.PokemonRedEnv(rom_path=STANDIN_ROM, init_state=states)  # the folder is a valid init_state
    for state in env.start_states:
        env.pyboy.load_state(io.BytesIO(state))
        assert env.pyboy.memory[pokemon_env.MAP_ID] == 0x25  # REDS_HOUSE_1F, as the names say
    env.close()

    # Train from the folder: 2 envs, 3-step episodes, 4 episodes each.
    (tmp_path / "train").mkdir()
    command = [sys.executable, TRAINER, *TINY_TRAINING, "--rom-path", str(STANDIN_ROM),
               "--init-state", str(states), "--num-envs", "2", "--total-timesteps", "32", "--max-steps", "3"]
    result = subprocess.run(command, cwd=tmp_path / "train", capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    (trained_here,) = (tmp_path / "train" / "checkpoints").glob("*/*.pt")
    saved = torch.load(trained_here, weights_only=True)
    files = [str(states / name) for name in names]
    assert saved["args"]["init_state"] == files and "env_kwargs" not in saved  # the env's settings once
    (run_dir,) = (tmp_path / "train" / "runs").iterdir()
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    by_start = [tag for tag in accumulator.Tags()["scalars"] if "episode/return_by_start_state/" in tag]
    assert by_start and all(0 <= int(tag.rsplit("/", 1)[1]) < len(files) for tag in by_start), by_start
    returns = [accumulator.Scalars(tag)[0].value for tag in by_start]
    assert min(returns) <= accumulator.Scalars("episode/mean_reward")[0].value <= max(returns)
    table = accumulator.Tensors("start_states/text_summary")[0].tensor_proto.string_val[0].decode()
    assert all(f"| {index} | {path} |" in table for index, path in enumerate(files))

    # Play the new checkpoint: its start states come with it.
    argv = ["--checkpoint", trained_here, "--episodes", "4", "--max-steps", "1",
            "--json", tmp_path / "played.json"]
    assert main_in_process(argv, monkeypatch, tmp_path / "train") == 0
    report = json.loads((tmp_path / "played.json").read_text())
    assert report["env_kwargs"]["init_state"] == files
    assert all(0 <= episode["start_state"] < len(files) for episode in report["episodes"])


def test_old_checkpoint_with_one_init_state_string_plays(bad_inputs, start_state_file, monkeypatch, capsys):
    """Checkpoints written before many start states record init_state as one path."""
    cwd, checkpoint, bad = bad_inputs
    saved = torch.load(checkpoint, weights_only=True)
    old_style = {**saved, "args": {**saved["args"], "init_state": str(start_state_file)}}
    torch.save(old_style, bad / "old_style.pt")
    argv = ["--checkpoint", bad / "old_style.pt", "--max-steps", "2", "--json", bad / "old_style.json"]
    assert main_in_process(argv, monkeypatch, cwd) == 0
    assert "episode 1/1: " in capsys.readouterr().out
    report = json.loads((bad / "old_style.json").read_text())
    assert report["env_kwargs"]["init_state"] == [str(start_state_file)]
    assert report["episodes"][0]["start_state"] == 0
