"""What each of the trainer's speed measures gives on its own, in paired, alternating measurements.

    python benchmarks/levers.py            # about 4 minutes on 2 cores
    python benchmarks/levers.py --quick    # about 2 minutes

(a) The PPO update, minibatch by minibatch on the same data, with the measures added one at a
time: PyTorch's defaults (default memory layout, x / 255.0, Adam's for-each kernels), then
channels-last weights and inputs, then float().div_(255.0), then Adam's fused kernel, then
minibatches gathered from channels-last storage (the trainer as it is).
(b) The rollout with the policy in the loop on our Multiprocessing backend, 2 workers: one group of
envs (the policy acts on all, then all step) against two groups (the policy acts on one group
while the other steps), the trainer's loop, at 4, 8 and 16 envs.
Each variant takes its turn in every round, the order reversed every other round; medians.
"""
import argparse
import os
import sys
import time
import warnings

warnings.filterwarnings("ignore", message="The pynvml package is deprecated")
warnings.filterwarnings("ignore", message="Using SDL2 binaries")

import numpy as np
import psutil
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import pokemon_env  # noqa: E402
from ppo_pokemon import Agent, ppo_loss  # noqa: E402

ROM = os.path.join(ROOT, "roms", "standin.gb")


class PlainAgent(Agent):
    """The same network in PyTorch's defaults: default memory layout, x / 255.0."""

    def __init__(self, obs_shape):
        super().__init__(obs_shape)
        self.to(memory_format=torch.contiguous_format)

    def hidden(self, x):
        return self.network(x / 255.0)


class ChannelsLastDivide(Agent):
    """Channels last, but x / 255.0."""

    def hidden(self, x):
        return self.network(x.contiguous(memory_format=torch.channels_last) / 255.0)


def update_variants():
    """name: (agent, optimizer, channels-last storage?), each added measure on top of the one before."""
    torch.manual_seed(0)

    def adam(agent, fused=False):
        return torch.optim.Adam(agent.parameters(), lr=2.5e-4, eps=1e-5, fused=fused)

    plain, last, divide, fused, stored = PlainAgent((4, 84, 84)), ChannelsLastDivide((4, 84, 84)), *(
        Agent((4, 84, 84)) for _ in range(3))
    return {"defaults": (plain, adam(plain), False), "+ channels last": (last, adam(last), False),
            "+ float().div_": (divide, adam(divide), False), "+ fused Adam": (fused, adam(fused, True), False),
            "+ channels-last storage": (stored, adam(stored, True), True)}


def update_rates(rounds: int, batch_size: int = 2048, minibatch_size: int = 256) -> dict:
    torch.set_num_threads(psutil.cpu_count(logical=False) or 1)
    b_obs = torch.randint(0, 256, (batch_size, 4, 84, 84), dtype=torch.uint8)
    stores = {False: b_obs, True: b_obs.contiguous(memory_format=torch.channels_last)}
    b_actions = torch.randint(0, 8, (batch_size,))
    b_logprobs = torch.full((batch_size,), -np.log(8.0))
    b_advantages, b_returns, b_values = torch.randn(batch_size), torch.randn(batch_size), torch.randn(batch_size)
    variants = update_variants()
    seconds = {name: [] for name in variants}
    for round_index in range(rounds):
        mb_inds = np.random.permutation(batch_size)[:minibatch_size]
        for name in (list(variants) if round_index % 2 == 0 else list(variants)[::-1]):
            agent, optimizer, channels_last = variants[name]
            start = time.perf_counter()
            _, newlogprob, entropy, newvalue = agent.get_action_and_value(stores[channels_last][mb_inds],
                                                                          b_actions[mb_inds])
            pg_loss, v_loss, entropy_loss, *_ = ppo_loss(newlogprob, entropy, newvalue, b_logprobs[mb_inds],
                                                         b_advantages[mb_inds], b_returns[mb_inds], b_values[mb_inds],
                                                         0.2, True, True)
            optimizer.zero_grad()
            (pg_loss - 0.01 * entropy_loss + 0.5 * v_loss).backward()
            torch.nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
            optimizer.step()
            seconds[name].append(time.perf_counter() - start)
    return {name: minibatch_size / float(np.median(times)) for name, times in seconds.items()}


def rollout_rate(envs, agent, steps: int) -> float:
    """The trainer's rollout loop (pokemon_env.EnvGroups: the policy on one group while the other steps), stripped
    to its timing."""
    num_envs = envs.num_envs
    obs = torch.zeros((steps, num_envs, 4, 84, 84), dtype=torch.uint8)
    next_obs, next_done, scalars = torch.zeros((num_envs, 4, 84, 84), dtype=torch.uint8), np.zeros(num_envs), []
    next_obs.numpy()[:] = envs.reset(seed=0)
    start = time.perf_counter()
    for step in range(steps):
        results = (next_obs.numpy(), next_done, np.zeros(num_envs), np.zeros(num_envs), np.zeros(num_envs), scalars)
        for rows in envs.groups:
            envs.recv(rows)
            obs[step, rows] = next_obs[rows]
            with torch.no_grad():
                action = agent.get_action_and_value(obs[step, rows])[0]
            envs.send(action.numpy(), rows, results)
    envs.recv()
    return steps * num_envs / (time.perf_counter() - start)


def rollout_rates(rounds: int, steps: int = 128) -> dict:
    torch.set_num_threads(1)  # as the trainer's rollout
    agent, rates = Agent((4, 84, 84)), {}
    for num_envs in (4, 8, 16):
        variants = {f"{'one' if groups == 1 else 'two'} group{'s' * (groups > 1)}":
                    pokemon_env.EnvGroups({"rom_path": ROM}, num_envs, "multiprocessing", 2, groups) for groups in (1, 2)}
        measured = {name: [] for name in variants}
        for round_index in range(rounds):
            for name in (list(variants) if round_index % 2 == 0 else list(variants)[::-1]):
                measured[name].append(rollout_rate(variants[name], agent, steps))
        for envs in variants.values():
            envs.close()
        rates[num_envs] = {name: float(np.median(values)) for name, values in measured.items()}
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    options = parser.parse_args()
    updates = update_rates(40 if options.quick else 100)
    rollouts = rollout_rates(4 if options.quick else 8)
    lines = [f"`python benchmarks/levers.py{' --quick' if options.quick else ''}` on "
             f"{psutil.cpu_count(logical=False)} physical cores", "",
             "| (a) the PPO update, minibatch 256 | samples/s | against the defaults |", "|---|---|---|"]
    base = updates["defaults"]
    lines += [f"| {name} | {rate:,.0f} | {rate / base:.2f}x |" for name, rate in updates.items()]
    lines += ["", "| (b) rollout with the policy, 2 workers | one group, steps/s | two groups, steps/s | two / one |",
              "|---|---|---|---|"]
    lines += [f"| {num_envs} envs | {r['one group']:,.0f} | {r['two groups']:,.0f} | "
              f"{r['two groups'] / r['one group']:.2f}x |" for num_envs, r in rollouts.items()]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
