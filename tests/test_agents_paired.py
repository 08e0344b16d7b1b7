"""psst_paired / topk_paired: query control, paired statistics, budget rules, conformance."""

from __future__ import annotations

import numpy as np
import pytest
from agents_helpers import easy_mv_table, make_env, small_table

from iapo_gym.agents import AGENTS, make_agent
from iapo_gym.agents.psst_paired import (
    PairedStats,
    PSSTPaired,
    QuerySchedule,
    TopKPaired,
    round_budgets,
    run_paired_trimming,
    shrink_to_fit,
)
from iapo_gym.agents.testing import check_agent
from iapo_gym.oracle import best_arms, q_values
from iapo_gym.runs import RunBatch, RunStreams
from iapo_gym.sampling import sample_pulls
from iapo_gym.tables.format import OutcomeTable
from iapo_gym.utility import nested_sums

PAIRED = ["psst_paired", "topk_paired"]


def shifted_prompt_table(n_queries: int = 60, seed: int = 0) -> OutcomeTable:
    """BoN, deterministic outcomes: prompt ``p`` scores ``difficulty[x] - 0.05 * p`` on query ``x``.

    Prompt 0 is strictly best on EVERY query by at least 0.05, while queries differ by up to 1:
    independent random queries per prompt often rank a worse prompt first; common queries never can.
    """
    from iapo_gym.contexts import ContextSet

    rng = np.random.default_rng(seed)
    difficulty = rng.random(n_queries)
    n_prompts = 4
    values = (difficulty[None, :] - 0.05 * np.arange(n_prompts)[:, None])[:, :, None, None]  # (P, Q, 1, 1)
    return OutcomeTable(
        task="ShiftedPrompts",
        strategy="bon",
        prompts=tuple(f"p{i}" for i in range(n_prompts)),
        query_ids=tuple(f"q{j}" for j in range(n_queries)),
        objectives=("score",),
        objective_ranges=np.array([[-1.0, 1.0]]),
        contexts=ContextSet(("free",), np.array([[1.0, 0.0]]), np.array([1.0])),
        n_max=4,
        cost=np.full((n_prompts, n_queries), 0.01),
        split=np.r_[np.zeros(n_queries - 12, np.int8), np.ones(12, np.int8)],
        outcome_values=values,
        outcome_probs=np.ones((n_prompts, n_queries, 1)),
    )


def test_registered_and_labelled_as_query_controlled():
    for name, cls in (("psst_paired", PSSTPaired), ("topk_paired", TopKPaired)):
        agent = make_agent(name)
        assert name in AGENTS and type(agent) is cls and agent.name == name
        assert agent.uses_query_control is True
        assert "query-controlled" in (type(agent).__doc__ or "")
    assert make_agent("psst").uses_query_control is False
    assert make_agent("topk_paired").k == 4 and make_agent("psst_paired").k == 0
    with pytest.raises(ValueError, match="growth"):
        PSSTPaired(growth=0)
    with pytest.raises(ValueError, match="rho"):
        TopKPaired(rho=1.0)


@pytest.mark.parametrize("strategy", ["mv", "bon"])
@pytest.mark.parametrize("name", PAIRED)
def test_conforms(name, strategy):
    table = small_table(strategy)
    check_agent(make_agent(name), lambda s: make_env(table, s), budgets=(0, 1, 23, 400, 3000), seeds=(0, 5, 9))


def test_query_schedule_walks_each_train_split_evenly():
    rng = RunStreams([0, 1, 2], "test")
    n_train = np.array([5, 7, 3])
    sched = QuerySchedule(n_train, rng)
    for s, n in enumerate(n_train):  # each row starts with a permutation of the run's columns
        assert sorted(sched.perm[s, :n].tolist()) == list(range(n))
    used = [np.zeros(n, int) for n in n_train]
    for count in ([2, 0, 4], [6, 9, 1], [1, 1, 1], [3, 4, 5]):
        run, col = sched.take(np.array(count))
        assert np.bincount(run, minlength=3).tolist() == count
        for s in range(3):
            np.add.at(used[s], col[run == s], 1)
            assert used[s].max() - used[s].min() <= 1  # no query used twice before all used once
    assert [u.sum() for u in used] == [12, 14, 11]


def test_paired_stats_weight_every_query_equally():
    """Each pull adds the mean of its blocks per k (reference: iapo_gym.utility.nested_sums)."""
    table = small_table("mv", n_prompts=3, n_max=6)
    rng = np.random.default_rng(1)
    prompt = np.array([0, 0, 1, 2, 2, 2])
    n = np.array([6, 2, 5, 1, 6, 3])
    query = rng.integers(0, table.n_queries, size=6)
    pulls = sample_pulls(table, prompt, query, n, rng)
    stats = PairedStats(1, 3, 6, table.contexts)
    stats.add(pulls, np.zeros(6, np.int64))
    sums, counts = nested_sums(pulls, table.contexts.weights, 6)  # (C, B, 6), (B, 6)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_pull = sums / counts[None]  # per-query block means
    expect = np.full((len(table.contexts), 3, 6), np.nan)
    for p in range(3):
        rows = prompt == p
        for k in range(6):
            seen = rows & (counts[:, k] > 0)
            if seen.any():
                expect[:, p, k] = per_pull[:, seen, k].mean(axis=1)
    np.testing.assert_allclose(stats.means()[0], expect, rtol=1e-6, atol=1e-9)  # engine credits are float32
    # PSST's tallies weight blocks instead: (p0, k=1) averages 8 blocks, not the two pulls' means
    assert not np.isclose(stats.means()[0, 0, 0, 0], sums[0, prompt == 0, 0].sum() / counts[prompt == 0, 0].sum())


def test_every_active_arm_is_averaged_over_the_same_queries():
    table = small_table("mv", n_prompts=6, n_max=8, n_queries=30)
    envs = [make_env(table, s) for s in range(4)]
    runs = RunBatch(envs, 3000, list(range(4)), "psst_paired")
    stats = PairedStats(4, 6, 8, table.contexts)
    active = np.ones((4, len(table.contexts), 48), dtype=bool)
    infos = run_paired_trimming(runs, stats, active, runs.budgets.copy(), rounds=6)
    count = stats.count.reshape(4, 48)
    for s in range(4):
        live = active[s].any(axis=0)
        assert len(set(count[s, live].tolist())) == 1  # one common query count for every surviving arm
        assert count[s, live][0] == sum(infos[s]["queries_per_round"])
        assert 3000 - infos[s]["unspent"] == runs.spent[s] == envs[s].ledger.spent <= 3000
        assert infos[s]["unspent"] < 8 * 6  # less than one common query of every maximal arm


def test_common_queries_never_rank_a_dominated_prompt_first():
    """With prompt 0 strictly best on every query, paired ranking always deploys prompt 0."""
    table = shifted_prompt_table()
    w = table.contexts.weights
    seeds = list(range(40))
    paired = make_agent("psst_paired").fit_many(lambda s: make_env(table, s), 300, seeds)
    assert all(int(p.act(w)[0]) // 4 == 0 for p in paired)
    unpaired = make_agent("psst").fit_many(lambda s: make_env(table, s), 300, seeds)
    assert sum(int(p.act(w)[0]) // 4 != 0 for p in unpaired) >= 3  # random queries mislead PSST


def test_finds_the_optimal_arms_with_a_large_budget():
    table = easy_mv_table()
    best = best_arms(q_values(table))
    for name in PAIRED:
        for s in range(3):
            np.testing.assert_array_equal(
                make_agent(name).fit(make_env(table, s), 40_000, s).act(table.contexts.weights), best
            )


def test_round_budgets_and_small_budget_fallback():
    plan = round_budgets(np.array([1000, 7]), 4, 1.0)
    assert plan.tolist() == [[250] * 4, [1] * 4]
    grow = round_budgets(np.array([1500]), 4, 2.0)
    assert grow.tolist() == [[100, 200, 400, 800]]
    # 3 prompts alive at N_max 8 (one query costs 24); 40 completions: cap N at 3 -> 4 queries of 9 = 36
    sizes, q = shrink_to_fit(np.array([[8, 8, 8, 0]]), np.array([0]), np.array([40]), 8)
    assert sizes.tolist() == [[3, 3, 3, 0]] and q.tolist() == [4]
    sizes, q = shrink_to_fit(np.array([[8, 8, 8, 0]]), np.array([0]), np.array([5]), 8)
    assert sizes.tolist() == [[1, 1, 1, 0]] and q.tolist() == [1]
    sizes, q = shrink_to_fit(np.array([[8, 2, 0, 0]]), np.array([2]), np.array([25]), 8)
    assert sizes.tolist() == [[8, 2, 0, 0]] and q.tolist() == [2]  # affordable runs are untouched


def test_small_budgets_still_learn_on_math_sized_shapes():
    from iapo_gym.tables.testing import example_table

    table = example_table("mv", seed=1, n_prompts=25, n_queries=40, n_outcomes=5, n_max=32)
    env = make_env(table, seed=0, budget=700)
    policy = make_agent("psst_paired").fit(env, 700, seed=0)
    assert 600 < policy.budget_used == env.unwrapped.ledger.spent <= 700  # capped sizes, not nothing
    assert policy.info["queries_per_round"][-1] >= 4


def test_topk_paired_screens_on_common_queries():
    table = small_table("mv", n_prompts=8, n_max=6, n_queries=40)
    pol = make_agent("topk_paired", k=2).fit(make_env(table, 3), 2000, 3)
    assert pol.info["warmup_spent"] == (400 // 8) * 8  # floor(rho T / P) common queries at N = 1
    assert all(len(row) == 2 for row in pol.info["screened"])
    arm_prompts = pol.act(table.contexts.weights) // 6
    assert all(int(p) in row for p, row in zip(arm_prompts, pol.info["screened"], strict=True))


def test_psst_paired_on_the_released_math_table(math_pickle):
    from iapo_gym.oracle import acr as exact_acr
    from iapo_gym.tables.importer import import_released

    table = import_released(math_pickle)
    table = table[0] if isinstance(table, list) else table
    seeds = list(range(20))
    envs = {}

    def make(s):
        envs[s] = make_env(table, s, budget=5_000)
        return envs[s]

    policies = make_agent("psst_paired").fit_many(make, 5_000, seeds)
    acr = [
        exact_acr(q_values(table, envs[s].unwrapped.test_queries), p, table.contexts.probs, table.contexts.weights)
        for s, p in zip(seeds, policies, strict=True)
    ]
    rand = [q_values(table, envs[s].unwrapped.test_queries).reshape(3, -1).mean(axis=1).mean() for s in seeds]
    assert all(p.budget_used <= 5_000 for p in policies)
    assert np.mean(acr) > np.mean(rand) + 0.05
