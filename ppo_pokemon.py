"""PPO for Pokemon Red on the PyBoy emulator, in one file read top to bottom.

Modelled on CleanRL's ppo_atari.py (https://docs.cleanrl.dev/rl-algorithms/ppo/), and on its
ppo_atari_multigpu.py for data-parallel runs under torchrun: same order, same names, so the files
diff cleanly. Where we depart from them, a short comment says why.

    python ppo_pokemon.py --rom-path roms/standin.gb --total-timesteps 50000   # no-ROM demo
    python ppo_pokemon.py                                                     # laptop default
    python ppo_pokemon.py --num-envs 16 --total-timesteps 10000000 --max-steps 20480
    torchrun --standalone --nproc-per-node 2 ppo_pokemon.py --num-envs 8      # two data-parallel ranks

Exit status: 0 finished; 1 stopped by a failure (a dead env worker, a lost rank, non-finite numbers,
a failed save: one line on stderr, after saving the last whole update where it can); 2 refused before
training (bad arguments, missing ROM, unusable checkpoint or folder: one line on stderr); 130 stopped
by Ctrl-C, 143 by SIGTERM, after saving a checkpoint.
"""
import dataclasses
import functools
import glob
import hashlib
import math
import os
import random
import re
import secrets
import signal
import sys
import tempfile
import time
import warnings
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Literal, Optional

# Import-time notices from dependencies, not for our users: keep stderr for our own messages.
warnings.filterwarnings("ignore", message="The pynvml package is deprecated")
warnings.filterwarnings("ignore", message="Using SDL2 binaries")

import numpy as np
import psutil
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.optim as optim
import tyro
from torch.distributions.categorical import Categorical
from torch.utils.tensorboard import SummaryWriter

import pokemon_env


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """experiment label, part of the run name (runs/<run_name>, checkpoints/<run_name>)"""
    seed: int = 1
    """seeds python, numpy, torch and the environments"""
    torch_deterministic: bool = True
    """ask cuDNN for deterministic kernels (slower on GPU, no effect on CPU)"""
    cuda: bool = True
    """use a CUDA GPU when one is present"""
    torch_threads: int = 0
    """CPU threads for the PPO update (0: one per physical core); the rollout uses one"""

    env: tyro.conf.OmitArgPrefixes[pokemon_env.EnvSettings] = dataclasses.field(
        default_factory=pokemon_env.EnvSettings)
    """the environment's settings, declared in pokemon_env.EnvSettings (recorded in checkpoints)"""

    # Vectorisation
    vec_backend: Literal["auto", "serial", "multiprocessing"] = "auto"
    """vector backend; auto: multiprocessing, one worker per physical core (serial if just one)"""
    num_workers: Optional[int] = None
    """multiprocessing worker processes (per rank); None: the largest divisor of the envs up to the cores"""

    # PPO
    total_timesteps: int = 500_000
    """environment steps to train for, summed over all envs"""
    learning_rate: float = 2.5e-4
    """Adam step size at the start (see --anneal-lr)"""
    num_envs: int = 4
    """emulators stepped together (over all ranks when run by torchrun)"""
    batch_size: int = 2048
    """env steps per update, over all ranks (used when --num-steps is not given)"""
    num_steps: Optional[int] = None
    """steps per env per rollout, overriding --batch-size; None: batch_size / num_envs"""
    minibatch_size: int = 256
    """samples per gradient step, over all ranks"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 at --total-timesteps"""
    gamma: float = 0.99
    """discount per step"""
    gae_lambda: float = 0.95
    """GAE lambda: bias (0) versus variance (1) of the advantage estimates"""
    update_epochs: int = 4
    """passes over each batch in an update"""
    norm_adv: bool = True
    """standardise advantages within each minibatch"""
    clip_coef: float = 0.2
    """PPO ratio clip range (also bounds the value change when --clip-vloss)"""
    clip_vloss: bool = True
    """clip the value update around the rollout values, as for the policy"""
    ent_coef: float = 0.01
    """weight of the entropy bonus"""
    vf_coef: float = 0.5
    """weight of the value loss"""
    max_grad_norm: float = 0.5
    """clip the global gradient norm to this"""
    target_kl: Optional[float] = None
    """stop an update's epochs early once their mean approximate KL exceeds this"""

    # Logging, evaluation and checkpoints
    save_interval: int = 50
    """save a checkpoint every this many updates (and at the end)"""
    eval_interval: int = 50
    """evaluate the current policy every this many updates"""
    eval_episodes: int = 1
    """episodes per evaluation, in a separate env (kept cheap: one by default); 0 disables it"""
    eval_max_steps: Optional[int] = None
    """episode length limit during evaluation; None: --max-steps"""
    heatmap_interval: int = 10
    """log the exploration heatmap and the world map every this many updates"""
    run_name: Optional[str] = None
    """the run's folder name under runs/ and checkpoints/; None: ROM, experiment, seed, time, random"""
    resume: Optional[str] = None
    """continue a run with its settings (flags given again override them): a checkpoint, a run's folder
    (its newest), or auto: --run-name's newest checkpoint if it has one, else start that run"""


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    """Orthogonal weights scaled by `std`, constant bias: the usual PPO initialisation."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    """The Nature-DQN CNN actor-critic, sized from the observation shape (C, H, W).

    Takes uint8 observations and scales them to [0, 1] itself. 1.69M parameters at (4, 84, 84).
    Departure from CleanRL: weights and inputs in the channels-last layout, in which the update's
    convolutions ran 1.5x faster on this project's 2-core CPU (benchmarks/README.md).
    """

    def __init__(self, obs_shape, num_actions: int = 8):
        super().__init__()
        self.network = nn.Sequential(
            layer_init(nn.Conv2d(obs_shape[0], 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():  # 64 x 7 x 7 = 3136 at 84x84
            n_flatten = self.network(torch.zeros(1, *obs_shape)).shape[1]
        self.network.append(layer_init(nn.Linear(n_flatten, 512)))
        self.network.append(nn.ReLU())
        self.actor = layer_init(nn.Linear(512, num_actions), std=0.01)
        self.critic = layer_init(nn.Linear(512, 1), std=1)
        self.to(memory_format=torch.channels_last)

    def hidden(self, x):
        # float() then an in-place division: the same numbers as x / 255.0 in half its time here
        return self.network(x.contiguous(memory_format=torch.channels_last).float().div_(255.0))

    def get_value(self, x):
        return self.critic(self.hidden(x))

    def get_action_and_value(self, x, action=None):
        hidden = self.hidden(x)
        logits = self.actor(hidden)
        # No argument checks: they cost 0.2 ms a rollout step; non-finite weights stop the run instead.
        probs = Categorical(logits=logits, validate_args=False)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(hidden)


def compute_gae(rewards, values, terminations, truncations, dones, next_value, gamma, gae_lambda):
    """Generalised advantage estimates and returns for one rollout; all inputs (num_steps, num_envs).

    rewards[t], terminations[t], truncations[t]: what step t returned for the action taken on obs[t].
    values[t]: V(obs[t]); next_value: V(next_obs), the observation after the last step.
    dones[t]: obs[t] is an episode's final observation, so step t is PufferLib's reset step: the
    env ignored the action and returned a first observation. It is no transition: advantage 0.

    Departure from CleanRL: a truncation (time limit) is not a termination. The return bootstraps
    from V(final observation), which is values[t + 1] because the agent is run on the final
    observation in the reset step that follows; a termination bootstraps from 0. Either way the
    advantage does not run on across the episode boundary.
    """
    num_steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    lastgaelam = torch.zeros_like(next_value)
    for t in reversed(range(num_steps)):
        nextvalues = next_value if t == num_steps - 1 else values[t + 1]
        nextnonterminal = 1.0 - terminations[t]
        nextnotdone = 1.0 - torch.maximum(terminations[t], truncations[t])
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        lastgaelam = (delta + gamma * gae_lambda * nextnotdone * lastgaelam) * (1.0 - dones[t])
        advantages[t] = lastgaelam
    return advantages, advantages + values


def ppo_loss(newlogprob, entropy, newvalue, logprobs, advantages, returns, values,
             clip_coef, clip_vloss, norm_adv):
    """CleanRL's PPO loss terms for one minibatch, in a function so tests can check them.

    Returns (pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, clipfrac); the last three
    carry no gradient.
    """
    logratio = newlogprob - logprobs
    ratio = logratio.exp()

    with torch.no_grad():
        # KL(old || new) estimates k1 and k3 of http://joschu.net/blog/kl-approx.html
        old_approx_kl = (-logratio).mean()
        approx_kl = ((ratio - 1) - logratio).mean()
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean()

    if norm_adv and len(advantages) > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

    # Policy loss
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean()

    # Value loss
    newvalue = newvalue.view(-1)
    if clip_vloss:
        v_loss_unclipped = (newvalue - returns) ** 2
        v_clipped = values + torch.clamp(newvalue - values, -clip_coef, clip_coef)
        v_loss_clipped = (v_clipped - returns) ** 2
        v_loss_max = torch.max(v_loss_unclipped, v_loss_clipped)
        v_loss = 0.5 * v_loss_max.mean()
    else:
        v_loss = 0.5 * ((newvalue - returns) ** 2).mean()

    return pg_loss, v_loss, entropy.mean(), old_approx_kl, approx_kl, clipfrac


# Ours, not CleanRL's: vectorisation, checks, data-parallel ranks, checkpoints, stopping, evaluation.


def choose_vectorization(args: Args, num_envs: int, physical_cores: int):
    """(backend name, num_workers or None) for `num_envs` envs on `physical_cores` cores.

    pokemon_env.Multiprocessing (workers that sleep while they wait) collected faster than Serial
    on 2 cores, with random actions and with the policy in the loop (benchmarks/README.md), so it is
    the default whenever the envs can be shared out over more than one worker, one per core at most.
    """
    backend = args.vec_backend
    if backend == "serial":
        return "serial", None
    if args.num_workers is not None:
        return "multiprocessing", args.num_workers
    num_workers = max(w for w in range(1, physical_cores + 1) if num_envs % w == 0)
    if backend == "auto" and num_workers == 1:
        return "serial", None  # one worker would only add a hop
    return "multiprocessing", num_workers


def check_args(args: Args, physical_cores: int, world_size: int = 1) -> Optional[str]:
    """The reason the arguments cannot work, in one line, or None."""
    for field in dataclasses.fields(Args):
        value = getattr(args, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            return f"--{field.name.replace('_', '-')} must be a finite number (got {value})"
    if args.num_envs < 1:
        return f"--num-envs must be at least 1 (got {args.num_envs})"
    if args.num_envs % world_size:
        return f"--num-envs ({args.num_envs}) must be divisible by the {world_size} ranks"
    if args.num_steps is not None and args.num_steps < 1:
        return f"--num-steps must be at least 1 (got {args.num_steps})"
    if args.num_steps is None and (args.batch_size < 1 or args.batch_size % args.num_envs):
        return f"--batch-size ({args.batch_size}) must be a positive multiple of --num-envs ({args.num_envs})"
    batch_size = args.num_envs * (args.num_steps or args.batch_size // args.num_envs)
    if args.minibatch_size < 1 or batch_size % args.minibatch_size:
        return f"the batch ({batch_size} steps) must be divisible by --minibatch-size ({args.minibatch_size})"
    if args.minibatch_size % world_size:
        return f"--minibatch-size ({args.minibatch_size}) must be divisible by the {world_size} ranks"
    if args.total_timesteps < batch_size:
        return f"--total-timesteps ({args.total_timesteps}) is less than one batch ({batch_size} steps)"
    for name in ("update_epochs", "save_interval", "eval_interval", "heatmap_interval"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})"
    if args.eval_episodes < 0:
        return f"--eval-episodes must be 0 (off) or more (got {args.eval_episodes})"
    if args.eval_max_steps is not None and args.eval_max_steps < 1:
        return f"--eval-max-steps must be at least 1 (got {args.eval_max_steps})"
    if not (0.0 <= args.gamma <= 1.0 and 0.0 <= args.gae_lambda <= 1.0):
        return "--gamma and --gae-lambda must lie in [0, 1]"
    for name in ("learning_rate", "clip_coef", "max_grad_norm", "target_kl"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            return f"--{name.replace('_', '-')} must be positive (got {getattr(args, name)})"
    for name in ("ent_coef", "vf_coef"):
        if getattr(args, name) < 0:
            return f"--{name.replace('_', '-')} must be 0 or more (got {getattr(args, name)})"
    env_problem = args.env.problem()
    if env_problem:
        return env_problem
    if min(args.env.obs_height, args.env.obs_width) < 36:
        return f"observations must be at least 36x36 for the CNN (got {args.env.obs_height}x{args.env.obs_width})"
    backend, num_workers = choose_vectorization(args, args.num_envs // world_size, physical_cores)
    if backend == "serial" and args.num_workers is not None:
        return "--num-workers applies only to --vec-backend multiprocessing"
    if backend == "multiprocessing":
        if num_workers < 1 or (args.num_envs // world_size) % num_workers:
            return f"--num-envs per rank ({args.num_envs // world_size}) must be divisible by --num-workers ({num_workers})"
        if num_workers > physical_cores:
            return f"--num-workers ({num_workers}) exceeds the {physical_cores} physical cores"
    if args.run_name is not None and (not args.run_name.strip() or os.sep in args.run_name or args.run_name in ".."):
        return f"--run-name must be a plain folder name (got {args.run_name!r})"
    if not os.path.isfile(args.env.rom_path):
        return (f"ROM not found: {args.env.rom_path}: put your own legally obtained Pokemon Red there "
                f"(SHA-1 {pokemon_env.RED_SHA1}), or try --rom-path roms/standin.gb")
    try:
        args.env.start_state_files()
    except pokemon_env.StateError as e:
        return str(e)
    return None


def fail(message: str, status: int = 2):
    """Refuse in one line on stderr, exit status 2 by default."""
    print(f"ppo_pokemon.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings (an unknown ROM, say) in one line, without Python's source line."""
    print(f"ppo_pokemon.py: warning: {message}", file=sys.stderr, flush=True)


def flat_args(args: Args) -> dict:
    """Args as one flat dict, the environment's settings beside the rest, as checkpoints store them."""
    flat = {field.name: getattr(args, field.name) for field in dataclasses.fields(Args) if field.name != "env"}
    return {**flat, **dataclasses.asdict(args.env)}


def args_from_flat(flat: dict) -> Args:
    """The inverse of flat_args; names this version does not know are ignored."""
    env_names = {field.name for field in dataclasses.fields(pokemon_env.EnvSettings)}
    names = {field.name for field in dataclasses.fields(Args)} - {"env"}
    env = pokemon_env.EnvSettings(**{k: v for k, v in flat.items() if k in env_names})
    return Args(**{k: v for k, v in flat.items() if k in names}, env=env)


def file_sha1(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def writable_folder_problem(folder: str) -> Optional[str]:
    """Why `folder` cannot be created or written, in one line, or None. Creates nothing."""
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing) or "."
    if not os.path.isdir(existing):
        return f"cannot create {folder}/: {existing} is a file"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        return f"cannot write to {existing}/: {e.strerror or e}"
    return None


class RunStopped(Exception):
    """Ends the run before its last update, with a one-line reason; save=False: do not save on the way out."""

    def __init__(self, message: str, save: bool = True):
        super().__init__(message)
        self.save = save


def show_run_stopped(kind, error, traceback):
    """sys.excepthook: a run stopped before training began (a rank lost while starting) in one line."""
    if issubclass(kind, RunStopped):
        print(f"ppo_pokemon.py: error: {error}", file=sys.stderr, flush=True)
    else:
        sys.__excepthook__(kind, error, traceback)


# ----- Data-parallel ranks (torchrun); with one process each helper is the identity -----


def collective(function):
    """A collective operation that raises RunStopped, in one line, when another rank has gone."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except RuntimeError as e:  # gloo: "Connection closed by peer ..."
            raise RunStopped(f"lost contact with another rank ({str(e).strip().splitlines()[0][:200]})") from None
    return wrapper


@collective
def all_gather(value) -> list:
    """Every rank's `value`, in rank order."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


@collective
def broadcast(value):
    """Rank 0's `value`, on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@collective
def all_reduce_mean(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """The mean over ranks, in place."""
    if dist.is_initialized():
        dist.all_reduce(tensor, group=group)
        tensor /= dist.get_world_size()
    return tensor


CHECKPOINT_FORMAT = "ppo_pokemon/1"
TEMPORARY_SUFFIX = re.compile(r"\.tmp(\d+)$")  # checkpoint_update000050.pt.tmp<pid>, never *.pt


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line."""


def rng_states() -> dict:
    """Python, numpy and torch RNG states as tensors and plain types (for weights_only loading)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    random.setstate(tuple(tuple(s) if isinstance(s, list) else s for s in states["python"]))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(path: str, checkpoint: dict) -> None:
    """Write atomically: a temporary file, flushed to disk, then renamed over the target. A failed
    write removes its temporary file and leaves the previous checkpoints as they were."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp_path = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp_path, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:  # a full disk, or a second Ctrl-C in the middle
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def remove_stale_temporary_files(folder: str) -> None:
    """Temporary checkpoint files left by processes that were killed while saving."""
    for path in glob.glob(os.path.join(folder, "*.tmp*")):
        match = TEMPORARY_SUFFIX.search(path)
        if match and not psutil.pid_exists(int(match.group(1))):
            os.remove(path)


def newest_checkpoint(folder: str) -> Optional[str]:
    """The newest checkpoint (by modification time) under `folder`, or None."""
    candidates = [path for path in glob.glob(os.path.join(folder, "**", "*.pt"), recursive=True)
                  if os.path.isfile(path)]
    return max(candidates, key=os.path.getmtime, default=None)


def checkpoint_to_resume(args: Args) -> Optional[str]:
    """The file --resume means: itself; a folder's newest checkpoint; with auto, the newest of
    checkpoints/<run_name>/ or None (a new run). Raises CheckpointError."""
    if args.resume == "auto":
        if args.run_name is None:
            raise CheckpointError("--resume auto continues the run named by --run-name: give --run-name NAME too")
        return newest_checkpoint(os.path.join("checkpoints", args.run_name))
    if os.path.isdir(args.resume):
        path = newest_checkpoint(args.resume)
        if path is None:
            raise CheckpointError(f"no checkpoint (*.pt) under {args.resume}/")
        return path
    return args.resume


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load a checkpoint written by this script, or raise CheckpointError with a one-line reason."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a damaged file raises one of many types, depending on where it broke
        reason = " ".join(str(e).split()) or type(e).__name__
        reason = reason.split("WeightsUnpickler error:")[-1].split(" Check the documentation")[0]
        reason = reason.strip().split(". ")[0][:160]  # the first sentence of torch's long message
        raise CheckpointError(f"cannot read checkpoint {path} (corrupt or not one): {reason}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint written by ppo_pokemon.py")
    return checkpoint


class StopRequest:
    """Handler of Ctrl-C (SIGINT) and SIGTERM: the first asks for a checkpoint of the last whole
    update and a clean stop (exit status 128 + the signal's number); a second aborts at once."""

    def __init__(self):
        self.signal = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __call__(self, signum, frame):
        if self.requested:
            raise SystemExit(128 + signum)  # checkpoints on disk are whole: they are written atomically
        self.signal = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: stopping to save a checkpoint of the last whole update (again: abort)", flush=True)


def evaluate(agent, env, episodes, seed: int, device, stop: StopRequest) -> list:
    """Each episode's stats for the current policy (sampling, as in training); episode i resets with seed + i."""
    results = []
    for episode in episodes:
        next_obs, _ = env.reset(seed=seed + episode)
        while not stop.requested:
            with torch.no_grad():
                action, _, _, _ = agent.get_action_and_value(torch.as_tensor(next_obs, device=device)[None])
            next_obs, _, terminated, truncated, info = env.step(action.item())
            if terminated or truncated:
                results.append(episode_scalars(info))
                break
    return results


def episode_scalars(info: dict) -> dict:
    """An episode info's statistics: its scalars, except the start state's index."""
    return {key: float(value) for key, value in info.items() if np.ndim(value) == 0 and key != "start_state"}


# TensorBoard names for the episode stats that the original design logs under its own names.
EPISODE_TAGS = {"episode_return": "mean_reward", "episode_length": "mean_length", "badges": "mean_badges"}


def log_episode_stats(writer, prefix: str, episodes: list, global_step: int) -> None:
    """The mean of each stat over `episodes` (dicts of scalars)."""
    for key in episodes[0]:
        mean = float(np.mean([episode[key] for episode in episodes]))
        writer.add_scalar(f"{prefix}/{EPISODE_TAGS.get(key, key)}", mean, global_step)


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def fail_on_any_rank(problem: Optional[str]) -> None:
    """Exit status 2 on every rank if any rank has a problem; a rank prints its own, rank 0 the first."""
    problems = [(r, p) for r, p in enumerate(all_gather(problem)) if p]
    if problem:
        fail(problem)
    if problems:
        if dist.is_initialized() and dist.get_rank() == 0:
            fail(f"rank {problems[0][0]}: {problems[0][1]}")
        sys.exit(2)


if __name__ == "__main__":
    args = tyro.cli(Args)
    warnings.showwarning = show_warning
    sys.excepthook = show_run_stopped
    # Departure from CleanRL's single process: under torchrun every rank runs its own envs and rollout,
    # and the ranks average their gradients every minibatch, as CleanRL's ppo_atari_multigpu.py does.
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank, local_world_size = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if world_size > 1:
        # Imported before the group exists: imported later (as the first optimizer does, through torch's
        # compiler) it keeps the group alive after destroy_process_group(), and the group's gloo threads,
        # still running at interpreter exit, abort it now and then (PyTorch 2.13; pytorch/pytorch#179291).
        import torch.distributed.checkpoint  # noqa: F401
        # torchrun's restarts reuse one store, which still holds the addresses of the last attempt's ranks
        # (pytorch/pytorch#135712): a prefix per attempt keeps a restarted rank from dialing a dead one.
        store, _, _ = next(dist.rendezvous("env://"))
        store = dist.PrefixStore(f"attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}", store)
        # gloo: the small messages, and the gradients unless all ranks have GPUs
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    cores = max(1, (psutil.cpu_count(logical=False) or os.cpu_count() or 1) // local_world_size)

    checkpoint, resume_path, problem = None, None, None
    if args.resume and rank == 0:
        # Departure from CleanRL, which cannot resume: the run's settings come from the checkpoint;
        # flags given again (say --total-timesteps) override them. Rank 0 reads it for every rank.
        try:
            resume_path = checkpoint_to_resume(args)
            checkpoint = load_checkpoint(resume_path) if resume_path is not None else None
        except CheckpointError as e:
            problem = str(e)
    checkpoint, resume_path, problem = broadcast((checkpoint, resume_path, problem))
    fail_on_any_rank(problem)
    if checkpoint is not None:
        args = tyro.cli(Args, default=args_from_flat({**checkpoint["args"], "resume": args.resume,
                                                      "run_name": args.run_name}))
    fail_on_any_rank(check_args(args, cores, world_size))
    args.env.init_state = args.env.start_state_files()  # folders as their files: the run keeps its states
    saved_args = flat_args(args)  # as given, before the derived sizes below
    if args.num_steps is None:
        args.num_steps = args.batch_size // args.num_envs
    args.batch_size = int(args.num_envs * args.num_steps)
    num_iterations = args.total_timesteps // args.batch_size
    local_num_envs, local_minibatch_size = args.num_envs // world_size, args.minibatch_size // world_size
    if checkpoint is not None and int(checkpoint["update"]) >= num_iterations:
        fail_on_any_rank(f"the run is complete: update {checkpoint['update']} of {num_iterations}, step "
                         f"{checkpoint['global_step']:,}; give a larger --total-timesteps to continue it")
    env_kwargs = dataclasses.asdict(args.env)
    rom_sha1 = file_sha1(args.env.rom_path)
    if checkpoint is not None:
        run_name = args.run_name or checkpoint["run_name"]
        if checkpoint.get("rom_sha1") != rom_sha1 and rank == 0:
            warnings.warn(f"{args.env.rom_path} is not the ROM this checkpoint was trained on")
    else:  # seconds and a random suffix: two runs started together get folders of their own
        rom_name = os.path.splitext(os.path.basename(args.env.rom_path))[0]
        run_name = args.run_name or f"{rom_name}__{args.exp_name}__{args.seed}__{int(time.time())}_{secrets.token_hex(2)}"
    run_name = broadcast(run_name)
    checkpoint_dir, log_dir = os.path.join("checkpoints", run_name), os.path.join("runs", run_name)
    problem = None
    if rank == 0:  # found out now, not at the first save
        if checkpoint is None and newest_checkpoint(checkpoint_dir) is not None:
            problem = (f"run {run_name} already has checkpoints in {checkpoint_dir}/: continue it with "
                       f"--resume auto --run-name {run_name}, or give another --run-name")
        problem = problem or writable_folder_problem(checkpoint_dir) or writable_folder_problem(log_dir)
        if problem is None:
            remove_stale_temporary_files(checkpoint_dir)
    fail_on_any_rank(problem)

    # Seeding: every rank draws the same initial weights from --seed, then (below) episodes of its own
    seed_everything(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    learner_threads = args.torch_threads or cores
    use_cuda = torch.cuda.is_available() and args.cuda
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    gradient_group = dist.new_group(backend="nccl") if world_size > 1 and all(all_gather(use_cuda)) else None

    # Environments. Departure from CleanRL: when each of two or more workers has at most 2 envs, the envs
    # form two groups (by worker), so that the policy chooses one group's actions while the other group's
    # emulators step: with 4 envs on 2 cores the rollout ran 1.34x faster; with 4 or more envs a worker
    # the cores were busy anyway and one group was as fast or faster (benchmarks/README.md).
    stop = StopRequest()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    backend, num_workers = choose_vectorization(args, local_num_envs, cores)
    envs_per_worker = local_num_envs // (num_workers or 1)
    two_groups = (num_workers or 0) > 1 and envs_per_worker <= 2
    group_workers = [num_workers // 2, num_workers - num_workers // 2] if two_groups else [num_workers]
    env_groups, first_env = [], 0  # [(vector env, slice of this rank's envs)]
    try:
        for workers in group_workers:
            group_envs = envs_per_worker * (workers or 1)
            envs = pokemon_env.make_vector_env(env_kwargs, group_envs, backend, workers, first_env)
            env_groups.append((envs, slice(first_env, first_env + group_envs)))
            first_env += group_envs
    except (OSError, ValueError, RuntimeError) as e:  # a bad ROM or state, or a worker that failed to start
        for envs, _ in env_groups:
            envs.close()
        fail(f"cannot start the environment: {(str(e).strip().splitlines() or [type(e).__name__])[0]}")
    obs_shape = tuple(env_groups[0][0].single_observation_space.shape)
    num_actions = int(env_groups[0][0].single_action_space.n)

    agent = Agent(obs_shape, num_actions).to(device)
    # fused: Adam's whole step in one kernel; 6% faster updates here than its default for-each kernels
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    global_step, start_iteration, best_badges = 0, 1, 0.0
    if checkpoint is not None:
        problem = None
        if tuple(checkpoint["obs_shape"]) != obs_shape:
            problem = f"checkpoint observations are {tuple(checkpoint['obs_shape'])}, this env gives {obs_shape}"
        try:
            agent.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            problem = problem or f"checkpoint does not fit this agent: {str(e).strip().splitlines()[0][:160]}"
        if problem:
            for envs, _ in env_groups:
                envs.close()
            fail(problem)
        global_step = int(checkpoint["global_step"])
        start_iteration = int(checkpoint["update"]) + 1
        best_badges = float(checkpoint.get("best_badges", 0.0))
        set_rng_states(checkpoint["rng"])
    if rank > 0:
        seed_everything(args.seed + rank + global_step)  # this rank's own episodes and samples

    writer = None
    if rank == 0:
        # Departure from CleanRL: on resume, purge_step hides the events logged after the checkpoint.
        writer = SummaryWriter(log_dir, purge_step=global_step + 1 if checkpoint is not None else None)
        if checkpoint is None:
            rows = "".join(f"\n| {name} | {value} |" for name, value in saved_args.items())
            writer.add_text("hyperparameters", "| argument | value |\n|---|---|" + rows)
            if args.env.init_state:  # the files behind the indices of episode/return_by_start_state
                rows = "".join(f"\n| {index} | {path} |" for index, path in enumerate(args.env.init_state))
                writer.add_text("start_states", "| index | file |\n|---|---|" + rows)
        workers = f", {num_workers} worker{'s' if num_workers > 1 else ''}" if num_workers else ""
        workers += f" in {len(env_groups)} groups" if len(env_groups) > 1 else ""
        ranks = f" on each of {world_size} ranks" if world_size > 1 else ""
        rounded = (f" (--total-timesteps {args.total_timesteps:,} rounded down to whole updates)"
                   if args.total_timesteps % args.batch_size else "")
        rounded += f", from update {start_iteration - 1} of {resume_path}" if checkpoint is not None else ""
        print(f"run {run_name}: {local_num_envs} envs ({backend}{workers}){ranks}, {num_iterations} updates of "
              f"{args.batch_size:,} steps = {num_iterations * args.batch_size:,} steps{rounded}, {device}, "
              f"{sum(p.numel() for p in agent.parameters()):,} parameters", flush=True)

    last_checkpoint = resume_path

    def write_checkpoint(update: int, step: int) -> str:
        path = os.path.join(checkpoint_dir, f"checkpoint_update{update:06d}.pt")
        try:
            save_checkpoint(path, {
                "format": CHECKPOINT_FORMAT,
                "model": agent.state_dict(),
                "optimizer": optimizer.state_dict(),
                "args": saved_args,
                "global_step": step,
                "update": update,
                "run_name": run_name,
                "rng": rng_states(),
                "obs_shape": list(obs_shape),
                "num_actions": num_actions,
                "env_kwargs": env_kwargs,
                "rom_sha1": rom_sha1,
                "rom_name": os.path.basename(args.env.rom_path),
                "best_badges": best_badges,
                "torch_version": str(torch.__version__),
            })
        except OSError as e:  # a full disk, say: the checkpoints already written stay as they were
            raise RunStopped(f"cannot save {path}: {e.strerror or e}", save=False) from None
        return path

    # Rollout storage for this rank's envs. Departure from CleanRL: what the envs return is kept in numpy
    # arrays until the rollout ends (a torch operation costs more than the copy; one copy to a GPU).
    # (num_steps, num_envs, C, H, W), uint8 as the env gives them: the network scales them. Channels last in
    # memory, the network's layout: minibatches need no conversion (4% of the update's time here).
    obs = torch.zeros((args.num_steps * local_num_envs,) + obs_shape, dtype=torch.uint8, device=device).to(
        memory_format=torch.channels_last).view((args.num_steps, local_num_envs) + obs_shape)
    actions = torch.zeros((args.num_steps, local_num_envs), dtype=torch.long, device=device)  # (num_steps, envs)
    logprobs = torch.zeros((args.num_steps, local_num_envs), device=device)  # (num_steps, num_envs)
    values = torch.zeros((args.num_steps, local_num_envs), device=device)  # (num_steps, num_envs)
    rewards = np.zeros((args.num_steps, local_num_envs), np.float32)  # (num_steps, num_envs)
    terminations = np.zeros((args.num_steps, local_num_envs), np.float32)  # (num_steps, num_envs)
    truncations = np.zeros((args.num_steps, local_num_envs), np.float32)  # (num_steps, num_envs)
    dones = np.zeros((args.num_steps, local_num_envs), np.float32)  # (num_steps, num_envs): 1 = reset step
    # Observations arrive in the backends' buffers, which the next step overwrites: copied out at once,
    # into pinned memory on CUDA so that the copy to the GPU need not wait.
    next_obs = torch.zeros((local_num_envs,) + obs_shape, dtype=torch.uint8, pin_memory=device.type == "cuda")
    next_done = np.zeros(local_num_envs, np.float32)

    # Training
    start_time = time.time()
    start_global_step = global_step
    eval_env, eval_seconds = None, 0.0
    recent_returns = deque(maxlen=20)
    visit_counts, heatmap_episodes, world = {}, 0, pokemon_env.load_world(args.env.rom_path)
    last_update = last_saved = start_iteration - 1
    weights_whole, stopped = True, None
    try:
        for envs, group in env_groups:  # a resumed run does not replay its episodes; ranks play their own
            next_obs[group] = torch.from_numpy(envs.reset(seed=args.seed + global_step + rank * local_num_envs
                                                          + group.start)[0])

        for iteration in range(start_iteration, num_iterations + 1):
            # Linear decay, computed from global_step rather than the iteration index so that a resumed
            # run lands on the same schedule.
            if args.anneal_lr:
                frac = max(0.0, 1.0 - global_step / (num_iterations * args.batch_size))
                optimizer.param_groups[0]["lr"] = frac * args.learning_rate

            # Departure from CleanRL: thread counts set per phase. The rollout's forward pass on a few
            # observations is too small to share out: on 2 cores a second thread did not speed it up, and
            # its spinning between calls slowed the emulators' steps 1.6x (benchmarks/README.md).
            torch.set_num_threads(1)
            rollout_start = time.perf_counter()
            env_seconds = 0.0
            episode_infos = []
            for step in range(0, args.num_steps + 1):  # one pass more: the last step's results come in
                if stop.requested:  # drop the unfinished rollout: the last whole update gets saved
                    raise RunStopped("stopped")
                for envs, group in env_groups:
                    if step > 0:  # this group stepped while the others acted: store what it returned
                        env_start = time.perf_counter()
                        observations, reward, terminated, truncated, infos = envs.recv()[:5]
                        env_seconds += time.perf_counter() - env_start
                        rewards[step - 1, group] = reward
                        terminations[step - 1, group] = terminated
                        truncations[step - 1, group] = truncated
                        next_done[group] = terminated | truncated
                        next_obs[group] = torch.from_numpy(observations)
                        # The backends pass only non-empty infos, without env index: finished episodes.
                        episode_infos += [info for info in infos if "episode_return" in info]
                    if step < args.num_steps:
                        obs[step, group].copy_(next_obs[group], non_blocking=True)
                        dones[step, group] = next_done[group]
                        with torch.no_grad():
                            action, logprob, _, value = agent.get_action_and_value(obs[step, group])
                            values[step, group] = value.flatten()
                        actions[step, group] = action
                        logprobs[step, group] = logprob
                        envs.send(action.cpu().numpy())
            rollout_seconds = time.perf_counter() - rollout_start
            episode_infos = [info for infos in all_gather(episode_infos) for info in infos]  # all ranks'
            global_step += args.batch_size  # every rank's steps, once every rank's rollout is whole

            # Advantages: the value of the observation after the last step closes the rollout.
            torch.set_num_threads(learner_threads)
            update_start = time.perf_counter()
            with torch.no_grad():
                next_value = agent.get_value(next_obs.to(device)).flatten()
                rewards_, terminations_, truncations_, dones_ = (
                    torch.from_numpy(x).to(device) for x in (rewards, terminations, truncations, dones))
                advantages, returns = compute_gae(rewards_, values, terminations_, truncations_, dones_, next_value,
                                                  args.gamma, args.gae_lambda)

            # One flat batch of num_steps * num_envs samples
            b_obs = obs.reshape((-1,) + obs_shape)
            b_logprobs = logprobs.reshape(-1)
            b_actions = actions.reshape(-1)
            b_advantages = advantages.reshape(-1)
            b_returns = returns.reshape(-1)
            b_values = values.reshape(-1)

            # The PPO update. Departure from CleanRL: PufferLib's reset steps are no transitions, so
            # they are left out and the rest is split into near-equal minibatches (as many on every rank);
            # the losses are logged as means over all minibatches, not the last one.
            valid_inds = np.flatnonzero(dones.reshape(-1) == 0)
            num_minibatches = max(all_gather(max(1, round(len(valid_inds) / local_minibatch_size))))
            update_stats = []  # per minibatch: pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, clipfrac
            weights_whole = False
            for epoch in range(args.update_epochs if len(valid_inds) > 1 else 0):
                for mb_inds in np.array_split(np.random.permutation(valid_inds), num_minibatches):
                    _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds],
                                                                                  b_actions[mb_inds])
                    pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, clipfrac = ppo_loss(
                        newlogprob, entropy, newvalue, b_logprobs[mb_inds], b_advantages[mb_inds],
                        b_returns[mb_inds], b_values[mb_inds], args.clip_coef, args.clip_vloss, args.norm_adv,
                    )
                    loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

                    optimizer.zero_grad()
                    loss.backward()
                    if world_size > 1:  # every rank steps with the mean of all ranks' gradients
                        grads = all_reduce_mean(torch.cat([p.grad.flatten() for p in agent.parameters()]),
                                                gradient_group)
                        for p, grad in zip(agent.parameters(), grads.split([p.numel() for p in agent.parameters()])):
                            p.grad.copy_(grad.view_as(p.grad))
                    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                    optimizer.step()
                    update_stats.append(torch.stack([pg_loss.detach(), v_loss.detach(), entropy_loss.detach(),
                                                     old_approx_kl, approx_kl, clipfrac]))

                # Departure from CleanRL: the epoch's mean KL (over all ranks), not its last minibatch's, decides.
                if args.target_kl is not None:
                    if all_reduce_mean(torch.stack(update_stats[-num_minibatches:])[:, 4].mean()).item() > args.target_kl:
                        break

            # Means over this update's minibatches (then over ranks, below)
            losses = torch.stack(update_stats).mean(0).cpu() if update_stats else torch.full((6,), float("nan"))
            if update_stats and not (losses.isfinite().all() and all(p.isfinite().all() for p in agent.parameters())):
                names = ["policy loss", "value loss", "entropy", "old approx KL", "approx KL", "clip fraction"]
                bad = [name for name, value in zip(names, losses.tolist()) if not math.isfinite(value)] or ["weights"]
                raise RunStopped(f"update {iteration}: {', '.join(bad)} not finite; stopped without saving it")
            weights_whole, last_update = True, iteration
            y_pred, y_true = b_values[valid_inds].cpu().numpy(), b_returns[valid_inds].cpu().numpy()
            var_y = np.var(y_true)
            explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y
            update_seconds = time.perf_counter() - update_start
            pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, clipfrac, explained_var = all_reduce_mean(
                torch.cat([losses, torch.tensor([explained_var])])).tolist()

            # Episode statistics, from every rank's finished episodes
            for info in episode_infos:
                recent_returns.append(float(info["episode_return"]))
                best_badges = max(best_badges, float(info.get("badges", 0)))
                pokemon_env.add_visits(visit_counts, info["visited_tiles"])
                heatmap_episodes += 1

            # Logging
            sps = (global_step - start_global_step) / max(time.time() - start_time - eval_seconds, 1e-9)
            if rank == 0:
                writer.add_scalar("train/learning_rate", optimizer.param_groups[0]["lr"], global_step)
                writer.add_scalar("train/value_loss", v_loss, global_step)
                writer.add_scalar("train/policy_loss", pg_loss, global_step)
                writer.add_scalar("train/entropy_loss", entropy_loss, global_step)
                writer.add_scalar("train/old_approx_kl", old_approx_kl, global_step)
                writer.add_scalar("train/approx_kl", approx_kl, global_step)
                writer.add_scalar("train/clipfrac", clipfrac, global_step)
                writer.add_scalar("train/explained_variance", explained_var, global_step)
                writer.add_scalar("perf/steps_per_second", sps, global_step)
                writer.add_scalar("perf/rollout_seconds", rollout_seconds, global_step)
                writer.add_scalar("perf/env_seconds", env_seconds, global_step)
                writer.add_scalar("perf/update_seconds", update_seconds, global_step)
                writer.add_scalar("perf/rollout_steps_per_second", args.batch_size / rollout_seconds, global_step)
                writer.add_scalar("perf/update_samples_per_second",
                                  len(valid_inds) * world_size * args.update_epochs / update_seconds, global_step)
                if episode_infos:
                    log_episode_stats(writer, "episode", [episode_scalars(info) for info in episode_infos],
                                      global_step)
                    writer.add_scalar("episode/count", len(episode_infos), global_step)
                    writer.add_scalar("episode/max_badges", max(info.get("badges", 0) for info in episode_infos),
                                      global_step)
                if len(args.env.init_state or ()) > 1:  # which saves are hard (with one: mean_reward again)
                    by_start_state = defaultdict(list)
                    for info in episode_infos:
                        by_start_state[int(info["start_state"])].append(float(info["episode_return"]))
                    for index, returns in sorted(by_start_state.items()):
                        writer.add_scalar(f"episode/return_by_start_state/{index}", np.mean(returns), global_step)
                if heatmap_episodes and (iteration % args.heatmap_interval == 0 or iteration == num_iterations):
                    image = pokemon_env.render_heatmap(visit_counts, heatmap_episodes, world)
                    writer.add_image("episode/exploration_heatmap", image, global_step, dataformats="HWC")
                    image = pokemon_env.render_world_map(visit_counts, heatmap_episodes, world)
                    writer.add_image("episode/world_map", image, global_step, dataformats="HWC")
                total_steps = num_iterations * args.batch_size
                eta = (total_steps - global_step) / sps
                mean_return = f"{np.mean(recent_returns):.2f}" if recent_returns else "-"
                print(f"update {iteration}/{num_iterations} | step {global_step:,}/{total_steps:,} | "
                      f"{sps:,.0f} steps/s (rollout {rollout_seconds:.1f}s, update {update_seconds:.1f}s) | "
                      f"ETA {format_seconds(eta)} | return(last 20) {mean_return} | best badges {best_badges:g}",
                      end="\r" if sys.stdout.isatty() else "\n", flush=True)
            if heatmap_episodes and (iteration % args.heatmap_interval == 0 or iteration == num_iterations):
                visit_counts, heatmap_episodes = {}, 0

            if iteration % args.save_interval == 0 or iteration == num_iterations:
                if rank == 0:
                    last_checkpoint = write_checkpoint(iteration, global_step)
                last_saved = iteration
            if stop.requested:
                raise RunStopped("stopped")

            if args.eval_episodes > 0 and iteration % args.eval_interval == 0:
                torch.set_num_threads(1)
                eval_start = time.time()
                my_episodes = range(rank, args.eval_episodes, world_size)  # the ranks share the episodes out
                if eval_env is None and my_episodes:
                    eval_env = pokemon_env.PokemonRedEnv(
                        **{**env_kwargs, "max_steps": args.eval_max_steps or args.env.max_steps})
                results = evaluate(agent, eval_env, my_episodes, args.seed + 1_000_000, device, stop)
                results = [result for rank_results in all_gather(results) for result in rank_results]
                eval_seconds += time.time() - eval_start
                if stop.requested:
                    raise RunStopped("stopped")
                if rank == 0:
                    log_episode_stats(writer, "eval", results, global_step)
                    writer.add_scalar("perf/eval_seconds", time.time() - eval_start, global_step)
                    mean = {key: np.mean([result[key] for result in results]) for key in ("episode_return", "badges")}
                    print(f"{chr(10) if sys.stdout.isatty() else ''}eval after update {iteration}: return "
                          f"{mean['episode_return']:.2f}, badges {mean['badges']:g} ({len(results)} episodes)",
                          flush=True)
    except (RunStopped, pokemon_env.WorkerError) as e:
        # A stop asked for, a dead or failing env worker, or a lost rank (a rank that died: torchrun then
        # stops the others with SIGTERM).
        stopped = e
    finally:
        for envs, _ in env_groups:
            envs.close()
        if eval_env is not None:
            eval_env.close()

    # Save the last whole update unless it is saved (or the weights in memory are not whole).
    if rank == 0 and last_update > last_saved and weights_whole and getattr(stopped, "save", True):
        try:
            last_checkpoint = write_checkpoint(last_update, global_step)
        except RunStopped as e:
            stopped = stopped or e
    if rank == 0:
        writer.close()
        if sys.stdout.isatty():
            print()
    resume = f"; continue with: python ppo_pokemon.py --resume {last_checkpoint}" if last_checkpoint else ""
    saved = f"last checkpoint {last_checkpoint}" if last_checkpoint else "no update finished, nothing saved"
    if stopped is not None:
        status = 128 + stop.signal if stop.requested else 1
        if stop.requested and rank == 0:
            print(f"stopped at step {global_step:,}; {saved}{resume}", flush=True)
        elif not stop.requested:
            reason = (str(stopped).strip().splitlines() or [type(stopped).__name__])[0]
            fail(f"{'rank %d: ' % rank if world_size > 1 else ''}{reason}; {saved}{resume}", status)
        sys.exit(status)
    if world_size > 1:  # the invariant of data-parallel PPO: the same weights on every rank
        checksums = all_gather(sum(p.double().sum().item() for p in agent.parameters()))
        if len(set(checksums)) > 1:
            raise RuntimeError(f"the ranks' weights differ: checksums {checksums}")
        if rank == 0:
            print(f"all {world_size} ranks hold the same weights (checksum {checksums[0]:.6f})")
        dist.barrier()  # nobody leaves while another still talks: gloo aborts on a half-closed group
        dist.destroy_process_group()
    if rank == 0:
        print(f"done: {global_step:,} steps in {format_seconds(time.time() - start_time)}; {saved}")
