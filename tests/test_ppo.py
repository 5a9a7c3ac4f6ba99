"""Unit tests of the trainer's maths and pieces: GAE, the PPO loss, the agent, arguments, checkpoints; and one
tiny PPO iteration of main() in this process."""
import dataclasses
import os
import random
import signal

import numpy as np
import pytest
import torch

import pokemon_env
import ppo_pokemon
from ppo_pokemon import Agent, Args, compute_gae, ppo_loss


# ----- GAE -----


def reference_gae(rewards, values, terminations, truncations, dones, next_value, gamma, lam):
    """Advantages written as explicit sums: A_t = sum_k (gamma lam)^k delta_(t+k), to the episode end.

    delta_k bootstraps from the value of the next observation, or 0 after a termination; after a
    truncation the next observation is the final one, whose value the agent computes in the reset
    step (values[k + 1]). PufferLib's reset steps (dones) are no transitions: advantage 0.
    """
    num_steps, num_envs = rewards.shape
    advantages = np.zeros((num_steps, num_envs))
    for env in range(num_envs):
        for t in range(num_steps):
            if dones[t, env]:
                continue
            total, weight = 0.0, 1.0
            for k in range(t, num_steps):
                v_next = next_value[env] if k == num_steps - 1 else values[k + 1, env]
                bootstrap = 0.0 if terminations[k, env] else v_next
                total += weight * (rewards[k, env] + gamma * bootstrap - values[k, env])
                if terminations[k, env] or truncations[k, env]:
                    break
                weight *= gamma * lam
            advantages[t, env] = total
    return advantages, advantages + values


def pufferlib_rollout(num_steps, num_envs, rng, p_end=0.15):
    """Random rollout data with PufferLib's timing: after a step that ends an episode, the next
    step is the reset step (reward 0, no flags), and its observation is a first one."""
    rewards = rng.normal(size=(num_steps, num_envs))
    values = rng.normal(size=(num_steps, num_envs))
    terminations = np.zeros((num_steps, num_envs))
    truncations = np.zeros((num_steps, num_envs))
    dones = np.zeros((num_steps, num_envs))
    dones[0] = rng.random(num_envs) < 0.3  # the previous rollout may have ended on a final step
    for t in range(num_steps):
        for env in range(num_envs):
            if dones[t, env]:
                rewards[t, env] = 0.0
                continue
            end = rng.random()
            if end < p_end / 2:
                terminations[t, env] = 1
            elif end < p_end:
                truncations[t, env] = 1
            if t + 1 < num_steps:
                dones[t + 1, env] = terminations[t, env] or truncations[t, env]
    next_value = rng.normal(size=num_envs)
    return rewards, values, terminations, truncations, dones, next_value


def as_tensors(*arrays):
    return [torch.as_tensor(a, dtype=torch.float32) for a in arrays]


@pytest.mark.parametrize("seed", range(5))
def test_compute_gae_matches_reference(seed):
    data = pufferlib_rollout(64, 3, np.random.default_rng(seed))
    assert data[2].sum() > 0 and data[3].sum() > 0 and data[4].sum() > 0  # every case is exercised
    advantages, returns = compute_gae(*as_tensors(*data), 0.99, 0.95)
    ref_advantages, ref_returns = reference_gae(*data, 0.99, 0.95)
    np.testing.assert_allclose(advantages.numpy(), ref_advantages, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(returns.numpy(), ref_returns, rtol=1e-4, atol=1e-4)


def test_compute_gae_hand_worked_cases():
    gamma, lam = 0.9, 0.8
    values = [[0.5], [0.7], [0.2]]
    rewards = [[1.0], [0.0], [2.0]]
    dones = [[0], [1], [0]]  # step 1 is the reset step after step 0 ended the episode
    no_flags, flag_first = [[0], [0], [0]], [[1], [0], [0]]
    next_value = [0.4]
    tail = 2.0 + gamma * 0.4 - 0.2  # the last step bootstraps from next_value

    # Termination: no bootstrap, nothing flows back across the boundary, the reset step is zeroed.
    adv, ret = compute_gae(*as_tensors(rewards, values, flag_first, no_flags, dones, next_value), gamma, lam)
    np.testing.assert_allclose(adv.flatten().numpy(), [1.0 - 0.5, 0.0, tail], rtol=1e-6)
    np.testing.assert_allclose(ret.flatten().numpy(), [1.0, 0.7, tail + 0.2], rtol=1e-6)

    # Truncation: bootstraps from V(final observation) = values[1], still no flow back.
    adv, _ = compute_gae(*as_tensors(rewards, values, no_flags, flag_first, dones, next_value), gamma, lam)
    np.testing.assert_allclose(adv.flatten().numpy(), [1.0 + gamma * 0.7 - 0.5, 0.0, tail], rtol=1e-6)

    # A rollout that ends on a truncation bootstraps from next_value, the final observation's value.
    adv, _ = compute_gae(*as_tensors([[1.0]], [[0.5]], [[0]], [[1]], [[0]], [3.0]), gamma, lam)
    np.testing.assert_allclose(adv.flatten().numpy(), [1.0 + gamma * 3.0 - 0.5], rtol=1e-6)
    adv, _ = compute_gae(*as_tensors([[1.0]], [[0.5]], [[1]], [[0]], [[0]], [3.0]), gamma, lam)
    np.testing.assert_allclose(adv.flatten().numpy(), [1.0 - 0.5], rtol=1e-6)


def test_compute_gae_without_episode_ends_is_cleanrl_gae():
    rng = np.random.default_rng(7)
    rewards, values = rng.normal(size=(16, 2)), rng.normal(size=(16, 2))
    zeros, next_value = np.zeros((16, 2)), rng.normal(size=2)
    adv, _ = compute_gae(*as_tensors(rewards, values, zeros, zeros, zeros, next_value), 0.99, 0.95)
    expected, lastgaelam = np.zeros((16, 2)), 0.0
    for t in reversed(range(16)):
        nextvalues = next_value if t == 15 else values[t + 1]
        delta = rewards[t] + 0.99 * nextvalues - values[t]
        expected[t] = lastgaelam = delta + 0.99 * 0.95 * lastgaelam
    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-4, atol=1e-5)


# ----- PPO loss -----


def loss_terms(ratio, advantages, newvalue, values, returns, clip_vloss=True):
    n = len(ratio)
    logprobs = torch.zeros(n)
    return ppo_loss(torch.log(torch.tensor(ratio)), torch.full((n,), 2.0), torch.tensor(newvalue), logprobs,
                    torch.tensor(advantages), torch.tensor(returns), torch.tensor(values), 0.2, clip_vloss,
                    norm_adv=False)


def test_ppo_loss_clips_the_surrogate_only_where_it_would_gain():
    # Positive advantage: a ratio beyond 1 + clip earns no more. Negative: no clip below 1 + clip.
    zeros = [0.0, 0.0]
    pg_loss, _, entropy_loss, _, _, clipfrac = loss_terms([1.5, 1.5], [1.0, -1.0], zeros, zeros, zeros)
    assert pg_loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert clipfrac.item() == 1.0 and entropy_loss.item() == 2.0
    pg_loss, *_ = loss_terms([0.5, 0.5], [1.0, -1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0])
    assert pg_loss.item() == pytest.approx((-0.5 + 0.8) / 2)


def test_ppo_loss_value_clipping_takes_the_pessimistic_term():
    # The new value moved 1.0 from the old (clip 0.2): clipped prediction 0.2, return 1.0.
    _, v_loss, *_ = loss_terms([1.0], [0.0], [1.0], [0.0], [1.0])
    assert v_loss.item() == pytest.approx(0.5 * max(0.0, (0.2 - 1.0) ** 2))
    _, v_loss, *_ = loss_terms([1.0], [0.0], [1.0], [0.0], [1.0], clip_vloss=False)
    assert v_loss.item() == pytest.approx(0.0)


def test_ppo_loss_kl_is_zero_on_policy_and_positive_off_it():
    _, _, _, old_kl, kl, clipfrac = loss_terms([1.0, 1.0], [1.0, -1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0])
    assert kl.item() == pytest.approx(0.0) and old_kl.item() == pytest.approx(0.0) and clipfrac.item() == 0.0
    _, _, _, _, kl, _ = loss_terms([1.3, 0.8], [1.0, -1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0])
    assert kl.item() > 0


def test_ppo_loss_standardises_the_advantages_by_default():
    """norm_adv (the default): the surrogate sees (A - mean) / std, so shifting and scaling A changes nothing."""
    assert Args().norm_adv
    ratio, advantages = torch.tensor([1.3, 0.9, 1.0, 1.05]), torch.tensor([1.0, 2.0, 3.0, 6.0])
    n = len(ratio)

    def pg_loss(advantages, norm_adv):
        return ppo_loss(ratio.log(), torch.zeros(n), torch.zeros(n), torch.zeros(n), advantages, torch.zeros(n),
                        torch.zeros(n), 0.2, True, norm_adv)[0].item()

    standardised = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    expected = torch.max(-standardised * ratio, -standardised * ratio.clamp(0.8, 1.2)).mean().item()
    assert pg_loss(advantages, True) == pytest.approx(expected)
    assert pg_loss(10 * advantages + 5, True) == pytest.approx(expected, rel=1e-5)
    assert pg_loss(advantages, False) != pytest.approx(expected)
    assert pg_loss(advantages[:1], True) == pg_loss(advantages[:1], False)  # one sample: nothing to standardise


# ----- Agent -----


def test_agent_shapes_and_parameter_count():
    agent = Agent((4, 84, 84), 8)
    obs = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    action, logprob, entropy, value = agent.get_action_and_value(obs)
    assert action.shape == (3,) and logprob.shape == (3,) and entropy.shape == (3,) and value.shape == (3, 1)
    assert agent.get_value(obs).shape == (3, 1)
    assert 0 <= int(action.min()) and int(action.max()) < 8
    assert torch.all(entropy <= np.log(8) + 1e-5)
    # Nature CNN: 8,224 + 32,832 + 36,928 conv, 1,606,144 (3136 x 512) dense, 4,104 actor, 513 critic.
    assert sum(p.numel() for p in agent.parameters()) == 1_688_745
    # Scores the given actions.
    _, logprob2, _, _ = agent.get_action_and_value(obs, action)
    torch.testing.assert_close(logprob, logprob2)


def test_agent_adapts_to_the_observation_shape():
    agent = Agent((12, 72, 80), 8)  # colour, 4 frames, another size
    _, _, _, value = agent.get_action_and_value(torch.zeros((2, 12, 72, 80), dtype=torch.uint8))
    assert value.shape == (2, 1)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    agent = Agent((4, 84, 84), 8)
    obs = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    _, logprob, entropy, value = agent.get_action_and_value(obs)
    (logprob.sum() + entropy.sum() + value.sum()).backward()
    for name, parameter in agent.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


# ----- Arguments -----


@pytest.fixture
def any_rom(standin_rom) -> str:
    return str(standin_rom)


def test_every_env_setting_is_a_trainer_flag_and_recorded():
    """Each field of pokemon_env.EnvSettings is a flag of its own name and lands in the flat args."""
    for field in dataclasses.fields(pokemon_env.EnvSettings):
        flag = "--" + field.name.replace("_", "-")
        value = {"rom_path": "x.gb", "init_state": ["a.state", "states/"]}.get(field.name)
        if isinstance(field.default, bool):
            argv, value = [("--no-" if field.default else "--") + field.name.replace("_", "-")], not field.default
        else:
            value = value or field.default * 2 + 1
            argv = [flag, *value] if isinstance(value, list) else [flag, str(value)]
        args = ppo_pokemon.tyro.cli(Args, args=argv)
        assert getattr(args.env, field.name) == value, flag
        assert ppo_pokemon.flat_args(args)[field.name] == value, flag
        assert ppo_pokemon.args_from_flat(ppo_pokemon.flat_args(args)) == args


def test_a_checkpoint_with_one_init_state_string_resumes():
    """Checkpoints from before many start states recorded init_state as one path: now a list of one."""
    args = ppo_pokemon.args_from_flat({**ppo_pokemon.flat_args(Args()), "init_state": "old.state"})
    assert ppo_pokemon.tyro.cli(Args, args=[], default=args).env.init_state == ["old.state"]


def test_defaults_match_the_design():
    a = Args()
    sizes = (a.num_envs, a.total_timesteps, a.batch_size, a.minibatch_size, a.update_epochs)
    assert sizes == (4, 500_000, 2048, 256, 4)
    assert (a.learning_rate, a.gamma, a.gae_lambda, a.clip_coef, a.ent_coef, a.vf_coef, a.max_grad_norm) == (
        2.5e-4, 0.99, 0.95, 0.2, 0.01, 0.5, 0.5)
    assert a.anneal_lr and a.clip_vloss and a.target_kl is None


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(num_envs=0), "--num-envs must be at least 1"),
        (dict(batch_size=2047), "multiple of --num-envs"),
        (dict(minibatch_size=300), "divisible by --minibatch-size"),
        (dict(total_timesteps=1000), "less than one batch"),
        (dict(num_envs=3, batch_size=12, minibatch_size=4, vec_backend="multiprocessing", num_workers=2),
         "divisible by --num-workers"),
        (dict(vec_backend="multiprocessing", num_workers=4), "exceeds the 2 physical cores"),
        (dict(vec_backend="serial", num_workers=2), "applies only to --vec-backend multiprocessing"),
        (dict(update_epochs=0), "--update-epochs must be at least 1"),
        (dict(obs_height=20), "at least 36x36"),
        (dict(rom_path="roms/no_such_rom.gb"), "ROM not found"),
        (dict(learning_rate=float("nan")), "--learning-rate must be a finite number"),
        (dict(learning_rate=float("inf")), "--learning-rate must be a finite number"),
        (dict(gamma=float("nan")), "--gamma must be a finite number"),
        (dict(target_kl=float("inf")), "--target-kl must be a finite number"),
        (dict(swarm_share=float("nan")), "--swarm-share must be in [0, 1] (got nan)"),
        (dict(swarm_share=1.5), "--swarm-share must be in [0, 1] (got 1.5)"),
        (dict(swarm_share=float("-inf")), "--swarm-share must be in [0, 1] (got -inf)"),
        (dict(learning_rate=0.0), "--learning-rate must be positive"),
        (dict(target_kl=-0.1), "--target-kl must be positive"),
        (dict(ent_coef=-1.0), "--ent-coef must be 0 or more"),
        (dict(vf_coef=-0.5), "--vf-coef must be 0 or more"),
        (dict(badge_reward=float("nan")), "--badge-reward must be a finite number >= 0"),
        (dict(blackout_penalty=-1.0), "--blackout-penalty must be a finite number >= 0"),
        (dict(frame_skip=1), "--frame-skip must be at least 2"),
        (dict(run_name="a/b"), "--run-name must be a plain folder name"),
        (dict(init_state=["no_such.state"]), "init_state no_such.state does not exist"),
        (dict(init_state=[]), "--init-state needs a state file or folder"),
    ],
)
def test_impossible_arguments_are_refused(changes, message, any_rom):
    args = ppo_pokemon.args_from_flat({**ppo_pokemon.flat_args(Args()), "rom_path": any_rom, **changes})
    assert message in ppo_pokemon.check_args(args, physical_cores=2)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(num_envs=3, batch_size=6, minibatch_size=2), "--num-envs (3) must be divisible by the 2 ranks"),
        (dict(minibatch_size=1), "--minibatch-size (1) must be divisible by the 2 ranks"),
        (dict(num_envs=12, batch_size=2040, minibatch_size=8, vec_backend="multiprocessing", num_workers=4),
         "--num-envs per rank (6) must be divisible by --num-workers (4)"),
        (dict(num_envs=8, vec_backend="multiprocessing", num_workers=3), "--num-envs per rank (4) must be divisible by --num-workers (3)"),
    ],
)
def test_arguments_that_do_not_share_out_over_two_ranks_are_refused(changes, message, any_rom):
    args = ppo_pokemon.args_from_flat({**ppo_pokemon.flat_args(Args()), "rom_path": any_rom, **changes})
    assert ppo_pokemon.check_args(args, physical_cores=8, world_size=2) == message
    assert ppo_pokemon.check_args(dataclasses.replace(args, num_envs=8, batch_size=2048, minibatch_size=256,
                                                      num_workers=2), physical_cores=8, world_size=2) is None


def test_default_arguments_pass_and_backend_choice(any_rom):
    args = Args(env=pokemon_env.EnvSettings(rom_path=any_rom))
    assert ppo_pokemon.check_args(args, physical_cores=2) is None
    # (backend, workers, groups): two groups where each of two or more workers has at most 2 envs
    assert ppo_pokemon.choose_vectorization(args, 4, 2) == ("multiprocessing", 2, 2)
    assert ppo_pokemon.choose_vectorization(args, 4, 8) == ("multiprocessing", 4, 2)
    assert ppo_pokemon.choose_vectorization(args, 8, 2) == ("multiprocessing", 2, 1)
    assert ppo_pokemon.choose_vectorization(args, 4, 1) == ("serial", None, 1)
    assert ppo_pokemon.choose_vectorization(args, 6, 4) == ("multiprocessing", 3, 2)
    assert ppo_pokemon.choose_vectorization(args, 3, 2) == ("serial", None, 1)  # no divisor but 1 fits 2 cores
    one_worker = dataclasses.replace(args, vec_backend="multiprocessing")
    assert ppo_pokemon.choose_vectorization(one_worker, 3, 2) == ("multiprocessing", 1, 1)


def test_checkpoint_round_trip_and_bad_files(tmp_path):
    agent = Agent((4, 84, 84), 8)
    path = str(tmp_path / "c.pt")
    saved = {"format": ppo_pokemon.CHECKPOINT_FORMAT, "model": agent.state_dict(), "rng": ppo_pokemon.rng_states()}
    ppo_pokemon.write_atomically(path, lambda f: torch.save(saved, f))
    assert ppo_pokemon.load_checkpoint(str(tmp_path))[0] == path  # a folder: its newest
    _, loaded = ppo_pokemon.load_checkpoint(path)
    Agent((4, 84, 84), 8).load_state_dict(loaded["model"])
    assert list(tmp_path.iterdir()) == [tmp_path / "c.pt"]  # no temporary file left behind

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "c.pt").read_bytes()[:100_000])
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    cases = [("junk.pt", "cannot read"), ("cut.pt", "cannot read"), ("other.pt", "not a checkpoint"),
             ("none.pt", "not found")]
    for name, reason in cases:
        with pytest.raises(ppo_pokemon.CheckpointError, match=reason) as error:
            ppo_pokemon.load_checkpoint(str(tmp_path / name))
        assert "\n" not in str(error.value)


def test_rng_states_restored_from_a_checkpoint_repeat_the_draws(tmp_path):
    """Draw, save, draw, restore, draw again: the draws after the save repeat, for python, numpy and torch."""
    import random

    def draw():
        return random.random(), float(np.random.rand()), float(np.random.normal()), torch.rand(3).tolist()

    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    draw()  # numpy now holds the second of a pair of gaussians: its state must keep it
    path = str(tmp_path / "rng.pt")
    saved = {"format": ppo_pokemon.CHECKPOINT_FORMAT, "rng": ppo_pokemon.rng_states()}
    ppo_pokemon.write_atomically(path, lambda f: torch.save(saved, f))
    after_save = [draw() for _ in range(3)]
    random.seed(99), np.random.seed(99), torch.manual_seed(99)  # anything in between
    ppo_pokemon.set_rng_states(ppo_pokemon.load_checkpoint(path)[1]["rng"])
    assert [draw() for _ in range(3)] == after_save


def test_resume_takes_a_file_a_folders_newest_or_auto(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resume = lambda **kwargs: ppo_pokemon.checkpoint_to_resume(Args(**kwargs))  # noqa: E731
    with pytest.raises(ppo_pokemon.CheckpointError, match="give --run-name NAME too"):
        resume(resume="auto")
    assert resume(resume="auto", run_name="new") == (None, None)  # nothing to continue: a new run
    folder = tmp_path / "checkpoints" / "new"
    folder.mkdir(parents=True)
    with pytest.raises(ppo_pokemon.CheckpointError, match="no checkpoint found: no [*].pt under .*new/$"):
        resume(resume=str(folder))
    for update in (1, 2):  # by modification time, not by name
        path = folder / f"checkpoint_update00000{3 - update}.pt"
        torch.save({"format": ppo_pokemon.CHECKPOINT_FORMAT, "update": update}, path)
        os.utime(path, (update, update))
    (folder / "checkpoint_update000003.pt.tmp123").write_bytes(b"")  # a save in progress is no checkpoint
    newest = str(folder / "checkpoint_update000001.pt")
    assert resume(resume=str(folder))[0] == newest and resume(resume=str(folder))[1]["update"] == 2
    assert resume(resume="auto", run_name="new")[0] == os.path.join("checkpoints", "new", "checkpoint_update000001.pt")
    assert resume(resume=newest)[1]["update"] == 2
    with pytest.raises(ppo_pokemon.CheckpointError, match="checkpoint not found: x.pt"):
        resume(resume="x.pt")


# ----- One tiny PPO iteration of the real trainer, in this process -----


def run_main(monkeypatch, *argv):
    """ppo_pokemon.main() in this process with these arguments; what it sets for the whole process is restored."""
    monkeypatch.setattr("sys.argv", ["ppo_pokemon.py", *map(str, argv)])
    monkeypatch.setattr(ppo_pokemon.warnings, "showwarning", ppo_pokemon.warnings.showwarning)
    monkeypatch.setattr(ppo_pokemon.sys, "excepthook", ppo_pokemon.sys.excepthook)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    threads = torch.get_num_threads()
    try:
        ppo_pokemon.main()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        torch.set_num_threads(threads)


IN_PROCESS = ["--num-envs", "2", "--eval-episodes", "0", "--vec-backend", "serial", "--torch-threads", "1"]


def test_one_ppo_iteration_in_process_leaves_the_reset_steps_out_of_the_minibatches(tmp_path, monkeypatch,
                                                                                    standin_rom):
    """main() itself: 2 envs x 48 steps, episodes of 40 steps, so each env has one reset step (its action ignored,
    advantage 0) in the batch of 96; the update must see the other 94, each once an epoch."""
    seen = []  # per minibatch: the advantages that ppo_loss got

    def recording_ppo_loss(*args, **kwargs):
        seen.append(args[4].clone())
        return ppo_loss(*args, **kwargs)

    monkeypatch.setattr(ppo_pokemon, "ppo_loss", recording_ppo_loss)
    monkeypatch.chdir(tmp_path)
    run_main(monkeypatch, "--rom-path", standin_rom, *IN_PROCESS, "--num-steps", "48", "--minibatch-size", "48",
             "--total-timesteps", "96", "--max-steps", "40", "--update-epochs", "2")
    assert [len(advantages) for advantages in seen] == [47, 47] * 2  # 94 a epoch, in two near-equal minibatches
    assert all((advantages != 0).all() for advantages in seen)  # none of them a reset step
    (checkpoint,) = (tmp_path / "checkpoints").glob("*/checkpoint_update000001.pt")
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 96


@pytest.mark.slow  # two short trainings
def test_keep_checkpoints_keeps_the_newest_and_never_the_one_just_written(tmp_path, monkeypatch, standin_rom):
    monkeypatch.chdir(tmp_path)
    tiny = ["--rom-path", standin_rom, *IN_PROCESS, "--num-steps", "8", "--minibatch-size", "16",
            "--update-epochs", "1", "--save-interval", "1", "--run-name", "kept"]
    run_main(monkeypatch, *tiny, "--total-timesteps", "64", "--keep-checkpoints", "2")  # 4 updates
    folder = tmp_path / "checkpoints" / "kept"
    names = lambda: sorted(path.name for path in folder.iterdir())  # noqa: E731
    assert names() == ["checkpoint_update000003.pt", "checkpoint_update000004.pt"]
    # Resumed from update 3 while a later-named checkpoint lies there: the new update 4 stays, not the later name.
    (folder / "checkpoint_update000009.pt").write_bytes((folder / "checkpoint_update000004.pt").read_bytes())
    run_main(monkeypatch, "--resume", folder / "checkpoint_update000003.pt", "--keep-checkpoints", "1")
    assert names() == ["checkpoint_update000004.pt"]
    assert torch.load(folder / "checkpoint_update000004.pt", weights_only=True)["args"]["keep_checkpoints"] == 1
