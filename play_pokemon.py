"""Watch, evaluate and record an agent trained by ppo_pokemon.py.

    python play_pokemon.py                                   # the newest checkpoint, one headless episode
    python play_pokemon.py --checkpoint run.pt --render      # watch it in a Game Boy window, in real time
    python play_pokemon.py --episodes 10 --json eval.json    # evaluate; per-episode results and a summary
    python play_pokemon.py --record agent.gif --max-steps 300
    python play_pokemon.py --episodes 8 --world-map world.png  # where the episodes went, on the world map
    python play_pokemon.py --save-states states/ --save-every 500  # save the agent's games to train from

The agent and the environment settings (observation shape, frame skip, rewards, ROM, start states,
episode length) come from the checkpoint; --rom-path, --init-state and --max-steps override them.
Actions are sampled from the policy, as in training, unless --greedy; a --seed (default 1) makes
a run repeatable: episode i (from 0) resets the env with seed + i, and torch's sampler is seeded once.

--save-states DIR writes PyBoy states of the agent's games into DIR, each named for what it holds
(ep01_step000400_PALLET_TOWN_badges0.state): every --save-every steps, and whenever an episode
reaches a map or a badge count for the first time. The folder is a valid --init-state.

Recordings (--record x.gif or x.mp4) hold the full-resolution 160x144 screen once per agent step
(what the agent acted on), plus the first screen of each episode: episode_length + 1 frames per
episode, all episodes in one file. They play at 4x game speed by default (60 / frame_skip * 4 fps:
10 fps at the default 24 frames a step) so that long episodes stay watchable; --record-fps sets it.
A GIF shows an unchanged screen as one longer frame, so it may hold fewer frames than that, with the
same total duration; an MP4 holds every one.

--json PATH writes one object:
    checkpoint, run_name, update, global_step    which checkpoint played
    rom_path, rom_sha1, trained_rom_sha1         the ROM played and the ROM trained on (null if unknown)
    env_kwargs                                   the PokemonRedEnv settings used, overrides included
    greedy, seed, episodes_requested, interrupted, seconds
    episodes      one object per finished episode: episode (1-based), seed, episode_return,
                  episode_length, badges, unique_tiles, maps_visited, event_flags, level_sum,
                  pokedex_seen, pokedex_owned, blackouts, reward_<term> (the return by reward
                  term), start_state (index into env_kwargs' init_state), action_counts
                  ({button: times pressed})
    summary       {metric: {mean, std, min, max}} over the episodes, for the metrics of the table
    recording     {path, fps, frames} or null
    saved_states  the state files written by --save-states, or null

Exit status: 0 done; 2 refused (bad arguments, no or unusable checkpoint, missing ROM, an output
that cannot be written: one line on stderr, prefixed "play_pokemon.py: error:"); 130 stopped by
Ctrl-C, 143 by SIGTERM (finished episodes are still reported, written to --json, and the recording
so far is saved).
"""
import dataclasses
import json
import os
import re
import signal
import struct
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Annotated, Optional, TypeVar

# Import-time notices from dependencies, not for our users: keep stderr for our own messages.
warnings.filterwarnings("ignore", message="The pynvml package is deprecated")
warnings.filterwarnings("ignore", message="Using SDL2 binaries")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import tyro  # noqa: E402

import pokemon_env  # noqa: E402
from ppo_pokemon import agent_from_checkpoint, choose_action, load_checkpoint, write_atomically  # noqa: E402

T = TypeVar("T")


CheckpointsByDefault = Annotated[T, tyro.conf.arg(help_behavior_hint="(default: the checkpoint's)")]


@dataclass
class Args:
    checkpoint: Annotated[Optional[str], tyro.conf.arg(help_behavior_hint="(default: the newest checkpoints/**/*.pt)")] = None
    """checkpoint file, or a folder to take its newest .pt"""
    episodes: int = 1
    """number of episodes to play"""
    render: bool = False
    """if toggled, show the game in a Game Boy window (headless otherwise)"""
    speed: int = 1
    """with --render: emulation speed as a multiple of real time; 0 = unlimited"""
    record: Optional[str] = None
    """write the episodes to this .gif or .mp4 file (full-resolution screen, one frame per step)"""
    record_fps: Annotated[Optional[float], tyro.conf.arg(help_behavior_hint="(default: 4x game speed)")] = None
    """frame rate of the recording (4x game speed is 60 / frame_skip * 4)"""
    greedy: bool = False
    """if toggled, take the most likely action; by default sample from the policy, as in training"""
    seed: int = 1
    """seed of the episodes (env resets) and of the action sampling"""
    json: Optional[str] = None
    """write per-episode results and a summary to this JSON file"""
    world_map: Optional[str] = None
    """draw where the episodes went on the game's world map into this .png file"""
    # Overrides of the checkpoint's environment settings (pokemon_env.EnvSettings)
    rom_path: CheckpointsByDefault[Optional[str]] = None
    """play on this ROM"""
    init_state: CheckpointsByDefault[Optional[list[str]]] = None
    """start episodes from these PyBoy save states or folders of *.state files ('boot': from power-on)"""
    max_steps: CheckpointsByDefault[Optional[int]] = None
    """episode length limit in agent steps"""
    cuda: bool = False
    """if toggled, run the network on CUDA when available (one env needs no GPU)"""
    save_states: Optional[str] = None
    """write PyBoy states of the agent's play into this folder (not the ROM's), named by step, map, badges"""
    save_every: int = 0
    """with --save-states: also save every this many steps (0: only on a new map or badge count)"""


# The per-episode metrics of the printed table and the JSON summary: (info key, label, format).
METRICS = [
    ("episode_return", "return", ".2f"),
    ("episode_length", "length", "d"),
    ("badges", "badges", "d"),
    ("unique_tiles", "unique tiles", "d"),
    ("maps_visited", "maps visited", "d"),
    ("event_flags", "event flags", "d"),
    ("level_sum", "level sum", "d"),
]
RECORD_SPEEDUP = 4  # recordings play at 4x game speed unless --record-fps
GIF_MAX_FPS = 50  # GIF delays are in 1/100 s, and viewers slow down delays under 2/100 s
PROG = "play_pokemon.py"


class PlayError(Exception):
    """A reason to refuse, in one line."""


def fail(message: str):
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def warn(message: str):
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def check_args(args: Args) -> Optional[str]:
    """The reason the arguments cannot work, in one line, or None."""
    if args.episodes < 1:
        return f"--episodes must be at least 1 (got {args.episodes})"
    if args.speed < 0:
        return f"--speed must be 0 (unlimited) or more (got {args.speed})"
    if args.max_steps is not None and args.max_steps < 1:
        return f"--max-steps must be at least 1 (got {args.max_steps})"
    if args.record is not None:
        extension = os.path.splitext(args.record)[1].lower()
        if extension not in (".gif", ".mp4"):
            return f"--record must end in .gif or .mp4 (got {args.record!r})"
        max_fps = GIF_MAX_FPS if extension == ".gif" else 240
        if args.record_fps is not None and not 0 < args.record_fps <= max_fps:
            return f"--record-fps must be in (0, {max_fps}] for a {extension} (got {args.record_fps})"
    if args.json is not None and os.path.isdir(args.json):
        return f"--json {args.json} is a folder; give a file name"
    for flag, path in (("--json", args.json), ("--record", args.record)):  # found out now, not after playing
        problem = cannot_write(path) if path is not None else None
        if problem:
            return f"cannot write {flag} {path}: {problem}"
    if args.save_every < 0:
        return f"--save-every must be 0 (only on a new map or badge count) or more (got {args.save_every})"
    if args.save_every and args.save_states is None:
        return "--save-every goes with --save-states DIR"
    if args.save_states is not None:
        problem = cannot_write(os.path.join(args.save_states, ".write_test"))
        if problem:
            return f"cannot write --save-states {args.save_states}: {problem}"
    if args.world_map is not None:
        if not args.world_map.lower().endswith(".png"):
            return f"--world-map must end in .png (got {args.world_map!r})"
        problem = cannot_write(args.world_map)
        if problem:
            return f"cannot write --world-map {args.world_map}: {problem}"
    return None


def cannot_write(path: str) -> Optional[str]:
    """Why a file cannot be written at `path` (its folder made if missing), or None: tried for real."""
    existed = os.path.exists(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        open(path, "ab").close()
    except OSError as e:
        return e.strerror or type(e).__name__
    if not existed:
        os.remove(path)
    return None


def find_checkpoint(where: Optional[str]) -> tuple[str, dict]:
    """(file, checkpoint): the given file, or the newest .pt (by modification time) under a folder, as the
    trainer's --resume takes it; by default under checkpoints/."""
    try:
        return load_checkpoint(where or "checkpoints")
    except ValueError as e:  # the trainer's CheckpointError
        if where is None and (not os.path.isdir("checkpoints") or str(e).startswith("no checkpoint found")):
            e = "no checkpoint found: no *.pt under checkpoints/ (train one with ppo_pokemon.py, or give --checkpoint PATH)"
        raise PlayError(str(e)) from None


def env_settings(checkpoint: dict, args: Args) -> dict:
    """PokemonRedEnv keyword arguments: the checkpoint's (among its flat args), with the command line's overrides."""
    names = [field.name for field in dataclasses.fields(pokemon_env.EnvSettings)]
    if not isinstance(checkpoint.get("args"), dict) or "obs_shape" not in checkpoint or "rom_path" not in checkpoint["args"]:
        raise PlayError("checkpoint lacks its environment settings (args, obs_shape)")
    settings = pokemon_env.EnvSettings(**{name: checkpoint["args"][name] for name in names if name in checkpoint["args"]})
    overrides = {"rom_path": args.rom_path, "init_state": args.init_state, "max_steps": args.max_steps}
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if args.init_state == ["boot"]:
        settings.init_state = None
    rom_path = settings.rom_path
    if rom_path is None or not os.path.isfile(rom_path):
        origin = "" if args.rom_path is not None else " (the checkpoint's ROM path; give --rom-path)"
        raise PlayError(f"ROM not found: {rom_path}{origin}")
    try:
        settings.init_state = settings.start_state_files()
    except pokemon_env.StateError as e:
        origin = "" if args.init_state is not None else (
            " (the checkpoint's; give --init-state PATH, or --init-state boot to start from power-on)")
        raise PlayError(f"{e}{origin}") from None
    if args.save_states is not None and os.path.samefile(args.save_states, os.path.dirname(rom_path) or "."):
        raise PlayError(f"--save-states {args.save_states} is the ROM's folder: save states elsewhere")
    return dataclasses.asdict(settings)


def make_env(env_kwargs: dict, render: bool) -> "pokemon_env.PokemonRedEnv":
    """The env, with its warnings (an unknown ROM, say) as one-line warnings and its errors as PlayError."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pokemon_env.UnknownRomWarning)
        try:
            env = pokemon_env.PokemonRedEnv(**env_kwargs, render_mode="human" if render else None)
        except (pokemon_env.RomError, pokemon_env.StateError, pokemon_env.IntroError) as e:
            raise PlayError(str(e)) from None
        except (TypeError, ValueError) as e:  # a setting this pokemon_env.py does not know or accept
            raise PlayError(f"the checkpoint's environment settings do not fit pokemon_env.py: {e}") from None
        except Exception as e:
            if not render:
                raise
            reason = pokemon_env.first_line(e)  # SDL's, in PyBoy's window
            raise PlayError(f"cannot open the Game Boy window: {reason} (no display?)") from None
    for warning in caught:
        if issubclass(warning.category, pokemon_env.UnknownRomWarning):
            warn(str(warning.message))
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return env


class GifWriter:
    """An animated GIF written as it goes, so memory stays flat however long the recording.

    The first screen fixes the palette (the Game Boy's 4 shades: exact); an unchanged screen
    lengthens the previous frame instead of adding one; a changed one stores only the rectangle
    that changed. Pillow encodes each frame (GifImagePlugin.getdata); the container is ours.
    """

    MAX_DELAY = 0xFFFF  # a frame's delay is 16 bits, in 1/100 s

    def __init__(self, path: str, frame_ms: float):
        self.file = open(path, "wb")
        self.delay = max(2, round(frame_ms / 10))  # in 1/100 s; below 2, viewers slow it down
        self.palette_image = None
        self.previous = None  # palette indices (144, 160) of the last screen
        self.pending = None  # (indices of the changed rectangle, (left, top), delay): not yet written

    def add(self, screen: np.ndarray):
        from PIL import Image

        image = Image.fromarray(screen)
        if self.palette_image is None:
            self.palette_image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
            palette = bytes(self.palette_image.getpalette("RGB")).ljust(768, b"\0")[:768]
            height, width = screen.shape[:2]
            self.file.write(b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF7, 0, 0) + palette
                            + b"!\xff\x0bNETSCAPE2.0\x03\x01" + struct.pack("<H", 0) + b"\0")  # loop forever
        indices = np.asarray(image.quantize(palette=self.palette_image, dither=Image.Dither.NONE))
        if self.previous is None:
            self.pending = (indices, (0, 0), self.delay)
        else:
            changed = indices != self.previous
            if not changed.any() and self.pending[2] + self.delay <= self.MAX_DELAY:
                self.pending = (*self.pending[:2], self.pending[2] + self.delay)
            else:
                self._write_pending()
                rows, cols = np.nonzero(changed.any(1))[0], np.nonzero(changed.any(0))[0]
                if len(rows) == 0:  # unchanged, but the previous frame's delay is full
                    rows, cols = np.array([0]), np.array([0])
                top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
                self.pending = (indices[top:bottom, left:right], (int(left), int(top)), self.delay)
        self.previous = indices

    def _write_pending(self):
        from PIL import GifImagePlugin, Image

        if self.pending is not None:
            indices, offset, delay = self.pending
            frame = Image.fromarray(np.ascontiguousarray(indices), mode="P")
            self.file.write(b"".join(GifImagePlugin.getdata(frame, offset, duration=delay * 10)))
            self.pending = None

    def close(self):
        self._write_pending()
        self.file.write(b";")
        self.file.close()


class Recorder:
    """Full-resolution screens into an animated GIF or an MP4, both written as the episodes go."""

    def __init__(self, path: str, fps: float):
        self.path, self.fps, self.frames = path, fps, 0
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if path.lower().endswith(".mp4"):
            import imageio.v2 as imageio

            # 160x144 is a multiple of 16 in both directions: ffmpeg needs no resizing.
            self.writer = imageio.get_writer(path, fps=fps, codec="libx264", quality=8,
                                             macro_block_size=16, ffmpeg_log_level="error")
            self.add_frame = self.writer.append_data
        else:
            self.writer = GifWriter(path, 1000 / fps)
            self.add_frame = self.writer.add
            self.fps = 100 / self.writer.delay  # what the GIF's 1/100 s delays give

    def add(self, screen: np.ndarray):
        """screen: (144, 160, 3) uint8."""
        self.add_frame(screen)
        self.frames += 1

    def close(self):
        self.writer.close()


def screen_rgb(env) -> np.ndarray:
    """The emulator's current full screen as (144, 160, 3) uint8, whatever the render mode."""
    return env.pyboy.screen.ndarray[:, :, :3].copy()  # PyBoy reuses its buffer: copy at once


class StateSaver:
    """Writes PyBoy states of the agent's play into one folder, never elsewhere: every `every` steps
    (0: never), and whenever an episode reaches a map or a badge count for the first time."""

    def __init__(self, folder: str, every: int, world: dict, episodes: int):
        self.folder, self.every, self.world = folder, every, world
        self.episode_digits = max(2, len(str(episodes)))
        self.paths = []

    def start(self, env, episode: int):
        self.episode, self.maps, self.badges = episode, {env.position[0]}, env.badges_raw.bit_count()

    def after_step(self, env):
        map_id, badges = env.position[0], env.badges_raw.bit_count()  # what the RAM says after the step
        if map_id not in self.maps or badges > self.badges or (self.every and env.steps % self.every == 0):
            self.maps.add(map_id)
            self.badges = max(self.badges, badges)
            map_name = self.world["maps"].get(map_id, {}).get("name", f"MAP_{map_id:02X}")
            map_name = re.sub(r"[^A-Za-z0-9]+", "_", map_name).strip("_")  # a file name, inside the folder
            episode = f"ep{self.episode:0{self.episode_digits}d}"
            path = os.path.join(self.folder, f"{episode}_step{env.steps:06d}_{map_name}_badges{badges}.state")
            write_atomically(path, env.pyboy.save_state)  # a folder of states never holds half of one
            self.paths.append(path)


def play_episode(env, agent, seed: int, greedy: bool, recorder: Optional[Recorder],
                 visit_counts: Optional[dict] = None, saver: Optional[StateSaver] = None,
                 episode: int = 1) -> dict:
    """One episode to its end; returns the env's end-of-episode statistics plus action counts.

    With visit_counts, the episode's visited tiles are counted into it (pokemon_env.add_visits); with
    saver, states of it are saved as episode number `episode`."""
    next_obs, _ = env.reset(seed=seed)
    if recorder is not None:
        recorder.add(screen_rgb(env))
    if saver is not None:
        saver.start(env, episode)
    action_counts = dict.fromkeys(pokemon_env.ACTIONS, 0)
    episode_return, episode_length = 0.0, 0
    while True:
        if stop_signal is not None:  # Ctrl-C or SIGTERM, raised here between two steps (see interrupt)
            raise KeyboardInterrupt(stop_signal)
        action = choose_action(agent, next_obs, greedy)
        next_obs, reward, terminated, truncated, info = env.step(action)
        action_counts[pokemon_env.ACTIONS[action]] += 1
        episode_return += float(reward)
        episode_length += 1
        if recorder is not None:
            recorder.add(screen_rgb(env))
        if saver is not None:
            saver.after_step(env)
        if terminated or truncated:
            break
    if visit_counts is not None:
        pokemon_env.add_visits(visit_counts, info["visited_tiles"])
    result = {"episode_return": episode_return, "episode_length": episode_length, **pokemon_env.episode_stats(info)}
    result["action_counts"] = action_counts
    return result


def episode_line(index: int, total: int, result: dict) -> str:
    parts = [f"{label} {format(result.get(key, 0), fmt)}" for key, label, fmt in METRICS]
    return f"episode {index}/{total}: " + " | ".join(parts)


def summarize(results: list) -> dict:
    summary = {}
    for key, _, _ in METRICS:
        values = np.array([float(r.get(key, 0)) for r in results])
        summary[key] = {"mean": float(values.mean()), "std": float(values.std()),
                        "min": float(values.min()), "max": float(values.max())}
    return summary


def summary_table(summary: dict) -> str:
    """A Markdown table: one row per metric, mean / std / min / max over the episodes."""
    rows = [["metric", "mean", "std", "min", "max"]]
    for key, label, fmt in METRICS:
        stats = summary[key]
        if fmt == "d":  # whole numbers: whole min and max, two decimals for the mean and std
            rows.append([label, f"{stats['mean']:.2f}", f"{stats['std']:.2f}",
                         f"{stats['min']:.0f}", f"{stats['max']:.0f}"])
        else:
            rows.append([label] + [format(stats[s], fmt) for s in ("mean", "std", "min", "max")])
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("| " + " | ".join(cells) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def main(argv=None):
    args = tyro.cli(Args, args=argv)
    problem = check_args(args)
    if problem:
        fail(problem)
    try:
        checkpoint_path, checkpoint = find_checkpoint(args.checkpoint)
        if args.checkpoint is None or os.path.isdir(args.checkpoint):
            print(f"checkpoint: {checkpoint_path} (the newest)")
        env_kwargs = env_settings(checkpoint, args)
    except PlayError as e:
        fail(str(e))

    # Seeding: the env resets below take seed + episode; torch drives the action sampling.
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # one observation at a time: more threads only add overhead (measured 2-40x)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    recorder = None
    try:
        env = make_env(env_kwargs, args.render)
        try:
            agent = agent_from_checkpoint(checkpoint, env.observation_space.shape, int(env.action_space.n)).to(device)
        except ValueError as e:  # the trainer's CheckpointError: the agent does not fit this env
            env.close()
            raise PlayError(str(e)) from None
    except PlayError as e:
        fail(str(e))
    rom_path, rom_sha1 = env_kwargs["rom_path"], env.rom_sha1
    trained_sha1 = checkpoint.get("rom_sha1")
    if trained_sha1 is not None and trained_sha1 != rom_sha1:
        trained_on = checkpoint.get("rom_name") or "another ROM"
        warn(f"this checkpoint was trained on {trained_on} (SHA-1 {trained_sha1[:12]}), not on {rom_path} "
             f"(SHA-1 {rom_sha1[:12]}): expect it to play poorly")
    if args.render:
        env.pyboy.set_emulation_speed(args.speed)
    if args.record is not None:
        fps = args.record_fps or min(GIF_MAX_FPS, 60 / env.frame_skip * RECORD_SPEEDUP)
        try:
            recorder = Recorder(args.record, fps)
        except Exception as e:
            env.close()
            fail(f"cannot record to {args.record}: {pokemon_env.first_line(e)}")

    mode = "greedy" if args.greedy else "sampled"
    print(f"run {checkpoint.get('run_name', '?')}, update {checkpoint.get('update', '?')}, "
          f"{checkpoint.get('global_step', 0):,} steps trained | {env.rom_name} ({rom_path}) | "
          f"observations {tuple(env.observation_space.shape)} | {mode} actions, seed {args.seed} | "
          f"{args.episodes} episode{'s' if args.episodes > 1 else ''} of {env.max_steps} steps", flush=True)

    results, interrupted, start = [], False, time.time()
    visit_counts = {} if args.world_map is not None else None
    saver = None if args.save_states is None else StateSaver(
        args.save_states, args.save_every, pokemon_env.load_world(env.rom), args.episodes)
    try:
        for episode in range(args.episodes):
            seed = args.seed + episode
            result = {"episode": episode + 1, "seed": seed}
            result.update(play_episode(env, agent, seed, args.greedy, recorder, visit_counts, saver, episode + 1))
            results.append(result)
            print(episode_line(episode + 1, args.episodes, result), flush=True)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (see below)
        interrupted = stop.args[0] if stop.args else signal.SIGINT
        name = "Ctrl-C" if interrupted == signal.SIGINT else signal.Signals(interrupted).name
        print(f"\n{name}: stopped after {len(results)} of {args.episodes} episodes", flush=True)
    finally:
        env.close()
        if recorder is not None:
            recorder.close()
    seconds = time.time() - start

    summary = summarize(results) if results else {}
    if results:
        print(f"\nsummary over {len(results)} episode{'s' if len(results) > 1 else ''} "
              f"({mode} actions, seed {args.seed}):")
        print(summary_table(summary))
    if recorder is not None and recorder.frames:
        print(f"recording: {args.record} ({recorder.frames} frames at {recorder.fps:g} fps)")
    if visit_counts:
        image = pokemon_env.render_world_map(visit_counts, len(results), pokemon_env.load_world(env.rom))
        cv2.imwrite(args.world_map, image[..., ::-1])  # RGB to OpenCV's BGR
        print(f"world map: {args.world_map}")
    if saver is not None:
        print(f"saved states: {len(saver.paths)} in {args.save_states} (use it as --init-state)")
    if args.json is not None:  # atomically: a comparison script never reads half a file
        write_atomically(args.json, lambda f: f.write(json.dumps({
            "checkpoint": checkpoint_path,
            "run_name": checkpoint.get("run_name"),
            "update": checkpoint.get("update"),
            "global_step": checkpoint.get("global_step"),
            "rom_path": rom_path,
            "rom_sha1": rom_sha1,
            "trained_rom_sha1": trained_sha1,
            "env_kwargs": env_kwargs,
            "greedy": args.greedy,
            "seed": args.seed,
            "episodes_requested": args.episodes,
            "interrupted": bool(interrupted),
            "seconds": round(seconds, 3),
            "episodes": results,
            "summary": summary,
            "recording": None if recorder is None else
            {"path": args.record, "fps": recorder.fps, "frames": recorder.frames},
            "saved_states": None if saver is None else saver.paths,
        }, indent=2).encode() + b"\n"))
        print(f"results: {args.json}")
    if interrupted:
        sys.exit(128 + interrupted)


stop_signal = None  # the first Ctrl-C or SIGTERM, noted by `interrupt`


def interrupt(signum, frame):
    """Ctrl-C, and SIGTERM (from `timeout`, `docker stop`, a batch scheduler) as Ctrl-C: the episode stops at its
    next step, a second signal at once. Raised here, the first could land inside PyBoy's tick, which swallows it."""
    global stop_signal
    if stop_signal is not None:
        raise KeyboardInterrupt(signum)
    stop_signal = signum


if __name__ == "__main__":
    # Set here, not inherited: a shell that starts a job in the background makes it ignore SIGINT.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    main()
