"""PPO for Pokemon Red on the PyBoy emulator, in one file read top to bottom.

Modelled on CleanRL's ppo_atari.py (https://docs.cleanrl.dev/rl-algorithms/ppo/): same order, same
names, so the two files diff cleanly. Where we depart from it, a short comment says why.

    python ppo_pokemon.py --rom-path roms/standin.gb --total-timesteps 50000   # no-ROM demo
    python ppo_pokemon.py                                                     # laptop default
    python ppo_pokemon.py --num-envs 16 --total-timesteps 10000000 --max-steps 20480

Exit status: 0 finished; 2 refused before training (bad arguments, missing ROM, unusable
checkpoint: one line on stderr); 130 stopped by Ctrl-C after saving a checkpoint.
"""
import dataclasses
import hashlib
import math
import os
import random
import signal
import sys
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
import pufferlib.exceptions
import pufferlib.vector
import torch
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
    """PufferLib backend; auto: multiprocessing, one worker per physical core (serial if just one)"""
    num_workers: Optional[int] = None
    """multiprocessing worker processes; None: the largest divisor of num_envs up to the cores"""

    # PPO
    total_timesteps: int = 500_000
    """environment steps to train for, summed over all envs"""
    learning_rate: float = 2.5e-4
    """Adam step size at the start (see --anneal-lr)"""
    num_envs: int = 4
    """emulators stepped together"""
    batch_size: int = 2048
    """env steps per update (used when --num-steps is not given)"""
    num_steps: Optional[int] = None
    """steps per env per rollout, overriding --batch-size; None: batch_size / num_envs"""
    minibatch_size: int = 256
    """samples per gradient step"""
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
    resume: Optional[str] = None
    """continue a run from this checkpoint, with its settings except flags given again here"""


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    """Orthogonal weights scaled by `std`, constant bias: the usual PPO initialisation."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    """The Nature-DQN CNN actor-critic, sized from the observation shape (C, H, W).

    Takes uint8 observations and scales them to [0, 1] itself. 1.69M parameters at (4, 84, 84).
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

    def get_value(self, x):
        return self.critic(self.network(x / 255.0))

    def get_action_and_value(self, x, action=None):
        hidden = self.network(x / 255.0)
        logits = self.actor(hidden)
        probs = Categorical(logits=logits)
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


# Ours, not CleanRL's: choosing the backend, checkpoints, Ctrl-C and evaluation.


def choose_vectorization(args: Args, physical_cores: int):
    """(backend name, num_workers or None). Keep it simple; benchmarks/README.md has the figures.

    pokemon_env.Multiprocessing (workers that sleep while they wait) collected faster than Serial
    on 2 cores, with random actions and with the policy in the loop, so it is the default whenever
    the envs can be shared out over more than one worker, one worker per physical core at most.
    """
    backend = args.vec_backend
    if backend == "serial":
        return "serial", None
    if args.num_workers is not None:
        return "multiprocessing", args.num_workers
    num_workers = max(w for w in range(1, physical_cores + 1) if args.num_envs % w == 0)
    if backend == "auto" and num_workers == 1:
        return "serial", None  # one worker would only add a hop
    return "multiprocessing", num_workers


def check_args(args: Args, physical_cores: int) -> Optional[str]:
    """The reason the arguments cannot work, in one line, or None."""
    if args.num_envs < 1:
        return f"--num-envs must be at least 1 (got {args.num_envs})"
    if args.num_steps is not None and args.num_steps < 1:
        return f"--num-steps must be at least 1 (got {args.num_steps})"
    if args.num_steps is None and (args.batch_size < 1 or args.batch_size % args.num_envs):
        return f"--batch-size ({args.batch_size}) must be a positive multiple of --num-envs ({args.num_envs})"
    batch_size = args.num_envs * (args.num_steps or args.batch_size // args.num_envs)
    if args.minibatch_size < 1 or batch_size % args.minibatch_size:
        return f"the batch ({batch_size} steps) must be divisible by --minibatch-size ({args.minibatch_size})"
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
    if args.learning_rate <= 0 or args.clip_coef <= 0 or args.max_grad_norm <= 0:
        return "--learning-rate, --clip-coef and --max-grad-norm must be positive"
    if args.target_kl is not None and args.target_kl <= 0:
        return f"--target-kl must be positive (got {args.target_kl})"
    env_problem = args.env.problem()
    if env_problem:
        return env_problem
    if min(args.env.obs_height, args.env.obs_width) < 36:
        return f"observations must be at least 36x36 for the CNN (got {args.env.obs_height}x{args.env.obs_width})"
    backend, num_workers = choose_vectorization(args, physical_cores)
    if backend == "serial" and args.num_workers is not None:
        return "--num-workers applies only to --vec-backend multiprocessing"
    if backend == "multiprocessing":
        if num_workers < 1 or args.num_envs % num_workers:
            return f"--num-envs ({args.num_envs}) must be divisible by --num-workers ({num_workers})"
        if num_workers > physical_cores:
            return f"--num-workers ({num_workers}) exceeds the {physical_cores} physical cores"
    if not os.path.isfile(args.env.rom_path):
        return (f"ROM not found: {args.env.rom_path}: put your own legally obtained Pokemon Red there "
                f"(SHA-1 {pokemon_env.RED_SHA1}), or try --rom-path roms/standin.gb")
    try:
        args.env.start_state_files()
    except pokemon_env.StateError as e:
        return str(e)
    return None


def fail(message: str):
    """Refuse in one line on stderr, exit status 2."""
    print(f"ppo_pokemon.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


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


CHECKPOINT_FORMAT = "ppo_pokemon/1"


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


def save_checkpoint(path: str, checkpoint: dict) -> None:
    """Write atomically: a temporary file, flushed to disk, then renamed over the target."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp_path = f"{path}.tmp{os.getpid()}"
    with open(tmp_path, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_path, path)


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
    """SIGINT handler: the first Ctrl-C asks for a checkpoint and a clean stop, a second aborts."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        if self.requested:
            sys.exit(130)  # checkpoints already on disk are whole: they are written atomically
        self.requested = True
        print("\nCtrl-C: stopping after this step to save a checkpoint (Ctrl-C again: abort)", flush=True)


def evaluate(agent, env, num_episodes: int, seed: int, device, stop: StopRequest) -> dict:
    """Mean episode stats of the current policy (sampling, as in training) over fresh episodes."""
    stats = defaultdict(list)
    for episode in range(num_episodes):
        next_obs, _ = env.reset(seed=seed + episode)
        while not stop.requested:
            with torch.no_grad():
                action, _, _, _ = agent.get_action_and_value(torch.as_tensor(next_obs, device=device)[None])
            next_obs, _, terminated, truncated, info = env.step(action.item())
            if terminated or truncated:
                for key, value in info.items():
                    if np.ndim(value) == 0 and key != "start_state":  # an index, no statistic
                        stats[key].append(float(value))
                break
    return {key: float(np.mean(values)) for key, values in stats.items()}


# TensorBoard names for the episode stats that the original design logs under its own names.
EPISODE_TAGS = {"episode_return": "mean_reward", "episode_length": "mean_length", "badges": "mean_badges"}


def log_episode_stats(writer, prefix: str, stats: dict, global_step: int) -> None:
    for key, value in stats.items():
        writer.add_scalar(f"{prefix}/{EPISODE_TAGS.get(key, key)}", value, global_step)


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


if __name__ == "__main__":
    args = tyro.cli(Args)
    checkpoint = None
    if args.resume:
        # Departure from CleanRL, which cannot resume: the run's settings come from the
        # checkpoint; flags given again on the command line (say --total-timesteps) override them.
        try:
            checkpoint = load_checkpoint(args.resume)
        except CheckpointError as e:
            fail(str(e))
        args = tyro.cli(Args, default=args_from_flat({**checkpoint["args"], "resume": args.resume}))
    physical_cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    problem = check_args(args, physical_cores)
    if problem:
        fail(problem)
    args.env.init_state = args.env.start_state_files()  # folders as their files: the run keeps its states
    saved_args = flat_args(args)  # as given, before the derived sizes below
    if args.num_steps is None:
        args.num_steps = args.batch_size // args.num_envs
    args.batch_size = int(args.num_envs * args.num_steps)
    num_iterations = args.total_timesteps // args.batch_size
    env_kwargs = dataclasses.asdict(args.env)
    rom_sha1 = file_sha1(args.env.rom_path)
    rom_name = os.path.splitext(os.path.basename(args.env.rom_path))[0]
    if checkpoint is not None:
        run_name = checkpoint["run_name"]
        if checkpoint.get("rom_sha1") != rom_sha1:
            print(f"warning: {args.env.rom_path} is not the ROM this checkpoint was trained on", file=sys.stderr)
    else:
        run_name = f"{rom_name}__{args.exp_name}__{args.seed}__{int(time.time())}"

    # Seeding (a resumed run restores the saved RNG states further down)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    learner_threads = args.torch_threads or physical_cores
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # Environments. Workers are forked with SIGINT ignored: Ctrl-C is the main process's to handle.
    backend, num_workers = choose_vectorization(args, physical_cores)
    vec_kwargs = {"num_workers": num_workers} if backend == "multiprocessing" else {}
    backends = {"serial": pufferlib.vector.Serial, "multiprocessing": pokemon_env.Multiprocessing}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        envs = pufferlib.vector.make(
            pokemon_env.make_env,
            env_kwargs=env_kwargs,
            backend=backends[backend],
            num_envs=args.num_envs,
            **vec_kwargs,
        )
    except (OSError, ValueError, RuntimeError, pufferlib.exceptions.APIUsageError) as e:
        fail(f"cannot start the environment: {(str(e).strip().splitlines() or [type(e).__name__])[0]}")
    stop = StopRequest()
    signal.signal(signal.SIGINT, stop)
    obs_shape = tuple(envs.single_observation_space.shape)
    num_actions = int(envs.single_action_space.n)

    agent = Agent(obs_shape, num_actions).to(device)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    global_step = 0
    start_iteration = 1
    best_badges = 0.0
    if checkpoint is not None:
        if tuple(checkpoint["obs_shape"]) != obs_shape:
            envs.close()
            fail(f"checkpoint observations are {tuple(checkpoint['obs_shape'])}, this env gives {obs_shape}")
        try:
            agent.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            envs.close()
            fail(f"checkpoint does not fit this agent: {str(e).strip().splitlines()[0][:160]}")
        global_step = int(checkpoint["global_step"])
        start_iteration = int(checkpoint["update"]) + 1
        best_badges = float(checkpoint.get("best_badges", 0.0))
        set_rng_states(checkpoint["rng"])

    # Departure from CleanRL: on resume, purge_step hides the events logged after the checkpoint.
    writer = SummaryWriter(f"runs/{run_name}", purge_step=global_step + 1 if checkpoint is not None else None)
    if checkpoint is None:
        rows = "".join(f"\n| {name} | {value} |" for name, value in saved_args.items())
        writer.add_text("hyperparameters", "| argument | value |\n|---|---|" + rows)
        if args.env.init_state:  # the files behind the indices of episode/return_by_start_state
            rows = "".join(f"\n| {index} | {path} |" for index, path in enumerate(args.env.init_state))
            writer.add_text("start_states", "| index | file |\n|---|---|" + rows)
    checkpoint_dir = os.path.join("checkpoints", run_name)
    workers = f", workers: {num_workers}" if num_workers else ""
    print(f"run {run_name}: {args.num_envs} envs ({backend}{workers}), {num_iterations} updates of "
          f"{args.batch_size} steps, {device}, {sum(p.numel() for p in agent.parameters()):,} parameters")

    def write_checkpoint(update: int, step: int) -> str:
        path = os.path.join(checkpoint_dir, f"checkpoint_update{update:06d}.pt")
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
        return path

    # Rollout storage
    # (num_steps, num_envs, C, H, W), uint8 as the env gives them: the network scales them
    obs = torch.zeros((args.num_steps, args.num_envs) + obs_shape, dtype=torch.uint8).to(device)
    actions = torch.zeros((args.num_steps, args.num_envs), dtype=torch.long).to(device)  # (num_steps, envs)
    logprobs = torch.zeros((args.num_steps, args.num_envs)).to(device)  # (num_steps, num_envs)
    rewards = torch.zeros((args.num_steps, args.num_envs)).to(device)  # (num_steps, num_envs)
    terminations = torch.zeros((args.num_steps, args.num_envs)).to(device)  # (num_steps, num_envs)
    truncations = torch.zeros((args.num_steps, args.num_envs)).to(device)  # (num_steps, num_envs)
    dones = torch.zeros((args.num_steps, args.num_envs)).to(device)  # (num_steps, num_envs): 1 = reset step
    values = torch.zeros((args.num_steps, args.num_envs)).to(device)  # (num_steps, num_envs)

    # Training
    start_time = time.time()
    start_global_step = global_step
    eval_env, eval_seconds = None, 0.0
    recent_returns = deque(maxlen=20)
    visit_counts, heatmap_episodes, world = {}, 0, pokemon_env.load_world(args.env.rom_path)
    next_obs, _ = envs.reset(seed=args.seed + global_step)  # a resumed run does not replay its episodes
    # On CPU next_obs is a view of PufferLib's buffer: obs[step] = next_obs copies it before the next step.
    next_obs = torch.as_tensor(next_obs, device=device)
    next_done = torch.zeros(args.num_envs).to(device)
    last_update, last_saved = start_iteration - 1, None

    for iteration in range(start_iteration, num_iterations + 1):
        iteration_start_step = global_step
        # Linear decay, computed from global_step rather than the iteration index so that a resumed
        # run lands on the same schedule.
        if args.anneal_lr:
            frac = max(0.0, 1.0 - global_step / (num_iterations * args.batch_size))
            optimizer.param_groups[0]["lr"] = frac * args.learning_rate

        # Departure from CleanRL: thread counts set per phase. The rollout's forward pass on num_envs
        # observations is too small to share out: on 2 cores a second thread did not speed it up, and
        # its spinning between calls slowed the emulators' steps 1.6x (benchmarks/README.md).
        torch.set_num_threads(1)
        rollout_start = time.perf_counter()
        env_seconds = 0.0
        episode_stats = defaultdict(list)
        for step in range(0, args.num_steps):
            if stop.requested:
                break
            global_step += args.num_envs
            obs[step] = next_obs
            dones[step] = next_done

            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(obs[step])
                values[step] = value.flatten()
            actions[step] = action
            logprobs[step] = logprob

            env_start = time.perf_counter()
            next_obs, reward, terminated, truncated, infos = envs.step(action.cpu().numpy())
            env_seconds += time.perf_counter() - env_start
            rewards[step] = torch.as_tensor(reward, device=device)
            terminations[step] = torch.as_tensor(terminated, device=device)
            truncations[step] = torch.as_tensor(truncated, device=device)
            next_obs = torch.as_tensor(next_obs, device=device)
            next_done = torch.maximum(terminations[step], truncations[step])

            # PufferLib passes only the non-empty infos, without env index: one per finished episode.
            for info in infos:
                if "episode_return" not in info:
                    continue
                for key, stat in info.items():
                    if key == "visited_tiles":
                        pokemon_env.add_visits(visit_counts, stat)
                    elif key == "start_state":  # an index: the return is logged per start state instead
                        if len(args.env.init_state or ()) > 1:  # with one, it would repeat mean_reward
                            episode_stats[f"return_by_start_state/{stat}"].append(info["episode_return"])
                    elif np.ndim(stat) == 0:
                        episode_stats[key].append(float(stat))
                recent_returns.append(float(info["episode_return"]))
                best_badges = max(best_badges, float(info.get("badges", 0)))
                heatmap_episodes += 1

        if stop.requested:  # drop the unfinished rollout: the checkpoint holds the last whole update
            global_step = iteration_start_step
            break
        rollout_seconds = time.perf_counter() - rollout_start

        # Advantages: the value of the observation after the last step closes the rollout.
        torch.set_num_threads(learner_threads)
        update_start = time.perf_counter()
        with torch.no_grad():
            next_value = agent.get_value(next_obs).flatten()
            advantages, returns = compute_gae(
                rewards, values, terminations, truncations, dones, next_value, args.gamma, args.gae_lambda
            )

        # One flat batch of num_steps * num_envs samples
        b_obs = obs.reshape((-1,) + obs_shape)
        b_logprobs = logprobs.reshape(-1)
        b_actions = actions.reshape(-1)
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        b_values = values.reshape(-1)

        # The PPO update. Departure from CleanRL: PufferLib's reset steps are no transitions, so
        # they are left out and the rest is split into near-equal minibatches; the losses are
        # logged as means over all minibatches, not the last one.
        valid_inds = torch.nonzero(dones.reshape(-1) == 0).flatten().cpu().numpy()
        num_minibatches = max(1, round(len(valid_inds) / args.minibatch_size))
        update_stats = []  # per minibatch: pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, clipfrac
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
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
                update_stats.append(torch.stack([pg_loss.detach(), v_loss.detach(), entropy_loss.detach(),
                                                 old_approx_kl, approx_kl, clipfrac]))

            # Departure from CleanRL: the epoch's mean KL, not its last minibatch's, decides.
            if args.target_kl is not None:
                if torch.stack(update_stats[-num_minibatches:])[:, 4].mean().item() > args.target_kl:
                    break

        y_pred, y_true = b_values[valid_inds].cpu().numpy(), b_returns[valid_inds].cpu().numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y
        update_seconds = time.perf_counter() - update_start
        last_update = iteration

        pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, clipfrac = (
            torch.stack(update_stats).mean(0).tolist() if update_stats else [float("nan")] * 6
        )

        # Logging
        writer.add_scalar("train/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("train/value_loss", v_loss, global_step)
        writer.add_scalar("train/policy_loss", pg_loss, global_step)
        writer.add_scalar("train/entropy_loss", entropy_loss, global_step)
        writer.add_scalar("train/old_approx_kl", old_approx_kl, global_step)
        writer.add_scalar("train/approx_kl", approx_kl, global_step)
        writer.add_scalar("train/clipfrac", clipfrac, global_step)
        writer.add_scalar("train/explained_variance", explained_var, global_step)
        sps = (global_step - start_global_step) / max(time.time() - start_time - eval_seconds, 1e-9)
        writer.add_scalar("perf/steps_per_second", sps, global_step)
        writer.add_scalar("perf/rollout_seconds", rollout_seconds, global_step)
        writer.add_scalar("perf/env_seconds", env_seconds, global_step)
        writer.add_scalar("perf/update_seconds", update_seconds, global_step)
        writer.add_scalar("perf/rollout_steps_per_second", args.batch_size / rollout_seconds, global_step)
        writer.add_scalar("perf/update_samples_per_second",
                          len(valid_inds) * args.update_epochs / update_seconds, global_step)
        if episode_stats:
            episode_means = {key: float(np.mean(stats)) for key, stats in episode_stats.items()}
            log_episode_stats(writer, "episode", episode_means, global_step)
            writer.add_scalar("episode/count", len(episode_stats["episode_return"]), global_step)
            writer.add_scalar("episode/max_badges", max(episode_stats.get("badges", [0.0])), global_step)
        if heatmap_episodes and (iteration % args.heatmap_interval == 0 or iteration == num_iterations):
            image = pokemon_env.render_heatmap(visit_counts, heatmap_episodes, world)
            writer.add_image("episode/exploration_heatmap", image, global_step, dataformats="HWC")
            image = pokemon_env.render_world_map(visit_counts, heatmap_episodes, world)
            writer.add_image("episode/world_map", image, global_step, dataformats="HWC")
            visit_counts, heatmap_episodes = {}, 0

        total_steps = num_iterations * args.batch_size
        eta = (total_steps - global_step) / sps
        mean_return = f"{np.mean(recent_returns):.2f}" if recent_returns else "-"
        print(f"update {iteration}/{num_iterations} | step {global_step:,}/{total_steps:,} | "
              f"{sps:,.0f} steps/s (rollout {rollout_seconds:.1f}s, update {update_seconds:.1f}s) | "
              f"ETA {format_seconds(eta)} | return {mean_return} | best badges {best_badges:g}",
              end="\r" if sys.stdout.isatty() else "\n", flush=True)

        if iteration % args.save_interval == 0 or iteration == num_iterations or stop.requested:
            write_checkpoint(iteration, global_step)
            last_saved = iteration
        if stop.requested:
            break

        if args.eval_episodes > 0 and iteration % args.eval_interval == 0:
            torch.set_num_threads(1)
            eval_start = time.time()
            if eval_env is None:
                eval_kwargs = {**env_kwargs, "max_steps": args.eval_max_steps or args.env.max_steps}
                eval_env = pokemon_env.make_env(**eval_kwargs)
            eval_stats = evaluate(agent, eval_env, args.eval_episodes, args.seed + 1_000_000, device, stop)
            eval_seconds += time.time() - eval_start
            if not stop.requested:
                log_episode_stats(writer, "eval", eval_stats, global_step)
                writer.add_scalar("perf/eval_seconds", time.time() - eval_start, global_step)
                print(f"{chr(10) if sys.stdout.isatty() else ''}eval after update {iteration}: return "
                      f"{eval_stats['episode_return']:.2f}, badges {eval_stats['badges']:g} "
                      f"({args.eval_episodes} episodes)", flush=True)

    if last_saved != last_update:
        write_checkpoint(last_update, global_step)
    path = os.path.join(checkpoint_dir, f"checkpoint_update{last_update:06d}.pt")
    if sys.stdout.isatty():
        print()
    envs.close()
    if eval_env is not None:
        eval_env.close()
    writer.close()
    if stop.requested:
        print(f"stopped at step {global_step:,}; checkpoint {path}; continue with: "
              f"python ppo_pokemon.py --resume {path}", flush=True)
        sys.exit(130)
    print(f"done: {global_step:,} steps in {format_seconds(time.time() - start_time)}; checkpoint {path}")
