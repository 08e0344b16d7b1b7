"""Random's batched ``fit_many``: the same policies as ``fit``, one read-only distribution per shape."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from agents_helpers import make_env, small_table

from iapo_gym.agents import make_agent
from iapo_gym.agents.base import StochasticPolicy

WEIGHTS = np.array([[1.0, 0.0, 0.0], [1.0, 0.5, 0.0]])


def _same(a: StochasticPolicy, b: StochasticPolicy) -> None:
    assert type(a) is type(b) is StochasticPolicy
    assert (a.seed, a.n_max, a.budget_used, a.info) == (b.seed, b.n_max, b.budget_used, b.info)
    assert a.contexts is b.contexts
    np.testing.assert_array_equal(a.probs, b.probs)
    weights = a.contexts.weights[np.arange(40) % len(a.contexts)]
    np.testing.assert_array_equal(a.act(weights), b.act(weights))  # the same seeded draws, call after call
    np.testing.assert_array_equal(a.act(weights), b.act(weights))


def test_fit_many_equals_fit_per_seed_across_tables():
    mv, bon = small_table("mv"), small_table("bon", n_prompts=3, n_max=5)
    tables = {3: mv, 0: bon, 7: mv, 8: bon, 2: mv}
    agent = make_agent("random")
    seeds = [3, 0, 7, np.int64(8), 2]
    batch = agent.fit_many(lambda s: make_env(tables[int(s)], int(s)), 100, seeds)
    assert [type(p.seed) for p in batch] == [int] * 5 and [p.seed for p in batch] == [3, 0, 7, 8, 2]
    for seed, policy in zip(seeds, batch, strict=True):
        _same(policy, agent.fit(make_env(tables[int(seed)], int(seed)), 100, int(seed)))
        assert policy.probs.shape == (len(tables[int(seed)].contexts), tables[int(seed)].n_arms)
    # one distribution per table (not per run), and nobody can change it under the other runs
    assert batch[0].probs is batch[2].probs is batch[4].probs and batch[1].probs is batch[3].probs
    assert batch[0].probs is not batch[1].probs
    # another table of the same shape (a synthetic world per seed) shares the distribution, not the contexts
    mv2 = small_table("mv", seed=1)
    pair = agent.fit_many(lambda s: make_env(mv if s == 0 else mv2, s), 100, [0, 1])
    assert mv2 is not mv and pair[0].probs is pair[1].probs
    assert pair[0].contexts is make_env(mv, 0).contexts and pair[1].contexts is make_env(mv2, 1).contexts
    _same(pair[1], agent.fit(make_env(mv2, 1), 100, 1))
    with pytest.raises(ValueError, match="read-only"):
        batch[0].probs[0, 0] = 1.0
    # each run's info and generator are its own
    fresh = agent.fit_many(lambda s: make_env(mv, s), 100, [3, 7])
    assert "info" not in vars(fresh[0])  # built on first read, not by the batch
    assert fresh[0].info is not fresh[1].info
    fresh[0].act(fresh[0].contexts.weights)
    assert fresh[1]._rng is None and fresh[1]._cdf is None


def test_wrapped_envs_take_the_general_path():
    agent = make_agent("random")
    env = gym.make("IAPO-SynthBernoulli-v0")
    policy = agent.fit_many(lambda s: env, 0, [5])[0]
    _same(policy, agent.fit(env.unwrapped, 0, 5))
    assert policy.probs.flags.writeable  # built by fit, not shared


def test_info_of_a_batch_policy_is_built_on_first_read_and_kept():
    agent = make_agent("random")
    table = small_table("mv")
    first, second = agent.fit_many(lambda s: make_env(table, s), 100, [1, 2])
    assert "info" not in vars(first)
    info = first.info
    assert info == {"budget_used": 0} and first.info is info and vars(first)["info"] is info
    info["note"] = "kept"  # a caller's edit stays on this run's policy only
    assert first.info == {"budget_used": 0, "note": "kept"} and second.info == {"budget_used": 0}
    third, fourth = agent.fit_many(lambda s: make_env(table, s), 100, [3, 5])
    third.budget_used = 7  # built from the policy's own budget when first read
    assert third.info == {"budget_used": 7}
    fourth.info = {"set": True}  # an assignment before any read wins
    assert fourth.info == {"set": True}
    revived = pickle.loads(pickle.dumps(agent.fit_many(lambda s: make_env(table, s), 100, [4])[0]))
    assert revived.info == {"budget_used": 0} and revived.seed == 4
    # the constructor still sets info itself: its default stays an empty dict
    assert StochasticPolicy(first.contexts, first.probs, first.n_max).info == {}
