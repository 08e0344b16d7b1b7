"""A seeded ``reset(seed=...)`` starts a new training run (clears the env's own ledger), and says so."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from iapo_gym.arms import arm_index
from iapo_gym.env import IAPOEnv


def test_a_seeded_reset_clears_the_own_ledger_and_an_unseeded_one_does_not() -> None:
    env = gym.make("IAPO-SynthBernoulli-v0", budget=40)
    env.reset(seed=0)
    env.step(arm_index(0, 8, 32))
    env.reset()  # the next episode of the same run
    env.step(arm_index(1, 4, 32))
    assert env.unwrapped.ledger.spent == 12 and env.unwrapped.ledger.remaining == 28
    first = env.unwrapped.pull(np.arange(3), np.full(3, 2)).outcome
    env.reset(seed=0)  # a new run: the budget is whole again and the draws replay
    assert env.unwrapped.ledger.spent == 0 and env.unwrapped.ledger.remaining == 40
    env.step(arm_index(0, 8, 32))
    env.reset()
    env.step(arm_index(1, 4, 32))
    np.testing.assert_array_equal(env.unwrapped.pull(np.arange(3), np.full(3, 2)).outcome, first)


def test_the_rule_is_documented_where_gymnasium_users_look() -> None:
    for doc in (IAPOEnv.__doc__, IAPOEnv.reset.__doc__):
        text = " ".join((doc or "").split())
        assert "reset(seed=...)" in text or "explicit ``seed``" in text
        assert "ledger" in text and "new training run" in text
