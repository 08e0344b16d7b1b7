"""PSST (Algorithm 1): budget arithmetic, optimality with a large budget, batch = per-seed in distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
from agents_helpers import easy_mv_table, make_env, small_table

from iapo_gym.agents import make_agent
from iapo_gym.agents.psst import maximal_sizes, n_rounds
from iapo_gym.oracle import acr, best_arms, q_values
from iapo_gym.tables.testing import example_table


@pytest.fixture(scope="module")
def math_sized():
    """A MATH-shaped table: 25 prompts, N_max 32, 5 answer categories, 3 cost contexts."""
    return example_table("mv", seed=1, n_prompts=25, n_queries=40, n_outcomes=5, n_max=32)


def test_rounds_follow_algorithm_1():
    assert n_rounds(25 * 32) == 10  # MATH
    assert n_rounds(48 * 32) == 11  # CommonsenseQA
    assert n_rounds(20 * 32) == 10 and n_rounds(32 * 32) == 10
    assert n_rounds(1) == 1 and n_rounds(2) == 1 and n_rounds(3) == 2


def test_maximal_size_is_taken_over_the_union_of_contexts():
    active = np.zeros((1, 2, 3 * 4), dtype=bool)
    active[0, 0, 0 * 4 + 1] = True  # context 0: (p0, N=2)
    active[0, 1, 0 * 4 + 3] = True  # context 1: (p0, N=4)
    active[0, 0, 2 * 4 + 0] = True  # context 0: (p2, N=1); p1 eliminated everywhere
    assert maximal_sizes(active, 4).tolist() == [[4, 0, 1]]


@pytest.mark.parametrize(
    "budget,first_rounds",
    [
        (5_000, [0, 800]),  # n_r = 500 < M = 800: round 1 carries forward, round 2 pulls every maximal arm once
        (20_000, [1_600]),  # paper 3.9: 2 pulls of each of the 25 maximal arms
        (50_000, [4_800]),  # 6 pulls each
    ],
)
def test_budget_arithmetic_on_math_sized_shapes(math_sized, budget, first_rounds):
    env = make_env(math_sized, seed=0, budget=budget)
    policy = make_agent("psst").fit(env, budget, seed=0)
    info = policy.info
    assert info["rounds"] == 10 and info["round_budget"] == budget // 10
    spent = np.array(info["spent_per_round"])
    assert spent[: len(first_rounds)].tolist() == first_rounds
    # Carry-forward: by the end of round r at most r * floor(T / R) is spent (the last round takes the rest).
    assert np.all(np.cumsum(spent)[:-1] <= (np.arange(1, 10) * (budget // 10)))
    assert policy.budget_used == env.unwrapped.ledger.spent == spent.sum()
    assert budget - 32 < policy.budget_used <= budget  # the last round's random top-up wastes < one maximal pull
    assert info["halvings"] >= 8 and info["survivors"] == [1, 1, 1]


@pytest.mark.parametrize("budget", [1, 31, 32, 799])
def test_tiny_budgets_never_overspend(math_sized, budget):
    env = make_env(math_sized, seed=3, budget=budget)
    policy = make_agent("psst").fit(env, budget, seed=3)
    assert policy.budget_used == env.unwrapped.ledger.spent <= budget
    assert policy.budget_used == (budget // 32) * 32  # only maximal (N = 32) pulls fit, one per random prompt
    arms = policy.act(math_sized.contexts.weights)
    assert np.all((0 <= arms) & (arms < 800))


def test_finds_the_optimal_arms_with_a_large_budget():
    table = easy_mv_table()
    best = best_arms(q_values(table))
    found = [make_agent("psst").fit(make_env(table, s), 40_000, s).act(table.contexts.weights) for s in range(5)]
    for arms in found:
        np.testing.assert_array_equal(arms, best)


def test_batch_equals_per_seed_fit_in_distribution():
    table = small_table("mv", n_prompts=6, n_max=8, n_queries=30)
    agent = make_agent("psst")
    seeds = list(range(60))
    envs = {s: make_env(table, s) for s in seeds}
    batch = agent.fit_many(lambda s: make_env(table, s), 400, seeds)
    single = [agent.fit(make_env(table, s), 400, s) for s in seeds]
    qs = {s: q_values(table, envs[s].unwrapped.test_queries) for s in seeds}
    ctx = table.contexts
    acr_batch = np.array([acr(qs[s], p, ctx.probs, ctx.weights) for s, p in zip(seeds, batch, strict=True)])
    acr_single = np.array([acr(qs[s], p, ctx.probs, ctx.weights) for s, p in zip(seeds, single, strict=True)])
    diff = acr_batch - acr_single  # paired by split
    se = diff.std(ddof=1) / math.sqrt(len(seeds))
    assert abs(diff.mean()) < 4 * se + 1e-9
    for p in batch + single:  # same budget arithmetic (the last round's random top-up may differ)
        assert 400 - 8 < p.budget_used <= 400
    # Both learn: well above the uniform average of Q on every split.
    floor = np.mean([qs[s].reshape(3, -1).mean(axis=1) @ table.contexts.probs for s in seeds])
    assert acr_batch.mean() > floor + 0.02 and acr_single.mean() > floor + 0.02


def test_same_seed_same_policy_and_different_seeds_differ():
    table = small_table("bon", n_prompts=5, n_max=6)
    agent = make_agent("psst")
    a = agent.fit_many(lambda s: make_env(table, s), 300, [0, 1, 2, 3])
    b = agent.fit_many(lambda s: make_env(table, s), 300, [0, 1, 2, 3])
    w = table.contexts.weights
    assert all(np.array_equal(x.act(w), y.act(w)) for x, y in zip(a, b, strict=True))
    assert [x.info for x in a] == [y.info for y in b]
    assert len({tuple(x.act(w)) for x in a}) > 1


def test_psst_on_the_released_math_table(math_pickle):
    from iapo_gym.tables.importer import import_released

    table = import_released(math_pickle)
    table = table[0] if isinstance(table, list) else table
    seeds = list(range(20))
    envs = {}

    def make(s):
        envs[s] = make_env(table, s, budget=5_000)
        return envs[s]

    policies = make_agent("psst").fit_many(make, 5_000, seeds)
    acrs = [
        acr(q_values(table, envs[s].unwrapped.test_queries), p, table.contexts.probs, table.contexts.weights)
        for s, p in zip(seeds, policies, strict=True)
    ]
    rand = [q_values(table, envs[s].unwrapped.test_queries).reshape(3, -1).mean(axis=1).mean() for s in seeds]
    assert all(p.budget_used <= 5_000 for p in policies)
    assert np.mean(acrs) > np.mean(rand) + 0.05  # paper: good policies with ~5K calls on MATH
