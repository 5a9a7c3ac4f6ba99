"""PPO for Pokemon Red on PyBoy, read top to bottom beside CleanRL's ppo_atari.py and ppo_atari_multigpu.py:
the PPO first (Args, the agent, GAE, the loss, main), then the run's machinery that main() calls.

    python ppo_pokemon.py --rom-path roms/standin.gb --total-timesteps 50000   # no-ROM demo
    torchrun --standalone --nproc-per-node 2 ppo_pokemon.py --num-envs 16     # two data-parallel ranks

Exit status: 0 finished; 1 a failure (a dead env worker, a lost rank, non-finite numbers, a failed save); 2
refused before training; 130 Ctrl-C, 143 SIGTERM. Failures and refusals in one line; stops save what they can.
"""
import contextlib
import dataclasses
import datetime
import functools
import glob
import importlib.util
import math
import os
import random
import signal
import sys
import tempfile
import time
import warnings
from collections import deque
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
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.distributions.categorical import Categorical
from torch.utils.tensorboard import SummaryWriter

import pokemon_env


@dataclasses.dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """experiment label, part of the run name (runs/<run_name>, checkpoints/<run_name>)"""
    seed: int = 1
    """seeds python, numpy, torch and the environments"""
    torch_deterministic: bool = True
    """ask cuDNN for deterministic kernels (slower on GPU, no effect on CPU)"""
    cuda: bool = True
    """use a CUDA GPU when one is present"""
    track: bool = False
    """if toggled, track the run with Weights and Biases (WANDB_MODE=offline keeps it on this machine)"""
    wandb_project_name: str = "pokemon-red-ppo"
    """the wandb's project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""

    # Algorithm specific arguments
    total_timesteps: int = 500_000
    """environment steps to train for, summed over all envs"""
    learning_rate: float = 2.5e-4
    """Adam step size at the start (see --anneal-lr)"""
    num_envs: int = 4
    """emulators stepped together (over all ranks when run by torchrun)"""
    num_steps: Optional[int] = None
    """steps per env per rollout, overriding --batch-size; None: batch_size / num_envs"""
    batch_size: int = 2048
    """env steps per update, over all ranks (used when --num-steps is not given)"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 at --total-timesteps"""
    gamma: float = 0.99
    """discount per step"""
    gae_lambda: float = 0.95
    """GAE lambda: bias (0) versus variance (1) of the advantage estimates"""
    minibatch_size: int = 256
    """samples per gradient step, over all ranks"""
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

    # The environment, and how its envs are stepped together
    env: tyro.conf.OmitArgPrefixes[pokemon_env.EnvSettings] = dataclasses.field(default_factory=pokemon_env.EnvSettings)
    """the environment's settings, declared in pokemon_env.EnvSettings (recorded in checkpoints)"""
    vec_backend: Literal["auto", "serial", "multiprocessing"] = "auto"
    """vector backend; auto: multiprocessing, as many workers as fit the envs and the cores (serial for one)"""
    num_workers: Optional[int] = None
    """multiprocessing worker processes (per rank); None: the largest divisor of the envs up to the cores"""
    torch_threads: int = 0
    """CPU threads for the PPO update (0: one per physical core); the rollout uses one"""
    grad_compression: Literal["auto", "none", "fp16", "powersgd"] = "auto"
    """how torchrun's ranks send gradients: exact (none), float16 (half the bytes) or rank-4 PowerSGD factors (1/14
    of the bytes, more computation); both approximate. auto: fp16 when the ranks span machines, else none"""
    swarm: bool = False
    """start a share of the resets from the furthest states the run's envs reached (pokemon_env.Swarm)"""
    swarm_share: float = 0.5
    """the share of the resets that start from the swarm's states (evaluation never does)"""

    # Logging, evaluation and checkpoints
    save_interval: int = 50
    """save a checkpoint every this many updates (and at the end)"""
    keep_checkpoints: int = 0
    """keep the run's newest this many checkpoints, removing older ones as new ones are written; 0: keep all"""
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
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    """The Nature-DQN CNN actor-critic for uint8 observations (C, H, W). Departure from CleanRL: weights and inputs
    channels last, in which the update's convolutions ran 1.5x faster on a 2-core CPU (benchmarks/README.md)."""

    def __init__(self, obs_shape, num_actions: int = 8):
        super().__init__()
        self.obs_shape = tuple(obs_shape)
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

    forward = get_action_and_value  # what DistributedDataParallel calls


def compute_gae(rewards, values, terminations, truncations, dones, next_value, gamma, gae_lambda):
    """Generalised advantage estimates and returns for one rollout; all inputs (num_steps, num_envs), tensors or arrays.

    rewards[t], terminations[t], truncations[t]: what step t returned for the action on obs[t]; values[t]: V(obs[t]);
    next_value: V(the observation after the last step). dones[t]: obs[t] is an episode's final one, step t PufferLib's
    reset step (action ignored, a first observation returned): advantage 0. Departure from CleanRL: a truncation
    bootstraps from V(final observation), values[t + 1], a termination from 0; neither lets the advantage run across."""
    rewards, terminations, truncations, dones = (torch.as_tensor(x, device=values.device)
                                                 for x in (rewards, terminations, truncations, dones))
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
    """CleanRL's PPO loss terms for one minibatch, in a function so tests can check them: (pg_loss, v_loss,
    entropy_loss, old_approx_kl, approx_kl, clipfrac); the last three carry no gradient."""
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


def main():
    # Departure from CleanRL: the run's machinery (the section after main) takes the arguments, or a resumed
    # run's settings with the flags given again, refuses what cannot work in one line, and ends the run.
    with Run(tyro.cli(Args)) as run:
        args = run.args
        # Under torchrun every rank collects its share of the batch, as in ppo_atari_multigpu.py
        local_num_envs, local_minibatch_size = args.num_envs // run.world_size, args.minibatch_size // run.world_size
        args.num_steps = args.num_steps or args.batch_size // args.num_envs
        args.batch_size = int(args.num_envs * args.num_steps)
        num_iterations = args.total_timesteps // args.batch_size

        # TRY NOT TO MODIFY: seeding (every rank draws the same initial weights; Run.start seeds its episodes)
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        torch.backends.cudnn.deterministic = args.torch_deterministic
        device = torch.device(f"cuda:{run.local_rank}" if torch.cuda.is_available() and args.cuda else "cpu")

        # env setup (after the ROM, the run's folders and the signals): envs in groups that take turns with the
        # policy where that is faster (pokemon_env.EnvGroups); a run already at its end is refused
        envs = run.start_envs(local_num_envs, num_iterations)
        obs_shape, num_actions = envs.single_observation_space.shape, int(envs.single_action_space.n)

        agent = Agent(obs_shape, num_actions).to(device)
        # fused: Adam's whole step in one kernel; 6% faster updates here than its default for-each kernels
        optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
        global_step, start_iteration = run.start(agent, optimizer, device)  # a resumed run's weights and step
        # Under torchrun, DistributedDataParallel: backward() leaves every rank the ranks' mean gradient
        ddp_agent = run.data_parallel(agent)

        # ALGO Logic: Storage setup. Departure from CleanRL: what the envs return stays in numpy arrays (a torch
        # operation costs more than the copy); observations are channels last, the network's layout, so that
        # minibatches need no conversion, and arrive in pinned memory on CUDA, so that copies need not wait.
        obs = torch.zeros((args.num_steps * local_num_envs,) + obs_shape, dtype=torch.uint8, device=device).to(
            memory_format=torch.channels_last).view((args.num_steps, local_num_envs) + obs_shape)  # (steps, envs, C...)
        actions = torch.zeros((args.num_steps, local_num_envs), dtype=torch.long, device=device)  # (steps, num_envs)
        logprobs = torch.zeros((args.num_steps, local_num_envs), device=device)  # (num_steps, num_envs)
        values = torch.zeros((args.num_steps, local_num_envs), device=device)  # (num_steps, num_envs)
        rewards = np.zeros((args.num_steps, local_num_envs), np.float32)  # (num_steps, num_envs)
        terminations = np.zeros((args.num_steps, local_num_envs), np.float32)  # (num_steps, num_envs)
        truncations = np.zeros((args.num_steps, local_num_envs), np.float32)  # (num_steps, num_envs)
        dones = np.zeros((args.num_steps, local_num_envs), np.float32)  # (num_steps, num_envs): 1 = reset step

        # TRY NOT TO MODIFY: start the game. A resumed run plays new episodes; the ranks play their own.
        next_obs = torch.zeros((local_num_envs,) + obs_shape, dtype=torch.uint8, pin_memory=device.type == "cuda")
        next_obs.numpy()[:] = envs.reset(seed=args.seed + global_step + run.rank * local_num_envs)
        next_done = np.zeros(local_num_envs, np.float32)

        for iteration in range(start_iteration, num_iterations + 1):
            # Annealing the rate if instructed to do so; from global_step, so that a resumed run keeps the schedule.
            if args.anneal_lr:
                frac = 1.0 - global_step / (num_iterations * args.batch_size)
                optimizer.param_groups[0]["lr"] = frac * args.learning_rate

            run.phase("rollout")  # one torch thread for the policy; times the phase
            episode_infos = []  # the episodes that end in this rollout
            for step in range(0, args.num_steps):
                run.stop_if_asked()  # Ctrl-C, SIGTERM: this rollout is dropped, the last whole update saved
                # Departure from CleanRL: the policy acts for one group of envs while the other group's emulators
                # run. A group's step comes back (recv) just before its next turn, and goes where its send says.
                results = (next_obs.numpy(), next_done, rewards[step], terminations[step], truncations[step],
                           episode_infos)
                for rows in envs.groups:
                    envs.recv(rows)
                    obs[step, rows] = next_obs[rows]
                    dones[step, rows] = next_done[rows]

                    # ALGO LOGIC: action logic
                    with torch.no_grad():
                        action, logprob, _, value = agent.get_action_and_value(obs[step, rows])
                        values[step, rows] = value.flatten()
                    actions[step, rows] = action
                    logprobs[step, rows] = logprob

                    # TRY NOT TO MODIFY: execute the game
                    envs.send(action.cpu().numpy(), rows, results)
            envs.recv()  # the last step of every group
            episode_infos = [info for infos in all_gather(episode_infos) for info in infos]  # every rank's
            global_step += args.batch_size  # every rank's steps, once every rank's rollout is whole

            # bootstrap value if not done
            run.phase("update")  # every torch thread; a stop waits for the update to end
            with torch.no_grad():
                next_value = agent.get_value(next_obs.to(device)).flatten()
                advantages, returns = compute_gae(rewards, values, terminations, truncations, dones, next_value,
                                                  args.gamma, args.gae_lambda)

            # flatten the batch
            b_obs = obs.reshape((-1,) + obs_shape)
            b_logprobs = logprobs.reshape(-1)
            b_actions = actions.reshape(-1)
            b_advantages = advantages.reshape(-1)
            b_returns = returns.reshape(-1)
            b_values = values.reshape(-1)

            # Optimizing the policy and value network. Departure from CleanRL: the reset steps are no transitions,
            # so they are left out, and the rest is split into near-equal minibatches, as many on every rank.
            b_inds = np.flatnonzero(dones.reshape(-1) == 0)
            num_minibatches = max(all_gather(max(1, round(len(b_inds) / local_minibatch_size))))
            update_stats = []  # per minibatch: pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, clipfrac
            for epoch in range(args.update_epochs if len(b_inds) else 0):
                for mb_inds in np.array_split(np.random.permutation(b_inds), num_minibatches):
                    _, newlogprob, entropy, newvalue = ddp_agent(b_obs[mb_inds], b_actions[mb_inds])
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

                # Departure from CleanRL: the epoch's mean KL (over all ranks), not its last minibatch's, decides.
                epoch_kl = torch.stack(update_stats[-num_minibatches:])[:, 4].mean()
                if args.target_kl is not None and all_reduce_mean(epoch_kl).item() > args.target_kl:
                    break

            losses = run.update_done(iteration, global_step, update_stats)  # means over the minibatches, all finite
            y_pred, y_true = b_values[b_inds].cpu().numpy(), b_returns[b_inds].cpu().numpy()
            var_y = np.var(y_true)
            explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y
            pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, clipfrac, explained_var = all_reduce_mean(
                torch.cat([losses, torch.tensor([explained_var])])).tolist()  # then means over the ranks

            # TRY NOT TO MODIFY: record rewards for plotting purposes (rank 0 writes)
            run.log(global_step, {"train/learning_rate": optimizer.param_groups[0]["lr"], "train/value_loss": v_loss,
                                  "train/policy_loss": pg_loss, "train/entropy_loss": entropy_loss,
                                  "train/old_approx_kl": old_approx_kl, "train/approx_kl": approx_kl,
                                  "train/clipfrac": clipfrac, "train/explained_variance": explained_var})
            # perf/ figures, the episodes' statistics and maps, the progress line, checkpoints, evaluation
            run.end_update(iteration, global_step, episode_infos, samples=len(b_inds) * args.update_epochs)


# ----- The run's machinery: checks, resume, ranks, signals, faults, checkpoints, evaluation, maps -----


def choose_vectorization(args: Args, num_envs: int, physical_cores: int):
    """(backend, num_workers or None, groups): Multiprocessing for 2+ workers, 2 groups at up to 2 envs a worker."""
    if args.vec_backend == "serial":
        return "serial", None, 1
    num_workers = args.num_workers or max(w for w in range(1, physical_cores + 1) if num_envs % w == 0)
    if args.vec_backend == "auto" and args.num_workers is None and num_workers == 1:
        return "serial", None, 1  # one worker would only add a hop
    return "multiprocessing", num_workers, 2 if 1 < num_workers and num_envs <= 2 * num_workers else 1


# Each argument's range: (the arguments, whether a value lies inside it, what the message says it must be)
RANGES = [(("learning_rate", "gamma", "gae_lambda", "clip_coef", "ent_coef", "vf_coef", "max_grad_norm", "target_kl"),
           math.isfinite, "a finite number"),
          (("num_envs", "num_steps", "update_epochs", "save_interval", "eval_interval", "heatmap_interval",
            "eval_max_steps"), lambda value: value >= 1, "at least 1"),
          (("learning_rate", "clip_coef", "max_grad_norm", "target_kl"), lambda value: value > 0, "positive"),
          (("ent_coef", "vf_coef"), lambda value: value >= 0, "0 or more"),
          (("eval_episodes",), lambda value: value >= 0, "0 (off) or more"),
          (("keep_checkpoints",), lambda value: value >= 0, "0 (all) or more"),
          (("gamma", "gae_lambda", "swarm_share"), lambda value: 0 <= value <= 1, "in [0, 1]")]


def check_args(args: Args, physical_cores: int, world_size: int = 1) -> Optional[str]:
    """The reason the arguments cannot work, in one line, or None."""
    values, env = {field.name: getattr(args, field.name) for field in dataclasses.fields(Args)}, args.env
    musts = [(name, must) for names, inside, must in RANGES for name in names
             if values[name] is not None and not inside(values[name])]
    num_envs = args.num_envs or 1  # 0 is refused (RANGES), but the checks below are all computed first
    per_rank, batch_size = num_envs // world_size, num_envs * (args.num_steps or args.batch_size // num_envs)
    backend, num_workers, _ = choose_vectorization(args, per_rank, physical_cores)
    problems = [  # (whether it is so, what is wrong), in the order they are looked for
        *[(True, f"--{name.replace('_', '-')} must be {must_be} (got {values[name]})") for name, must_be in musts],
        (args.num_envs % world_size, f"--num-envs ({args.num_envs}) must be divisible by the {world_size} ranks"),
        (args.num_steps is None and (args.batch_size < 1 or args.batch_size % num_envs),
         f"--batch-size ({args.batch_size}) must be a positive multiple of --num-envs ({args.num_envs})"),
        (args.minibatch_size < 1 or batch_size % args.minibatch_size,
         f"the batch ({batch_size} steps) must be divisible by --minibatch-size ({args.minibatch_size})"),
        (args.minibatch_size % world_size,
         f"--minibatch-size ({args.minibatch_size}) must be divisible by the {world_size} ranks"),
        (args.total_timesteps < batch_size,
         f"--total-timesteps ({args.total_timesteps}) is less than one batch ({batch_size} steps)"),
        (env.problem(), env.problem()),
        (min(env.obs_height, env.obs_width) < 36,
         f"observations must be at least 36x36 for the CNN (got {env.obs_height}x{env.obs_width})"),
        (backend == "serial" and args.num_workers, "--num-workers applies only to --vec-backend multiprocessing"),
        (backend != "serial" and (num_workers < 1 or per_rank % num_workers),
         f"--num-envs per rank ({per_rank}) must be divisible by --num-workers ({num_workers})"),
        (backend != "serial" and num_workers > physical_cores,
         f"--num-workers ({num_workers}) exceeds the {physical_cores} physical cores"),
        (args.run_name is not None and (not args.run_name.strip() or os.sep in args.run_name or args.run_name in ".."),
         f"--run-name must be a plain folder name (got {args.run_name!r})"),
        (not os.path.isfile(env.rom_path), f"ROM not found: {env.rom_path}: put your own legally obtained Pokemon "
         f"Red there (SHA-1 {pokemon_env.RED_SHA1}), or try --rom-path roms/standin.gb"),
        (args.track and not importlib.util.find_spec("wandb"), "--track needs wandb: pip install -r requirements.txt"),
    ]
    try:  # then the ROM's and the start states' contents (an unknown ROM is warned of here)
        return next((message for found, message in problems if found), None) or (
            pokemon_env.load_rom(env.rom_path) and env.start_state_files() and None)
    except (pokemon_env.RomError, pokemon_env.StateError) as e:
        return str(e)


def fail(message: str, status: int = 2):
    print(f"ppo_pokemon.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"ppo_pokemon.py: warning: {message}", file=sys.stderr, flush=True)  # one line, no source line


def show_run_stopped(kind, error, traceback):
    """sys.excepthook: a run stopped before training began (a rank lost while starting) in one line."""
    if issubclass(kind, RunStopped):
        return fail(str(error), 1)
    sys.__excepthook__(kind, error, traceback)


def flat_args(args: Args) -> dict:
    """Args as one flat dict, the environment's settings beside the rest, as checkpoints store them."""
    return {**{f.name: getattr(args, f.name) for f in dataclasses.fields(Args) if f.name != "env"}, **vars(args.env)}


def args_from_flat(flat: dict) -> Args:
    """The inverse of flat_args; names this version does not know are ignored."""
    known = lambda cls: {f.name: flat[f.name] for f in dataclasses.fields(cls) if f.name in flat}  # noqa: E731
    return Args(**known(Args), env=pokemon_env.EnvSettings(**known(pokemon_env.EnvSettings)))


class RunStopped(Exception):
    """Ends the run before its last update, with a one-line reason."""


class SaveFailed(RunStopped):
    """A checkpoint that could not be written: nothing more is saved on the way out."""


class Run(contextlib.AbstractContextManager):
    """The run's machinery and how it stands (last whole update, last saved, why it stopped); `with` ends the run."""

    def __init__(self, args: Args):
        warnings.showwarning, sys.excepthook = show_warning, show_run_stopped
        self.rank, self.world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if self.world_size > 1:
            start_process_group(self.rank, self.world_size)
        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        self.cores = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        resumed = None, None, None  # (checkpoint file, checkpoint, or why it cannot be used)
        if args.resume and self.rank == 0:
            # Departure from CleanRL, which cannot resume: the run's settings come from the checkpoint; flags
            # given again (say --total-timesteps) override them. Rank 0 reads it for every rank.
            try:
                resumed = (*checkpoint_to_resume(args), None)
            except CheckpointError as e:
                resumed = None, None, str(e)
        self.resume_path, self.checkpoint, problem = all_gather(resumed)[0]
        fail_on_any_rank(problem)
        if self.checkpoint is not None:
            args = tyro.cli(Args, default=args_from_flat({**self.checkpoint["args"], "resume": args.resume,
                                                          "run_name": args.run_name}))
        fail_on_any_rank(check_args(args, self.cores, self.world_size))
        args.env.init_state = args.env.start_state_files()  # folders as their files: the run keeps its states
        self.args, self.saved_args = args, flat_args(args)  # as given, before main() derives the sizes
        self.signal, self.writer, self.envs, self.eval_env, self.wandb_run = None, None, None, None, None
        self.weights_whole, self.last_checkpoint, self.clock, self.best_badges = True, self.resume_path, {}, 0.0
        self.last_update = self.last_saved = self.last_update_step = self.start_global_step = 0
        self.recent_returns, self.visit_counts, self.heatmap_episodes = deque(maxlen=20), {}, 0

    def start_envs(self, num_envs: int, num_iterations: int) -> pokemon_env.EnvGroups:
        """The run's name and folders, the signals, then the envs. A run at its end is refused."""
        args, checkpoint, self.num_iterations = self.args, self.checkpoint, num_iterations
        if checkpoint is not None and int(checkpoint["update"]) >= num_iterations:
            fail_on_any_rank(f"the run is complete: update {checkpoint['update']} of {num_iterations}, step "
                             f"{checkpoint['global_step']:,}; give a larger --total-timesteps to continue it")
        rom = os.path.splitext(os.path.basename(args.env.rom_path))[0]  # with seconds and a random suffix, two
        name = f"{rom}__{args.exp_name}__{args.seed}__{int(time.time())}_{os.urandom(2).hex()}"  # runs started at once
        self.run_name = all_gather(args.run_name or (checkpoint or {}).get("run_name") or name)[0]  # get two names
        self.checkpoint_dir, self.log_dir = (os.path.join(folder, self.run_name) for folder in ("checkpoints", "runs"))
        problem = None
        if self.rank == 0:  # found out now, not at the first save
            if checkpoint is None and newest_checkpoint(self.checkpoint_dir) is not None:
                problem = (f"run {self.run_name} already has checkpoints in {self.checkpoint_dir}/: continue it with "
                           f"--resume auto --run-name {self.run_name}, or give another --run-name")
            for folder in (self.checkpoint_dir, self.log_dir) if problem is None else ():
                try:
                    os.makedirs(folder, exist_ok=True)  # and written to: a full disk or a read-only folder shows
                    tempfile.TemporaryFile(dir=folder).close()
                except OSError as e:
                    problem = f"cannot write to {folder}/: {e.strerror or e}"
                    break
            remove_stale_temporary_files(self.checkpoint_dir)
        fail_on_any_rank(problem)
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGTERM, self.on_signal)
        self.backend, self.num_workers, groups = choose_vectorization(args, num_envs, self.cores)
        try:
            self.envs = pokemon_env.EnvGroups(dataclasses.asdict(args.env), num_envs, self.backend, self.num_workers,
                                              groups)
        except (OSError, ValueError, RuntimeError) as e:  # a bad ROM or state, or a worker that failed to start
            fail(f"cannot start the environment: {pokemon_env.first_line(e)}")
        if checkpoint is not None and checkpoint.get("rom_sha1") != self.envs.rom.sha1 and self.rank == 0:
            warnings.warn(f"{args.env.rom_path} is not the ROM this checkpoint was trained on")
        return self.envs

    def start(self, agent: Agent, optimizer, device) -> tuple[int, int]:
        """A resumed run's weights, step and RNG, each rank's seed, TensorBoard, the start line: (step, update)."""
        args, checkpoint, envs, self.agent, self.optimizer = self.args, self.checkpoint, self.envs, agent, optimizer
        # gloo carries the small messages, and the gradients too unless every rank has a GPU (then NCCL)
        on_gpus = self.world_size > 1 and all(all_gather(device.type == "cuda"))
        self.gradient_group = dist.new_group(backend="nccl") if on_gpus else None
        self.compression = args.grad_compression
        if self.compression == "auto":  # fp16 when the ranks span machines (torchrun's counts): the fastest over a
            # 1 Gbit/s link, and the update nearest the exact one (benchmarks/distributed.py); none on one machine
            self.compression = "fp16" if self.world_size > int(os.environ.get("LOCAL_WORLD_SIZE", 1)) else "none"
        if checkpoint is not None:
            try:
                agent_from_checkpoint(checkpoint, agent.obs_shape, agent.actor.out_features, agent)
                optimizer.load_state_dict(checkpoint["optimizer"])
            except (ValueError, KeyError) as e:  # a CheckpointError, or an optimizer of another shape
                fail(str(e) if isinstance(e, CheckpointError) else f"checkpoint does not fit the agent: {e}"[:200])
            self.last_update = self.last_saved = int(checkpoint["update"])
            self.last_update_step = self.start_global_step = int(checkpoint["global_step"])
            self.best_badges = float(checkpoint.get("best_badges", 0.0))
            set_rng_states(checkpoint["rng"])
        if args.swarm:  # its files: rank 0's checkpoints/<run_name>/swarm/, which a resumed run's checkpoint lists
            folder = os.path.join(self.checkpoint_dir, "swarm") if self.rank == 0 else None
            envs.start_swarm(args.swarm_share, folder, checkpoint and checkpoint.get("swarm"), all_gather)
        for seed in (random.seed, np.random.seed, torch.manual_seed) if self.rank > 0 else ():
            seed(args.seed + self.rank + self.last_update_step)  # this rank's own episodes and samples
        self.wandb_run, problem = start_tracking(args, self.run_name, self.saved_args, checkpoint) if (
            args.track and self.rank == 0) else (None, None)
        fail_on_any_rank(problem)  # every rank refuses together
        if self.rank == 0:
            # Departure from CleanRL: on resume, purge_step hides the events logged after the checkpoint.
            self.writer = SummaryWriter(self.log_dir, purge_step=self.last_update_step + 1 if checkpoint else None)
            for tag, columns, rows in (("hyperparameters", "argument | value", self.saved_args.items()),
                                       ("start_states", "index | file", enumerate(args.env.init_state or []))):
                table = f"| {columns} |\n|---|---|" + "".join(f"\n| {key} | {value} |" for key, value in rows)
                if checkpoint is None:  # the arguments; the files behind episode/return_by_start_state/<i>
                    self.writer.add_text(tag, table)
            workers = f", {self.num_workers} worker{'s' * (self.num_workers > 1)}" if self.num_workers else ""
            workers += f" in {len(envs.groups)} groups" * (len(envs.groups) > 1)
            total = self.num_iterations * args.batch_size
            notes = f" (--total-timesteps {args.total_timesteps:,} rounded down to whole updates)" * (
                total != args.total_timesteps) + f", from update {self.last_update} of {self.resume_path}" * (
                checkpoint is not None)
            print(f"run {self.run_name}: {envs.num_envs} envs ({self.backend}{workers})"
                  f"{f' on each of {self.world_size} ranks (gradients: {self.compression})' * (self.world_size > 1)}, "
                  f"{self.num_iterations} updates of "
                  f"{args.batch_size:,} steps = {total:,} steps{notes}, {device}, "
                  f"{sum(p.numel() for p in agent.parameters()):,} parameters", flush=True)
        self.start_time, self.eval_seconds = time.time(), 0.0
        return self.last_update_step, self.last_update + 1

    def data_parallel(self, agent: Agent) -> nn.Module:
        """The agent for the update. Under torchrun, DistributedDataParallel: its backward() leaves every rank the
        ranks' mean gradient, sent in buckets while the backward pass goes on and compressed by --grad-compression
        (PyTorch's communication hooks), so that every rank takes the same step."""
        if self.world_size == 1:
            return agent
        # One bucket for PowerSGD: its hook sends from callback threads, where two buckets' messages could cross
        size_mb = sum(p.numel() * p.element_size() for p in agent.parameters()) / 2**20 + 1
        ddp_agent = nn.parallel.DistributedDataParallel(agent, process_group=self.gradient_group,
                                                        bucket_cap_mb=size_mb if self.compression == "powersgd" else None)
        if self.compression == "fp16":
            ddp_agent.register_comm_hook(self.gradient_group, default_hooks.fp16_compress_hook)
        elif self.compression == "powersgd":  # exact for its first 10 steps; its error feedback is not checkpointed
            state = powerSGD_hook.PowerSGDState(self.gradient_group, matrix_approximation_rank=4, start_powerSGD_iter=10)
            ddp_agent.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        return ddp_agent

    def on_signal(self, signum, frame):
        """Ctrl-C, SIGTERM: the first stops the run at its next step (see stop_if_asked); a second aborts."""
        if self.signal is not None:
            raise SystemExit(128 + signum)  # checkpoints on disk are whole: they are written atomically
        self.signal, name = signum, "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: stopping to save a checkpoint of the last whole update (again: abort)", flush=True)

    def stop_if_asked(self):
        """Between two steps of a rollout or an evaluation (its work is dropped), after an update and its save."""
        # Not in the signal handler: an exception raised there can land inside PyBoy's tick, which swallows it.
        if self.signal is not None:
            raise RunStopped("stopped")

    def phase(self, name: str):
        """Enter the rollout or the update: its clock, its torch threads, and what a stop does during it."""
        self.clock[name], self.clock[f"{name} env"] = time.perf_counter(), self.envs.wait_seconds
        # Departure from CleanRL: threads set per phase. The rollout's forward pass on a few observations is too
        # small to share out: on 2 cores a second thread did not speed it up, and its spinning between calls
        # slowed the emulators' steps 1.6x (benchmarks/README.md).
        torch.set_num_threads((self.args.torch_threads or self.cores) if name == "update" else 1)
        self.weights_whole = name == "rollout"  # weights halfway through an update are never saved (update_done)

    def log(self, global_step: int, scalars: dict):
        for tag, value in scalars.items() if self.rank == 0 else ():
            self.writer.add_scalar(tag, value, global_step)

    def update_done(self, iteration: int, global_step: int, update_stats: list) -> torch.Tensor:
        """The update's loss terms, means over its minibatches; a non-finite loss or weight stops the run unsaved."""
        losses = torch.stack(update_stats).mean(0).cpu() if update_stats else torch.full((6,), float("nan"))
        if update_stats and not (losses.isfinite().all() and all(p.isfinite().all() for p in self.agent.parameters())):
            names = ["policy loss", "value loss", "entropy", "old approx KL", "approx KL", "clip fraction"]
            bad = [name for name, value in zip(names, losses.tolist()) if not math.isfinite(value)] or ["weights"]
            raise RunStopped(f"update {iteration}: {', '.join(bad)} not finite; stopped without saving it")
        self.weights_whole, self.last_update, self.last_update_step = True, iteration, global_step
        return losses

    def end_update(self, iteration: int, global_step: int, episode_infos: list, samples: int):
        """perf/, the episodes' stats and maps, the progress line; a checkpoint, a stop, an evaluation when due."""
        args, clock, infos = self.args, self.clock, episode_infos
        rollout_seconds, update_seconds = clock["update"] - clock["rollout"], time.perf_counter() - clock["update"]
        sps = (global_step - self.start_global_step) / max(time.time() - self.start_time - self.eval_seconds, 1e-9)
        self.log(global_step, {"perf/steps_per_second": sps, "perf/rollout_seconds": rollout_seconds,
                               "perf/env_seconds": clock["update env"] - clock["rollout env"],
                               "perf/update_seconds": update_seconds,
                               "perf/rollout_steps_per_second": args.batch_size / rollout_seconds,
                               "perf/update_samples_per_second": samples * self.world_size / update_seconds})
        if self.rank == 0:
            for info in infos:
                self.recent_returns.append(float(info["episode_return"]))
                self.best_badges = max(self.best_badges, float(info["badges"]))
                pokemon_env.add_visits(self.visit_counts, info["visited_tiles"])
            self.heatmap_episodes += len(infos)
            if infos:
                log_episode_stats(self.writer, "episode", infos, global_step)
                self.log(global_step, {"episode/count": len(infos),
                                       "episode/max_badges": max(info["badges"] for info in infos)})
            if len(args.env.init_state or ()) > 1:  # which saves are hard (with one: mean_reward again)
                returns = {index: [i["episode_return"] for i in infos if i["start_state"] == index] for index in
                           sorted({i["start_state"] for i in infos} - {-1})}  # -1: the swarm's
                self.log(global_step, {f"episode/return_by_start_state/{i}": np.mean(r) for i, r in returns.items()})
            if self.heatmap_episodes and (iteration % args.heatmap_interval == 0 or iteration == self.num_iterations):
                for tag, draw in (("exploration_heatmap", pokemon_env.render_heatmap),
                                  ("world_map", pokemon_env.render_world_map)):
                    image = draw(self.visit_counts, self.heatmap_episodes, pokemon_env.load_world(self.envs.rom))
                    self.writer.add_image(f"episode/{tag}", image, global_step, dataformats="HWC")
                self.visit_counts, self.heatmap_episodes = {}, 0
            total = self.num_iterations * args.batch_size
            eta = datetime.timedelta(seconds=round((total - global_step) / sps))
            mean_return = f"{np.mean(self.recent_returns):.2f}" if self.recent_returns else "-"
            print(f"update {iteration}/{self.num_iterations} | step {global_step:,}/{total:,} | {sps:,.0f} steps/s "
                  f"(rollout {rollout_seconds:.1f}s, update {update_seconds:.1f}s) | ETA {eta} "
                  f"| return(last 20) {mean_return} | best badges {self.best_badges:g}",
                  end="\r" if sys.stdout.isatty() else "\n", flush=True)
        # The swarm: every rank's discoveries, the resets' states from now on; the archive's size and furthest key
        self.log(global_step, self.envs.update_swarm(all_gather) if args.swarm else {})
        if iteration % args.save_interval == 0 or iteration == self.num_iterations:
            self.save()
        self.stop_if_asked()  # asked for during the update or the save
        if args.eval_episodes > 0 and iteration % args.eval_interval == 0:
            self.evaluate(iteration, global_step)

    def evaluate(self, iteration: int, global_step: int):
        """--eval-episodes of the policy (sampled) over the ranks: episode i from a usual start, seed + 1e6 + i."""
        torch.set_num_threads(1)
        args, eval_start, results = self.args, time.time(), []
        if self.eval_env is None and self.rank < args.eval_episodes:  # its own env: never the swarm's states
            max_steps = args.eval_max_steps or args.env.max_steps
            self.eval_env = pokemon_env.PokemonRedEnv(**{**vars(args.env), "max_steps": max_steps})
        for episode in range(self.rank, args.eval_episodes, self.world_size):
            next_obs, info = self.eval_env.reset(seed=args.seed + 1_000_000 + episode)
            while not info:  # the env's info is empty until the episode's end
                self.stop_if_asked()
                next_obs, _, _, _, info = self.eval_env.step(choose_action(self.agent, next_obs))
            results.append(info)
        results = [result for rank_results in all_gather(results) for result in rank_results]
        self.eval_seconds += time.time() - eval_start
        if self.rank == 0:
            log_episode_stats(self.writer, "eval", results, global_step)
            self.log(global_step, {"perf/eval_seconds": time.time() - eval_start})
            mean = {key: np.mean([result[key] for result in results]) for key in ("episode_return", "badges")}
            print(f"{chr(10) * sys.stdout.isatty()}eval after update {iteration}: return {mean['episode_return']:.2f}, "
                  f"badges {mean['badges']:g} ({len(results)} episodes)", flush=True)

    def save(self):
        """The last whole update (on rank 0) as checkpoints/<run_name>/checkpoint_update<update>.pt."""
        path, agent = os.path.join(self.checkpoint_dir, f"checkpoint_update{self.last_update:06d}.pt"), self.agent
        checkpoint = dict(format=CHECKPOINT_FORMAT, model=agent.state_dict(), optimizer=self.optimizer.state_dict(),
                          args=self.saved_args, global_step=self.last_update_step, update=self.last_update,
                          run_name=self.run_name, rng=rng_states(), obs_shape=list(agent.obs_shape),
                          num_actions=agent.actor.out_features, rom_sha1=self.envs.rom.sha1,
                          rom_name=os.path.basename(self.args.env.rom_path), best_badges=self.best_badges,
                          torch_version=str(torch.__version__), wandb_id=getattr(self.wandb_run, "id", None),
                          swarm=self.envs.swarm and self.envs.swarm.names())  # the swarm's files, or None
        try:
            if self.rank == 0:
                write_atomically(path, functools.partial(torch.save, checkpoint))
        except OSError as e:  # a full disk, say: the checkpoints already written stay as they were
            raise SaveFailed(f"cannot save {path}: {e.strerror or e}") from None
        self.last_saved, self.last_checkpoint = self.last_update, path
        others = sorted(set(glob.glob(os.path.join(self.checkpoint_dir, "checkpoint_update*.pt"))) - {path})
        keep = self.args.keep_checkpoints - 1  # besides the one just written; the rest by update, oldest first
        for old in others[: max(0, len(others) - keep)] if keep >= 0 and self.rank == 0 else ():
            os.remove(old)

    def __exit__(self, kind, error, traceback):
        """The end, however it came: the last whole update saved unless it is, the envs closed, the exit status set."""
        for env in filter(None, (self.envs, self.eval_env)):
            env.close()
        if kind is not None and not issubclass(kind, (RunStopped, pokemon_env.WorkerError)):
            return  # a bug (its traceback), or an exit already decided (a refusal, a second Ctrl-C)
        # A stop asked for, a dead or failing env worker, a lost rank (torchrun then stops the others by SIGTERM)
        if self.last_update > self.last_saved and self.weights_whole and not isinstance(error, SaveFailed):
            try:
                self.save()
            except SaveFailed as e:
                error = error or e
        if self.writer is not None:
            self.writer.close()
            print(end="\n" * sys.stdout.isatty())
        try:  # tracking never fails a run: W&B's trouble (its service gone, say) is one warning
            if self.wandb_run is not None:
                self.wandb_run.finish(exit_code=0 if error is None else 128 + self.signal if self.signal else 1)
        except Exception as e:
            warnings.warn(f"W&B could not end its run ({pokemon_env.first_line(e)}); this run is whole")
        last = self.last_checkpoint
        resume = f"; continue with: python ppo_pokemon.py --resume {last}" if last else ""
        saved = f"last checkpoint {last}" if last else "no update finished, nothing saved"
        if error is not None and self.signal is None:
            fail(f"{f'rank {self.rank}: ' * (self.world_size > 1)}{pokemon_env.first_line(error)}; {saved}{resume}", 1)
        if error is not None:
            if self.rank == 0:
                print(f"stopped at step {self.last_update_step:,}; {saved}{resume}", flush=True)
            sys.exit(128 + self.signal)
        if self.world_size > 1:
            dist.barrier()  # nobody leaves while another still talks: gloo aborts on a half-closed group
            dist.destroy_process_group()
        if self.rank == 0:
            print(f"done: {self.last_update_step:,} steps in "
                  f"{datetime.timedelta(seconds=round(time.time() - self.start_time))}; {saved}", flush=True)
        if self.world_size > 1:  # all written and closed: skip the interpreter's teardown, where the gloo threads
            os._exit(0)  # of a group DDP has held hung a rank's exit in 1 run of 6 (PyTorch 2.13)


def start_tracking(args: Args, run_name: str, config: dict, checkpoint: Optional[dict]):
    """CleanRL's --track: a W&B run of ours (config: the flat arguments; TensorBoard synced; resumed by the checkpoint's
    id): (W&B's run, None), or (None, why it did not start)."""
    import wandb  # only when asked for

    try:
        return wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, name=run_name, config=config,
                          id=(checkpoint or {}).get("wandb_id"), resume="allow", sync_tensorboard=True), None
    except Exception as e:  # no account, a wrong entity, no network: what W&B says, in one line
        return None, f"--track: W&B did not start: {pokemon_env.first_line(e)} (WANDB_MODE=offline keeps runs here)"


# TensorBoard names for the episode stats that the original design logs under its own names.
EPISODE_TAGS = {"episode_return": "mean_reward", "episode_length": "mean_length", "badges": "mean_badges"}


def log_episode_stats(writer, prefix: str, infos: list, global_step: int) -> None:
    """The mean of each of the episodes' statistics, but the start state's index."""
    stats = [pokemon_env.episode_stats(info) for info in infos]
    for key in stats[0].keys() - {"start_state"}:
        writer.add_scalar(f"{prefix}/{EPISODE_TAGS.get(key, key)}", np.mean([s[key] for s in stats]), global_step)


# ----- Data-parallel ranks (torchrun); with one process each helper is the identity -----


def start_process_group(rank: int, world_size: int):
    # Imported before the group exists: imported later (as the first optimizer does, through torch's compiler)
    # it keeps the group alive after destroy_process_group(), and the group's gloo threads, still running at
    # interpreter exit, abort it now and then (PyTorch 2.13; pytorch/pytorch#179291).
    import torch.distributed.checkpoint  # noqa: F401
    # torchrun's restarts reuse one store, which still holds the addresses of the last attempt's ranks
    # (pytorch/pytorch#135712): a prefix per attempt keeps a restarted rank from dialing a dead one.
    store, _, _ = next(dist.rendezvous("env://"))
    store = dist.PrefixStore(f"attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}", store)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)


def collective(function):
    """A collective operation that raises RunStopped, in one line, when another rank has gone."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except RuntimeError as e:  # gloo: "Connection closed by peer ..."
            raise RunStopped(f"lost contact with another rank ({pokemon_env.first_line(e)[:200]})") from None
    return wrapper


@collective
def all_gather(value) -> list:
    """Every rank's `value`, in rank order: [0] is rank 0's, which it has read for every rank."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


@collective
def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor  # in place


def fail_on_any_rank(problem: Optional[str]) -> None:
    """Exit status 2 on every rank if any rank has a problem; a rank prints its own, rank 0 the first."""
    problems = [(rank, problem) for rank, problem in enumerate(all_gather(problem)) if problem]
    if problem or problems and dist.get_rank() == 0:
        fail(problem or f"rank {problems[0][0]}: {problems[0][1]}")
    if problems:
        sys.exit(2)


# ----- Checkpoints, and the names play_pokemon.py imports: load a checkpoint, the agent from it, its actions -----

# A checkpoint's keys: format, model, optimizer, args (flat_args: every flag, the env's settings among them),
# global_step, update, run_name, rng, obs_shape, num_actions, rom_sha1, rom_name, best_badges, torch_version.
# Checkpoints written before 2026-12-03 also hold env_kwargs, the env's settings again.
CHECKPOINT_FORMAT = "ppo_pokemon/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line."""


def rng_states() -> dict:
    """Python, numpy and torch RNG states as tensors and plain types, for weights_only loading."""
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict) -> None:
    random.setstate(tuple(tuple(s) if isinstance(s, list) else s for s in states["python"]))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def write_atomically(path: str, write) -> None:
    """Write `path` by write(binary file) into a temporary file, fsynced, renamed over it: never half written."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp_path = f"{path}.tmp{os.getpid()}"  # never *.pt, and whose: see remove_stale_temporary_files
    try:
        with open(tmp_path, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def remove_stale_temporary_files(folder: str) -> None:
    """The temporary files (*.tmp<pid>) that processes killed while saving left in `folder`."""
    for path in glob.glob(os.path.join(folder, "*.tmp*")):
        pid = path.rsplit(".tmp", 1)[1]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            os.remove(path)


def newest_checkpoint(folder: str) -> Optional[str]:
    paths = [path for path in glob.glob(os.path.join(folder, "**", "*.pt"), recursive=True) if os.path.isfile(path)]
    return max(paths, key=os.path.getmtime, default=None)  # by modification time


def checkpoint_to_resume(args: Args) -> tuple[Optional[str], Optional[dict]]:
    """(file, checkpoint) of --resume: a file, a folder's newest; auto: checkpoints/<run_name>/'s, or (None, None)."""
    if args.resume != "auto":
        return load_checkpoint(args.resume)
    if args.run_name is None:
        raise CheckpointError("--resume auto continues the run named by --run-name: give --run-name NAME too")
    folder = os.path.join("checkpoints", args.run_name)
    return load_checkpoint(folder) if newest_checkpoint(folder) else (None, None)


def load_checkpoint(path: str, map_location="cpu") -> tuple[str, dict]:
    """(file, checkpoint) of a checkpoint of this script's, or a folder's newest; CheckpointError says why not."""
    folder, path = path, newest_checkpoint(path) if os.path.isdir(path) else path
    if path is None:
        raise CheckpointError(f"no checkpoint found: no *.pt under {folder.rstrip(os.sep)}/")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a damaged file raises one of many types, depending on where it broke
        reason = " ".join(str(e).split()).split("WeightsUnpickler error: ")[-1].split(". ")[0][:160] or type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path} (corrupt or not one): {reason}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint written by ppo_pokemon.py")
    return path, checkpoint


def agent_from_checkpoint(checkpoint: dict, obs_shape, num_actions: int, agent: Optional[Agent] = None) -> Agent:
    """The trained agent (loaded into `agent` if given), sure to fit the env's observations and buttons."""
    trained_shape, obs_shape = tuple(checkpoint["obs_shape"]), tuple(obs_shape)
    if trained_shape != obs_shape:
        raise CheckpointError(f"checkpoint observations are {trained_shape}, this env gives {obs_shape}")
    if int(checkpoint.get("num_actions", num_actions)) != num_actions:
        raise CheckpointError(f"checkpoint has {checkpoint['num_actions']} actions, this env has {num_actions}")
    agent = agent or Agent(obs_shape, num_actions)
    try:
        agent.load_state_dict(checkpoint["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint does not fit the agent: {pokemon_env.first_line(e)[:160]}") from None
    return agent


def choose_action(agent: Agent, obs: np.ndarray, greedy: bool = False) -> int:
    """The agent's button for one observation: sampled from the policy, as in training, or its most likely."""
    with torch.no_grad():
        x = torch.as_tensor(obs, device=next(agent.parameters()).device)[None]
        if not greedy:
            return int(agent.get_action_and_value(x)[0].item())
        return int(agent.actor(agent.hidden(x)).argmax(dim=1).item())


if __name__ == "__main__":
    main()
