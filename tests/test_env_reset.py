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


def test_a_batch_starts_each_run_as_a_seeded_reset_does() -> None:
    """RunBatch starts IAPOEnv runs without building reset's observation and info: the env is left
    exactly as ``reset(seed=s)`` leaves it (RNG state, first context, cleared ledger)."""
    from iapo_gym.runs import RunBatch

    envs = [IAPOEnv("SynthBernoulli", world_seed=1, budget=500) for _ in range(2)]
    for e in envs:
        e.reset(seed=9)
        e.pull(np.arange(2), np.full(2, 3))  # spend and draw, so the start must undo both
    RunBatch([envs[0]], 100, [4], "x")
    envs[1].reset(seed=4)
    a, b = envs
    assert a.np_random.bit_generator.state == b.np_random.bit_generator.state
    assert (a._context_index, a.ledger.spent) == (b._context_index, b.ledger.spent) == (b._context_index, 0)
    np.testing.assert_array_equal(a._weights, b._weights)


def test_the_one_context_draw_is_the_searchsorted_draw() -> None:
    """ContextSet.sample() (one context, an env's reset) compares one uniform with the cached CDF as
    ``searchsorted(cumsum(probs), u, "right")`` does, capped at the last context, zero-mass contexts included."""
    from iapo_gym.contexts import ContextSet

    ctx = ContextSet(("a", "b", "c", "d"), np.ones((4, 2)), np.array([0.25, 0.0, 0.5, 0.25]))
    cdf = np.cumsum(ctx.probs)
    for seed in range(300):
        got = ctx.sample(np.random.default_rng(seed))
        u = np.random.default_rng(seed).random()
        assert got == min(int(np.searchsorted(cdf, u, side="right")), 3) and isinstance(got, int)
    for u, want in [(0.0, 0), (0.25, 2), (0.75, 3), (np.nextafter(0.25, 0), 0)]:  # boundaries: the right side
        class Fixed:
            def random(self, size=None, value=u):  # noqa: ANN001, ANN202
                return value

        assert ctx.sample(Fixed()) == want  # type: ignore[arg-type]
    assert ctx.sample(np.random.default_rng(1), 5).tolist() == np.minimum(
        np.searchsorted(cdf, np.random.default_rng(1).random(5), side="right"), 3
    ).tolist()
