"""The vectorised statistics engine against the reference utilities (iapo_gym.utility)."""

from __future__ import annotations

import numpy as np
import pytest

from iapo_gym.agents._engine import ContextSplit, NestedStats, block_plan, nested_gains, random_fit, row_utility
from iapo_gym.contexts import cost_contexts, preference_contexts
from iapo_gym.sampling import Pulls
from iapo_gym.utility import nested_sums, utility

MV_CONTEXTS = cost_contexts({"low": 0.0, "mid": 0.2, "high": 1.0})
BON_CONTEXTS = preference_contexts(("helpful", "harmless"), {"low": 0.1, "high": 1.0})


def random_pulls(strategy: str, rows: int, width: int, seed: int, categories: int = 5) -> Pulls:
    """Raw pulls with random sizes 0..width (row 0 full), outcomes, gold answers and costs."""
    rng = np.random.default_rng(seed)
    n = rng.integers(0, width + 1, size=rows)
    n[0] = width
    mask = np.arange(width)[None, :] < n[:, None]
    # Few categories make ties (and 1/t credit) frequent.
    outcome = np.where(mask, rng.integers(0, categories, size=(rows, width)), -1)
    if strategy == "mv":
        gold = rng.integers(0, categories, size=rows)
        values = np.where(mask, outcome == gold[:, None], 0).astype(float)[:, :, None]
    else:
        gold = np.full(rows, -1)
        values = np.where(mask[:, :, None], rng.uniform(-1.0, 4.0, size=(rows, width, 2)), 0.0)
    cost = np.where(mask, rng.uniform(0.001, 0.02, size=(rows, 1)), 0.0)
    return Pulls(strategy, rng.integers(0, 3, rows), n, rng.integers(0, 9, rows), outcome, values, cost, gold, mask,
                 categories)


@pytest.mark.parametrize("strategy,contexts", [("mv", MV_CONTEXTS), ("bon", BON_CONTEXTS)])
@pytest.mark.parametrize("width", [1, 7, 32])
def test_nested_gains_match_reference_nested_sums(strategy, contexts, width):
    pulls = random_pulls(strategy, 120, width, seed=width, categories=3)
    split = ContextSplit(contexts)
    gain, count, cost = nested_gains(pulls, split.obj_weights, width)
    ours = gain[split.group] - split.cost_weight[:, None, None] * cost[None]
    ref, ref_count = nested_sums(pulls, contexts.weights, width)
    np.testing.assert_array_equal(count, ref_count)
    np.testing.assert_allclose(ours, ref, atol=2e-5)  # block scores are float32


def test_contexts_sharing_objective_weights_share_one_gain():
    split = ContextSplit(BON_CONTEXTS)
    assert split.obj_weights.shape == (9, 2) and split.group.shape == (18,)
    assert ContextSplit(MV_CONTEXTS).obj_weights.shape == (1, 1)


@pytest.mark.parametrize("strategy,contexts", [("mv", MV_CONTEXTS), ("bon", BON_CONTEXTS)])
def test_row_utility_scores_each_pull_under_its_own_context(strategy, contexts):
    pulls = random_pulls(strategy, 60, 9, seed=3)
    which = np.random.default_rng(0).integers(0, len(contexts), 60)
    ours = row_utility(pulls, contexts.weights[which])
    ref = utility(pulls, contexts.weights)[which, np.arange(60)]
    np.testing.assert_allclose(ours, ref, atol=1e-12)


@pytest.mark.parametrize("pending", [None, "rows", "table"])
def test_row_utility_compiled_gives_the_numpy_bits(monkeypatch, pending):
    """The MV kernel (answers materialised, or drawn from the pending uniforms under per-row or
    whole-table cumulative probabilities) = the numpy path, bit for bit."""
    pytest.importorskip("numba")
    from iapo_gym.sampling import _outcomes, _row_draw

    rng = np.random.default_rng(4)
    rows, a, width = 300, 3, 9  # three answers and up to 9 votes: ties (credit 1/2, 1/3) are frequent
    n = rng.integers(1, width + 1, rows)
    start = np.cumsum(n) - n
    u = rng.random(int(n.sum()))
    cdf = np.cumsum(rng.dirichlet(np.ones(a), rows), axis=1)
    cdf[:, -1] = 1.0
    gold, unit = rng.integers(0, a, rows), rng.uniform(0.001, 0.02, rows)
    prompt, query = rng.integers(0, 3, rows), rng.integers(0, 9, rows)
    weights = MV_CONTEXTS.weights[rng.integers(0, len(MV_CONTEXTS), rows)]

    table = np.cumsum(rng.dirichlet(np.ones(a), (3, 9)), axis=-1)  # (P, Q, A) read at (prompt, query)
    table[..., -1] = 1.0
    if pending == "table":
        cdf = table[prompt, query]

    def pulls() -> Pulls:
        if pending:
            draw = _row_draw(u, start, cdf) if pending == "rows" else (u, start, table, prompt, query)
            return Pulls("mv", prompt, n, query, None, None, None, gold, None, a, unit_cost=unit, draw=draw)
        outcome, mask, _ = _outcomes(u, cdf, n, start)
        return Pulls("mv", prompt, n, query, outcome, None, None, gold, mask, a, unit_cost=unit)

    monkeypatch.setenv("IAPO_GYM_JIT", "0")
    ref = row_utility(pulls(), weights)
    monkeypatch.setenv("IAPO_GYM_JIT", "1")
    ours = row_utility(pulls(), weights)
    np.testing.assert_array_equal(ours, ref)
    credit = ref + weights[:, -1] * unit * n  # the gain part: 0, 1/3, 1/2 or 1 times the gain weight
    assert {0.0, 0.5, 1.0} <= set(np.round(credit / weights[:, 0], 6).tolist())


def test_block_plan_lists_every_block_once_by_size():
    plan = block_plan(7)
    sizes = [int(k) for k in plan.size]
    assert sizes == [1] * 7 + [2] * 3 + [3] * 2 + [4, 5, 6, 7]
    assert plan.start.tolist()[7:10] == [0, 2, 4] and plan.end.tolist()[7:10] == [2, 4, 6]
    assert plan.size_start.tolist() == [0, 7, 10, 12, 13, 14, 15]


def test_stats_accumulate_per_run_and_prompt():
    pulls = random_pulls("mv", 50, 8, seed=5)
    run = np.random.default_rng(1).integers(0, 4, 50)
    stats = NestedStats(4, 3, 8, MV_CONTEXTS)
    stats.add(pulls, run)
    ref, counts = nested_sums(pulls, MV_CONTEXTS.weights, 8)
    expect_sum = np.zeros((4, 3, 3, 8))
    expect_cnt = np.zeros((4, 3, 8), dtype=np.int64)
    for b in range(50):  # reference scatter, one pull at a time
        expect_sum[run[b], :, pulls.prompt[b]] += ref[:, b]
        expect_cnt[run[b], pulls.prompt[b]] += counts[b]
    np.testing.assert_array_equal(stats.count, expect_cnt)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(stats.means(), expect_sum / expect_cnt[:, None], atol=1e-6)
    # means_in: one context per run
    ctx = np.array([0, 2, 1, 2])
    np.testing.assert_allclose(stats.means_in(np.arange(4), ctx), stats.means()[np.arange(4), ctx], atol=1e-12)


def test_random_fit_takes_a_random_prefix_that_fits_each_group():
    rng = np.random.default_rng(0)
    group = np.repeat(np.arange(3), 10)
    cost = np.tile(np.arange(1, 11), 3)
    allowance = np.array([0, 17, 1000])
    chosen = random_fit(group, cost, allowance, rng.random(group.size))
    totals = np.bincount(group, weights=cost * chosen, minlength=3)
    assert totals[0] == 0 and 0 < totals[1] <= 17 and totals[2] == 55
    again = random_fit(group, cost, allowance, np.random.default_rng(0).random(group.size))
    np.testing.assert_array_equal(chosen, again)
    picks = {
        tuple(np.flatnonzero(random_fit(group, cost, allowance, np.random.default_rng(s).random(group.size))))
        for s in range(5)
    }
    assert len(picks) > 1  # the subset is random, not the first items


@pytest.mark.parametrize("jit", ["0", "1"])
@pytest.mark.parametrize("layout", ["equal", "unequal", "unsorted"])
@pytest.mark.parametrize("tied", [False, True])
def test_random_fit_row_path_takes_the_lexsort_prefix(monkeypatch, layout, tied, jit):
    """Equal contiguous groups (row-sorted fast path; compiled: only each row's prefix sorted) and any
    others pick exactly the prefix of the lexsort order, zero-cost items and empty allowances included."""
    if jit == "1":
        pytest.importorskip("numba")
    monkeypatch.setenv("IAPO_GYM_JIT", jit)
    rng = np.random.default_rng(7)
    for _ in range(50):
        g_n, size = int(rng.integers(1, 12)), int(rng.integers(1, 900 if layout == "equal" else 40))
        group = {
            "equal": np.repeat(np.arange(g_n), size) * 3 + 1,  # group ids need not be 0..G-1
            "unequal": np.repeat(np.arange(g_n), rng.integers(1, 9, g_n)),
            "unsorted": rng.integers(0, g_n, g_n * size),
        }[layout]
        keys = rng.random(group.size)
        if tied:  # repeated keys: ties go in item order (the unstable row sort must fall back)
            keys = np.floor(keys * 3) / 3
        cost = rng.integers(0 if tied else 1, 6, group.size)
        allowance = rng.integers(0, 4 * size + 2, int(group.max()) + 1)
        allowance[rng.random(allowance.size) < 0.2] = 0
        order = np.lexsort((keys, group))
        g, c = group[order], cost[order]
        expect = np.zeros(group.size, dtype=bool)
        for gid in np.unique(g):  # reference: walk each group's items in key order
            total = 0
            for i in np.flatnonzero(g == gid):
                total += c[i]
                expect[order[i]] = total <= allowance[gid]
        np.testing.assert_array_equal(random_fit(group, cost, allowance, keys), expect)


@pytest.mark.parametrize("strategy,contexts", [("mv", MV_CONTEXTS), ("bon", BON_CONTEXTS)])
def test_compact_halving_decides_as_the_dense_one(strategy, contexts):
    """means_at gives means() bit for bit; halve_compact / best_arms_of make halve's / best_arms' decisions."""
    from iapo_gym.agents._common import active_index, best_arms, best_arms_of, halve, halve_compact

    s_n, p_n, n_max = 5, 3, 8
    stats = NestedStats(s_n, p_n, n_max, contexts)
    pulls = random_pulls(strategy, 60, n_max, seed=11, categories=3)  # few answers: tied means
    stats.add(pulls, np.random.default_rng(2).integers(0, s_n, 60))
    dense = stats.means().reshape(s_n, len(contexts), p_n * n_max)
    run, ctx, arm = np.meshgrid(np.arange(s_n), np.arange(len(contexts)), np.arange(p_n * n_max), indexing="ij")
    np.testing.assert_array_equal(stats.means_at(run, ctx, arm), dense)  # NaN where unseen, same bits elsewhere
    assert np.isnan(dense).any()
    if strategy == "mv":  # tied means (credits of few answers): the ties rule is exercised
        assert (np.unique(dense[~np.isnan(dense)], return_counts=True)[1] > 1).any()
    a_dense = np.ones(dense.shape, dtype=bool)
    a_compact = a_dense.copy()
    idx = active_index(a_compact)
    for _ in range(5):  # down to one arm per (run, context)
        halve(a_dense, dense, np.ones(s_n, dtype=bool))
        idx = halve_compact(a_compact, idx, stats)
        np.testing.assert_array_equal(a_compact, a_dense)
        np.testing.assert_array_equal(idx, active_index(a_dense))
        np.testing.assert_array_equal(best_arms_of(a_compact, stats), best_arms(a_dense, dense))
    a_dense[0, 0, :] = True  # rows of unequal sizes: no compact index, the dense path
    a_lazy = a_dense.copy()
    some = np.array([True, False, True, True, False])  # only some runs halve: halve on the stats' means_at
    for _ in range(3):
        halve(a_dense, dense, some)
        halve(a_lazy, stats, some)
        np.testing.assert_array_equal(a_lazy, a_dense)
    a_dense[0, 0, :] = True
    assert active_index(a_dense) is None
    np.testing.assert_array_equal(best_arms_of(a_dense, stats), best_arms(a_dense, dense))


def test_add_per_cell_gives_the_bincount_bits():
    """The compiled per-cell add (repeated cells, any order) = ``+= bincount``, bit for bit."""
    pytest.importorskip("numba")
    from iapo_gym.agents._engine import add_per_cell

    rng = np.random.default_rng(11)
    size = 50
    sums, counts = rng.normal(size=size), rng.integers(0, 5, size)
    ref_sums, ref_counts = sums.copy(), counts.copy()
    scratch = np.zeros(size)
    for _ in range(20):
        cell = rng.integers(0, size, int(rng.integers(1, 80)))
        value = rng.normal(size=cell.size) * 10.0 ** rng.integers(-8, 8, cell.size)  # magnitudes: order matters
        ref_sums += np.bincount(cell, weights=value, minlength=size)
        ref_counts += np.bincount(cell, minlength=size)
        add_per_cell(sums, counts, scratch, cell, value)
        np.testing.assert_array_equal(sums, ref_sums)
        np.testing.assert_array_equal(counts, ref_counts)
        assert not scratch.any()


def test_stable_order_is_the_stable_argsort():
    from iapo_gym.agents._engine import stable_order

    rng = np.random.default_rng(9)
    for high in (3, 5_000, 70_000):  # 16-bit keys (radix sort) and wider ones
        key = rng.integers(0, high, 4_000)
        np.testing.assert_array_equal(stable_order(key), np.argsort(key, kind="stable"))
    assert stable_order(np.zeros(0, dtype=np.int64)).size == 0


@pytest.mark.parametrize("jit", ["0", "1"])
def test_random_fit_rows_with_degenerate_keys_take_the_lexsort_prefix(monkeypatch, jit):
    """Keys all equal, a few subnormals apart, negative or above 1 (the compiled row path buckets keys by
    value): still exactly the prefix of the (key, position) order that fits."""
    if jit == "1":
        pytest.importorskip("numba")
    monkeypatch.setenv("IAPO_GYM_JIT", jit)
    rng = np.random.default_rng(11)
    size, g_n = 300, 4
    group = np.repeat(np.arange(g_n), size)
    tiny = np.float64(5e-324)
    for keys in (
        np.full(group.size, 0.5),
        np.where(rng.random(group.size) < 0.5, 0.25, 0.25 + tiny),
        rng.normal(0.0, 3.0, group.size),
        rng.random(group.size) * 1e-300,
        np.where(rng.random(group.size) < 0.01, 0.0, 0.9),
    ):
        cost = rng.integers(0, 4, group.size)
        allowance = np.array([0, 30, 200, 10_000])
        order = np.lexsort((keys, group))
        expect = np.zeros(group.size, dtype=bool)
        for gid in range(g_n):
            total = 0
            for i in order[group[order] == gid]:
                total += cost[i]
                expect[i] = total <= allowance[gid]
        np.testing.assert_array_equal(random_fit(group, cost, allowance, keys), expect)
