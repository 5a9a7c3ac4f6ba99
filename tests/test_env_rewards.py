"""Each reward term fires when its game state changes, once, and not otherwise.

Most cases write the state into the emulator's RAM between steps, where the real game keeps it,
to reach states the stand-in cannot (a party swapping, evolving, a Pokemon leaving; garbage RAM).
The others play the stand-in itself: Oak's lab, its warps, its wild battles, its bed, its gym, a
blackout.
"""
import re
from pathlib import Path

import pytest

import standin_play
from pokemon_env import (
    ACTIONS, EVENT_FLAGS, EVENT_FLAGS_ADDRESS, IS_IN_BATTLE, OBTAINED_BADGES_ADDRESS, POKEDEX_OWNED,
    POKEDEX_SEEN, UNPAID_EVENTS,
)

README = Path(__file__).resolve().parent.parent / "README.md"
# The README's list of the flags that pay nothing, in backticks: checked against the code's, and played.
README_UNPAID_EVENTS = re.findall(r"`([a-z0-9_]+)`", README.read_text().split(
    "- **Event flags that are state, not progress**")[1].split("\n- ")[0].split("\n\n")[0])
A, B = ACTIONS.index("a"), ACTIONS.index("b")  # B does nothing while the player walks the overworld
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


def play(env, buttons):
    """Each button for one step; the rewards."""
    return [env.step(ACTIONS.index(button))[1] for button in buttons]


def walk(env, buttons):
    """Each button once the player is in control, fighting any wild battle on the way."""
    for button in buttons:
        while not standin_play.in_control(env.pyboy):
            env.step(A)
        env.step(ACTIONS.index(button))


def tile(map_id, x, y):
    return map_id << 16 | y << 8 | x


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
    walk(env, ["right"] * 5 + ["up"] + standin_play.DOWNSTAIRS_TO_TOWN + standin_play.TOWN_TO_BALL)
    walk(env, ["a"] + standin_play.LAB_TO_ROUTE + standin_play.ROUTE_TO_GRASS)  # the starter, the rival
    walk(env, standin_play.GRASS_TO_YOUNGSTER)
    assert position(env) == (standin_play.ROUTE_1, 4, 3)
    assert env.reward_totals["event"] == pytest.approx(3.2)  # the starter and the rival's battle in the lab
    reward, totals = step_rewards(env, A)  # facing the youngster at (4, 2)
    assert reward == pytest.approx(1.6) and env.pyboy.memory[EVENT_FLAGS_ADDRESS + 4] & 1  # event 32
    for button in ["b", "b", "b", "a", "b", "b", "b"]:  # hear it all again: no second reward
        assert step_rewards(env, ACTIONS.index(button))[0] == 0
    assert totals["event"] == pytest.approx(4.8)


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
    write_party(env, [(0xB0, 5, 20, 20)])
    step_rewards(env)
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


def test_evolving_pays_no_levels_and_no_healing_and_the_evolved_mon_counts_on(env):
    write_party(env, [(0xB0, 15, 20, 39)])  # CHARMANDER, hurt
    step_rewards(env)
    write_party(env, [(0xB0, 16, 22, 41)])  # a level-up: HP and max HP up by 2
    assert step_rewards(env)[0] == pytest.approx(0.01)
    # It evolves into CHARMELEON: new stats, the max HP gain added to its HP (pret/pokered
    # engine/pokemon/evos_moves.asm): another species in the slot, so neither levels nor healing.
    write_party(env, [(0xB2, 16, 30, 49)])
    assert step_rewards(env)[0] == 0
    write_party(env, [(0xB2, 17, 32, 51)])  # the evolved mon's own level-up pays
    assert step_rewards(env)[0] == pytest.approx(0.01)
    write_party(env, [(0xB2, 17, 51, 51)])  # and its healing, by its own max HP
    assert step_rewards(env)[0] == pytest.approx(0.8 * 19 / 51)


def test_a_mon_leaving_the_party_then_another_joining_pays_nothing(env):
    write_party(env, [(0x99, 10, 40, 40), (0x24, 20, 30, 60)])
    step_rewards(env)
    write_party(env, [(0x99, 10, 40, 40)])  # the level-20 one deposited in the PC
    assert step_rewards(env)[0] == 0
    write_party(env, [(0x99, 10, 40, 40), (0xA5, 30, 90, 90)])  # a level-30 one withdrawn, at full HP
    assert step_rewards(env)[0] == 0
    assert env.reward_totals["level"] == 0 and env.reward_totals["heal"] == 0
    write_party(env, [(0x99, 11, 42, 42), (0xA5, 30, 90, 90)])  # levels count again from here
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


def set_bit(env, address, bit=0):
    env.pyboy.memory[address] |= 1 << bit


# Per term: its weight's setting, what earns it once (in RAM, or a step), and the gain it earns.
TERMS = {
    "badge": ("badge_reward", lambda env: set_bit(env, OBTAINED_BADGES_ADDRESS), B, 1),
    "explore": ("explore_reward", lambda env: None, ACTIONS.index("up"), 1),  # onto a new tile
    "level": ("level_reward", lambda env: write_party(env, [(0x99, 8, 10, 20)]), B, 3),
    "event": ("event_reward", lambda env: set_bit(env, EVENT_FLAGS_ADDRESS + 300, 2), B, 1),
    "seen": ("seen_reward", lambda env: set_bit(env, POKEDEX_SEEN + 3, 5), B, 1),
    "owned": ("owned_reward", lambda env: set_bit(env, POKEDEX_OWNED + 7, 1), B, 1),
    "heal": ("heal_reward", lambda env: write_party(env, [(0x99, 5, 20, 20)]), B, 0.5),  # 10 of 20 HP
    "blackout": ("blackout_penalty", lambda env: write_party(env, [(0x99, 5, 0, 20)]), B, -1),
}


@pytest.mark.parametrize("term", TERMS)
def test_every_weight_scales_its_term(standin_env, term):
    """A weight other than its default pays weight x gain: none is hard-coded."""
    setting, earn, button, gain = TERMS[term]
    weight = 0.37
    env = standin_env(max_steps=100, **{setting: weight})
    env.reset(seed=0)
    write_party(env, [(0x99, 5, 10, 20)])  # a party, hurt: the Pokedex counts, healing can pay
    assert step_rewards(env)[0] == 0
    earn(env)
    reward, totals = step_rewards(env, button)
    assert reward == pytest.approx(weight * gain) and totals[term] == pytest.approx(weight * gain)
    assert sum(abs(total) for name, total in totals.items() if name != term) == 0


def test_unpaid_events_are_the_readmes_list():
    assert len(README_UNPAID_EVENTS) == 12 and set(README_UNPAID_EVENTS) <= set(EVENT_FLAGS)
    assert set(README_UNPAID_EVENTS) == set(UNPAID_EVENTS)


# ----- Played on the stand-in: Oak's lab, warps, its wild battles, its gym -----


def test_badge_route_pays_each_term_for_what_happened(standin_env):
    env = standin_env(max_steps=len(standin_play.BADGE_ROUTE))
    env.reset(seed=0)
    assert env.party == ((), (), (), ()) and not any(env.dex_raw)  # the starter waits in the lab
    results, badge_totals = [], []
    for button in standin_play.BADGE_ROUTE:
        results.append(env.step(ACTIONS.index(button)))
        badge_totals.append(env.reward_totals["badge"])
    rewards = [reward for _, reward, _, _, _ in results]
    info = results[-1][4]

    assert info["badges"] == 1 and info["reward_badge"] == pytest.approx(4.0)
    assert len(set(badge_totals)) == 2  # paid once, when the leader was beaten
    assert info["level_sum"] == 18 and info["reward_level"] == pytest.approx(0.01 * (18 - 5))  # joined at 5
    assert info["pokedex_seen"] > info["pokedex_owned"] > 1  # the starter, the rival's, the grass's
    assert info["reward_seen"] == pytest.approx(1.6 * info["pokedex_seen"])
    assert info["reward_owned"] == pytest.approx(1.6 * info["pokedex_owned"])
    assert info["event_flags"] == 3 and info["reward_event"] == pytest.approx(4.8)  # starter, rival, BEAT_BROCK
    assert info["reward_heal"] > 0  # rested in bed after battles
    assert info["blackouts"] == 0 and info["reward_blackout"] == 0
    assert info["maps_visited"] == 6  # bedroom, 1F, Pallet Town, Oak's lab, Route 1, gym
    assert info["reward_explore"] == pytest.approx(0.01 * (info["unique_tiles"] - 1))  # start tile free
    assert info["episode_return"] == pytest.approx(sum(rewards))


def test_starterdex_bits_without_a_party_pay_nothing_but_the_starter_pays_once_in(standin_env, tmp_path):
    env = standin_env(max_steps=1000)
    env.reset(seed=0)
    play(env, standin_play.TO_TOWN + standin_play.TOWN_TO_BALL)
    assert play(env, ["a"]) == [0]  # the ball's Pokedex page: four species owned, no party yet
    assert env.pyboy.memory[POKEDEX_OWNED] == standin_play.STARTER_DEX_OWNED
    page = tmp_path / "pokedex_page.state"
    env.save_state(page)
    # The page closes (the four bits cleared) and the starter joins: its owned and seen bits pay, and the
    # lab's GOT_STARTER event.
    assert play(env, ["b", "b"]) == [0, pytest.approx(3 * 1.6)]
    assert play(env, ["b"]) == [pytest.approx(1.6)]  # the rival's battle: his SQUIRTLE seen
    assert env.reward_totals["owned"] == pytest.approx(1.6)
    assert env.reward_totals["seen"] == pytest.approx(3.2)

    env = standin_env(init_state=page, max_steps=1000)  # an episode that starts on the page
    env.reset(seed=0)
    play(env, ["b", "b"])  # the starter's owned bit was not taken for one already rewarded
    assert env.reward_totals["owned"] == pytest.approx(1.6)


def test_a_warp_credits_its_arrival_tile_not_the_new_map_at_the_old_position(env):
    rewards = play(env, standin_play.TO_STAIRS)  # onto the bedroom's stairs (6, 1): 1F's map id first
    assert position(env) == (standin_play.REDS_HOUSE_1F, 6, 1) and rewards[-1] == 0
    assert play(env, ["b"]) == [pytest.approx(0.01)]  # after the fade, 1F's position
    assert position(env) == (standin_play.REDS_HOUSE_1F, 6, 2)
    assert tile(standin_play.REDS_HOUSE_1F, 6, 2) in env.visited_tiles
    assert tile(standin_play.REDS_HOUSE_1F, 6, 1) not in env.visited_tiles
    play(env, standin_play.DOWNSTAIRS_TO_TOWN + ["b"] + standin_play.TOWN_TO_BALL + standin_play.BEAT_RIVAL)
    play(env, standin_play.LAB_TO_ROUTE)  # a door, then a map edge
    assert position(env) == (standin_play.ROUTE_1, 2, 6)
    assert tile(standin_play.ROUTE_1, 2, 6) in env.visited_tiles  # credited at once
    assert tile(standin_play.PALLET_TOWN, 2, 7) not in env.visited_tiles  # Pallet at 1F's door
    assert env.reward_totals["explore"] == pytest.approx(0.01 * (len(env.visited_tiles) - 1))


def test_two_of_a_kind_with_different_hp_switching_places_is_not_healing(env):
    walk(env, standin_play.GRASS_ROUTE + standin_play.GRASS_TO_YOUNGSTER)
    walk(env, ["a", "start"])  # the youngster's CHARMANDER joins at full HP; the start menu
    (lead_hp, twin_hp), _ = env.party[2], env.party[3]
    assert env.party[0] == (0xB0, 0xB0) and lead_hp < twin_hp == 20
    assert play(env, ["a"]) == [0]  # POKEMON: the two switch places, and slot 1 gains HP
    assert env.party[2] == (twin_hp, lead_hp)


def test_losing_the_rivals_first_battle_in_oaks_lab_is_no_blackout(env):
    play(env, standin_play.TO_TOWN + standin_play.TOWN_TO_BALL)
    wiped = False
    for button in standin_play.LOSE_TO_RIVAL:  # B does no damage: his fourth attack wins
        env.step(ACTIONS.index(button))
        wiped |= env.party_wiped
    assert wiped and env.party[2] == env.party[3]  # the whole party at 0 HP, then healed by the lab
    assert env.blackouts == 0 and env.reward_totals["blackout"] == 0 and env.reward_totals["heal"] == 0


def test_the_museum_ticket_and_other_flags_that_are_not_progress_pay_nothing(env):
    walk(env, standin_play.GRASS_ROUTE + standin_play.GRASS_TO_LEADER[:4])  # into the gym
    play(env, ["b", "left", "left"])  # facing the ticket seller
    memory = env.pyboy.memory
    assert position(env) == (standin_play.PEWTER_GYM, 2, 4) and not memory[EVENT_FLAGS_ADDRESS + 13]
    assert env.reward_totals["event"] == pytest.approx(3.2)  # the starter and the rival's battle in the lab
    assert play(env, ["a"]) == [0] and memory[EVENT_FLAGS_ADDRESS + 13] & 1  # EVENT_BOUGHT_MUSEUM_TICKET
    for name in README_UNPAID_EVENTS:
        memory[EVENT_FLAGS_ADDRESS + EVENT_FLAGS[name] // 8] |= 1 << EVENT_FLAGS[name] % 8
        assert step_rewards(env)[0] == 0, name
    memory[EVENT_FLAGS_ADDRESS + 300] |= 0b1  # any other flag still pays
    assert step_rewards(env)[0] == pytest.approx(1.6)


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
