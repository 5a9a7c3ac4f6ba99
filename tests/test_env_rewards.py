"""Each reward term fires when its game state changes, once, and not otherwise.

Most cases write the state into the emulator's RAM between steps, where the real game keeps it,
to reach states the stand-in cannot (a party joining, swapping, evolving; garbage RAM). The last
tests play the stand-in itself: its wild battles, its bed, its gym leader, a blackout.
"""
import pytest

import standin_play
from pokemon_env import (
    ACTIONS, EVENT_FLAGS_ADDRESS, IS_IN_BATTLE, OBTAINED_BADGES_ADDRESS, POKEDEX_OWNED, POKEDEX_SEEN,
)

B = ACTIONS.index("b")  # does nothing while the player walks the overworld
PARTY_COUNT, PARTY_SPECIES, PARTY_MONS, MON_SIZE = 0xD163, 0xD164, 0xD16B, 44


def write_party(env, mons):
    """mons: list of (species, level, hp, max_hp)."""
    memory = env.pyboy.memory
    memory[PARTY_COUNT] = len(mons)
    for slot, (species, level, hp, max_hp) in enumerate(mons):
        memory[PARTY_SPECIES + slot] = species
        mon = PARTY_MONS + slot * MON_SIZE
        memory[mon] = species
        memory[mon + 0x01], memory[mon + 0x02] = hp >> 8, hp & 0xFF
        memory[mon + 0x21] = level
        memory[mon + 0x22], memory[mon + 0x23] = max_hp >> 8, max_hp & 0xFF
    memory[PARTY_SPECIES + len(mons)] = 0xFF


def position(env):
    memory = env.pyboy.memory
    return memory[0xD35E], memory[0xD362], memory[0xD361]


def step_rewards(env, action=B):
    """One step; the reward and the episode's per-term totals."""
    _, reward, _, _, _ = env.step(action)
    return reward, dict(env.reward_totals)


@pytest.fixture
def env(standin_env):
    env = standin_env(max_steps=1000)
    env.reset(seed=0)
    return env


def test_idle_steps_earn_nothing(env):
    for _ in range(5):
        assert step_rewards(env)[0] == 0


def test_reading_the_pc_pays_nothing_but_meeting_the_youngster_pays_an_event_once(env):
    for button in ["up"] * 4 + ["left", "left", "up", "a", "b", "b"]:  # the bedroom PC at (1, 1): text only
        env.step(ACTIONS.index(button))
    assert env.reward_totals["event"] == 0
    for button in ["right"] * 5 + ["up"] + standin_play.DOWNSTAIRS_TO_TOWN + standin_play.TOWN_TO_ROUTE \
            + standin_play.ROUTE_TO_GRASS + standin_play.GRASS_TO_YOUNGSTER:  # across the grass to (4, 3)
        while not standin_play.in_control(env.pyboy):  # fight any wild battle on the way
            env.step(ACTIONS.index("a"))
        env.step(ACTIONS.index(button))
    assert position(env) == (standin_play.ROUTE_1, 4, 3) and env.reward_totals["event"] == 0
    reward, totals = step_rewards(env, ACTIONS.index("a"))  # facing the youngster at (4, 2)
    assert reward == pytest.approx(1.6) and env.pyboy.memory[EVENT_FLAGS_ADDRESS + 4] & 1  # event 32
    for button in ["b", "b", "b", "a", "b", "b", "b"]:  # hear it all again: no second reward
        assert step_rewards(env, ACTIONS.index(button))[0] == 0
    assert totals["event"] == pytest.approx(1.6)


def test_resting_in_bed_heals(env):
    write_party(env, [(0x99, 10, 10, 40)])
    step_rewards(env)
    rewards = [step_rewards(env, ACTIONS.index("left"))[0] for _ in range(2)]  # onto the bed at (1, 6)
    assert rewards == [pytest.approx(0.01), pytest.approx(0.01 + 0.8 * 30 / 40)]
    assert env.party[2] == (40,)


def test_badge_reward_once_per_new_badge(env):
    memory = env.pyboy.memory
    memory[OBTAINED_BADGES_ADDRESS] |= 0b001
    assert step_rewards(env)[0] == pytest.approx(4.0)
    assert step_rewards(env)[0] == 0
    memory[OBTAINED_BADGES_ADDRESS] |= 0b110
    assert step_rewards(env)[0] == pytest.approx(8.0)
    memory[OBTAINED_BADGES_ADDRESS] &= ~0b001
    step_rewards(env)
    memory[OBTAINED_BADGES_ADDRESS] |= 0b001  # lost and regained: not new
    assert step_rewards(env)[0] == 0
    assert env.reward_totals["badge"] == pytest.approx(12.0)


def test_event_flags_set_in_the_start_state_earn_nothing(standin_env, tmp_path):
    env = standin_env()
    env.reset(seed=0)
    env.pyboy.memory[EVENT_FLAGS_ADDRESS + 10] |= 0b1  # already set when the episode starts
    state = tmp_path / "with_flag.state"
    env.save_state(state)

    env = standin_env(init_state=state, max_steps=4)
    env.reset(seed=0)
    memory = env.pyboy.memory
    assert step_rewards(env)[0] == 0
    memory[EVENT_FLAGS_ADDRESS + 300] |= 0b100  # newly set: one flag
    assert step_rewards(env)[0] == pytest.approx(1.6)
    memory[EVENT_FLAGS_ADDRESS + 300] &= ~0b100
    step_rewards(env)
    memory[EVENT_FLAGS_ADDRESS + 300] |= 0b100  # cleared and set again: pays once per episode
    _, reward, _, truncated, info = env.step(B)
    assert reward == 0 and truncated
    assert info["event_flags"] == 1 and info["reward_event"] == pytest.approx(1.6)


def test_pokedex_seen_and_owned(env):
    memory = env.pyboy.memory
    memory[POKEDEX_SEEN] |= 0b11  # two species seen
    assert step_rewards(env)[0] == pytest.approx(2 * 1.6)
    memory[POKEDEX_OWNED + 18] |= 0b1  # one owned
    reward, totals = step_rewards(env)
    assert reward == pytest.approx(1.6)
    assert totals["seen"] == pytest.approx(3.2) and totals["owned"] == pytest.approx(1.6)
    assert step_rewards(env)[0] == 0


def test_levels_gained_count_but_a_mon_joining_does_not(env):
    write_party(env, [(0x99, 5, 20, 20)])
    assert step_rewards(env)[0] == 0  # a level-5 mon joins: no level reward
    write_party(env, [(0x99, 7, 26, 26)])  # two level-ups: HP and max HP rise together
    reward, totals = step_rewards(env)
    assert reward == pytest.approx(0.02)
    assert totals["level"] == pytest.approx(0.02) and totals["heal"] == 0
    write_party(env, [(0x99, 7, 26, 26), (0x24, 30, 80, 80)])
    assert step_rewards(env)[0] == 0  # a level-30 mon joins
    write_party(env, [(0x24, 30, 80, 80), (0x99, 7, 26, 26)])
    assert step_rewards(env)[0] == 0  # swapping places is not levelling
    write_party(env, [(0x24, 31, 82, 82), (0x99, 7, 26, 26)])
    assert step_rewards(env)[0] == pytest.approx(0.01)


def test_same_species_swap_and_garbage_party_earn_nothing(env):
    write_party(env, [(0x99, 5, 20, 20), (0x99, 9, 30, 30)])
    step_rewards(env)
    for _ in range(3):  # swapping two of a kind looks like +4 levels in slot 0: never paid
        write_party(env, [(0x99, 9, 30, 30), (0x99, 5, 20, 20)])
        assert step_rewards(env)[0] == 0
        write_party(env, [(0x99, 5, 20, 20), (0x99, 9, 30, 30)])
        assert step_rewards(env)[0] == 0
    for garbage_count in [0xFF, 7]:  # as during the intro
        env.pyboy.memory[PARTY_COUNT] = garbage_count
        assert step_rewards(env)[0] == 0
        assert env.party[1] == (5, 9)  # the last valid party stands
    write_party(env, [(0x99, 5, 20, 20), (0x99, 9, 30, 30)])
    assert step_rewards(env)[0] == 0
    assert env.reward_totals["level"] == 0


def test_healing_outside_battle_only(env):
    memory = env.pyboy.memory
    write_party(env, [(0x99, 10, 10, 40)])
    assert step_rewards(env)[0] == 0  # joins hurt
    write_party(env, [(0x99, 10, 30, 40)])  # 20 of 40 HP restored
    assert step_rewards(env)[0] == pytest.approx(0.8 * 20 / 40)
    write_party(env, [(0x99, 10, 10, 40)])
    assert step_rewards(env)[0] == 0  # damage is not penalised
    memory[IS_IN_BATTLE] = 1
    step_rewards(env)
    write_party(env, [(0x99, 10, 40, 40)])  # a potion in battle
    assert step_rewards(env)[0] == 0
    memory[IS_IN_BATTLE] = 0
    assert step_rewards(env)[0] == 0  # the battle just ended
    assert env.reward_totals["heal"] == pytest.approx(0.4)


def test_blackout_penalty_and_no_heal_for_the_revival(env):
    write_party(env, [(0x99, 10, 40, 40), (0x24, 10, 30, 30)])
    step_rewards(env)
    write_party(env, [(0x99, 10, 0, 40), (0x24, 10, 5, 30)])
    assert step_rewards(env)[0] == 0  # one fainted: not a blackout
    write_party(env, [(0x99, 10, 0, 40), (0x24, 10, 0, 30)])
    assert step_rewards(env)[0] == pytest.approx(-0.08)
    assert step_rewards(env)[0] == 0  # still wiped out: counted once
    env.pyboy.memory[PARTY_MONS + 0x04] = 0x08  # the party changes (poisoned) but stays wiped out
    assert step_rewards(env)[0] == 0
    write_party(env, [(0x99, 10, 40, 40), (0x24, 10, 30, 30)])  # warped and healed
    assert step_rewards(env)[0] == 0
    assert env.blackouts == 1 and env.reward_totals["blackout"] == pytest.approx(-0.08)


def test_zero_weight_disables_a_term(standin_env):
    env = standin_env(badge_reward=0.0, explore_reward=0.0)
    env.reset(seed=0)
    env.pyboy.memory[OBTAINED_BADGES_ADDRESS] |= 0b1
    assert step_rewards(env)[0] == 0


# ----- Played on the stand-in: its wild battles, its bed, its gym leader -----


def play(env, buttons):
    return [env.step(ACTIONS.index(button)) for button in buttons]


def test_badge_route_pays_each_term_for_what_happened(standin_env):
    env = standin_env(max_steps=len(standin_play.BADGE_ROUTE))
    env.reset(seed=0)
    seen_at_start = sum(bin(b).count("1") for b in env.pyboy.memory[POKEDEX_SEEN : POKEDEX_SEEN + 19])
    owned_at_start = sum(bin(b).count("1") for b in env.pyboy.memory[POKEDEX_OWNED : POKEDEX_OWNED + 19])
    level_at_start = sum(env.party[1])
    results = play(env, standin_play.BADGE_ROUTE)
    rewards = [reward for _, reward, _, _, _ in results]
    info = results[-1][4]

    assert info["badges"] == 1 and info["reward_badge"] == pytest.approx(4.0)
    assert sum(r >= 4.0 for r in rewards) == 1  # paid once, when the leader was beaten
    assert info["level_sum"] == 17 and info["reward_level"] == pytest.approx(0.01 * (17 - level_at_start))
    assert info["pokedex_seen"] > seen_at_start and info["pokedex_owned"] > owned_at_start
    assert info["reward_seen"] == pytest.approx(1.6 * (info["pokedex_seen"] - seen_at_start))
    assert info["reward_owned"] == pytest.approx(1.6 * (info["pokedex_owned"] - owned_at_start))
    assert info["event_flags"] == 1 and info["reward_event"] == pytest.approx(1.6)  # BEAT_BROCK
    assert info["reward_heal"] > 0  # rested in bed after battles
    assert info["blackouts"] == 0 and info["reward_blackout"] == 0
    assert info["maps_visited"] == 5  # bedroom, 1F, Pallet Town, Route 1, gym
    assert info["reward_explore"] == pytest.approx(0.01 * (info["unique_tiles"] - 1))  # start tile free
    assert info["episode_return"] == pytest.approx(sum(rewards))


def test_blackout_in_battle_is_penalised_once_and_the_revival_is_not_healing(standin_env):
    env = standin_env(max_steps=1000)
    env.reset(seed=0)
    play(env, standin_play.GRASS_ROUTE)
    for _ in range(40):  # battle in the grass without resting until the party is wiped out
        play(env, ["up", "a", "a", "a", "a", "down", "a", "a", "a", "a"])
        if env.blackouts:
            break
    play(env, ["b"] * 8)  # the blackout text, the warp home
    assert env.blackouts == 1
    assert env.reward_totals["blackout"] == pytest.approx(-0.08) and env.reward_totals["heal"] == 0
    assert position(env) == standin_play.START and env.party[2] == env.party[3]  # home, full HP
