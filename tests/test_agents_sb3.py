"""Stable-Baselines3 adapter: budget-respecting training that measurably beats Random."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

from agents_helpers import easy_mv_table, make_env, small_table

from iapo_gym.agents import make_agent
from iapo_gym.agents.testing import check_agent
from iapo_gym.oracle import acr, q_values


def test_ppo_beats_random_in_exact_acr():
    table = easy_mv_table()
    q = q_values(table)  # every query has the same distribution: train Q = test Q
    random_acr = acr(q, make_agent("random").fit(make_env(table, 0), 0, 0), table.contexts.probs, table.contexts.weights)
    acrs = []
    for seed in (0, 1, 2):
        env = make_env(table, seed)
        policy = make_agent("ppo").fit(env, 1_500, seed)
        assert policy.budget_used == env.unwrapped.ledger.spent <= 1_500
        acrs.append(acr(q, policy, table.contexts.probs, table.contexts.weights))
    assert np.mean(acrs) > random_acr + 0.2  # random 0.30, optimum 0.74


@pytest.mark.parametrize("name", ["ppo", "a2c", "dqn", "maskable_ppo"])
def test_sb3_agents_conform(name):
    table = small_table("mv")
    # the fresh-process check runs once for the whole zoo (test_agents_conformance)
    check_agent(make_agent(name), lambda s: make_env(table, s), budgets=(1, 40), seeds=(0, 1), batch=False, hash_seeds=())


def test_budget_wrapper_clips_unaffordable_actions():
    from iapo_gym.agents.sb3 import BudgetWrapper

    env = make_env(small_table("mv"), 0)
    wrapper = BudgetWrapper(env.unwrapped, 5)
    wrapper.start(0)
    wrapper.reset()
    _, _, _, _, info = wrapper.step(0 * 6 + 5)  # (p0, N=6) with 5 completions left -> clipped to N=5
    assert info["n"] == 5 and wrapper.remaining == 0 and wrapper.clipped == 1
    assert not wrapper.action_masks()[1:6].any() and wrapper.action_masks()[0]
