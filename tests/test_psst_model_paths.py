"""psst_model's compiled kernels give the numpy path's bits, and its rewritten estimators equal the old ones.

Each kernel of :mod:`iapo_gym.agents.psst_model` (``IAPO_GYM_JIT=1``) is compared bit for bit with
its numpy twin (``IAPO_GYM_JIT=0``) on inputs with the awkward cases (ties, zero counts, single
completions, empty likelihood rows, grids below and above numpy's 8-term pairwise block); the numpy
twins are compared with the formulas they replaced (kept here as references). The pinned policies
of ``tests/policy_pins.py`` must hold on both paths.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from policy_pins import CASES, PINS, compute

from iapo_gym import _jit
from iapo_gym.agents import psst_model as pm

needs_numba = pytest.mark.skipif(not _jit.available(), reason="numba is not installed (pip install 'iapo-gym[fast]')")


def _both_paths(monkeypatch: pytest.MonkeyPatch, fn, *args):
    out = {}
    for flag in ("0", "1"):
        monkeypatch.setenv(_jit.ENV_VAR, flag)
        out[flag] = fn(*args)
    return out["0"], out["1"]


# ------------------------------------------------------------------------------ eb_shrink's EM
def _shrink_em_batched(lik: np.ndarray, cnt: np.ndarray, iters: int) -> np.ndarray:
    """The loop :func:`pm._shrink_em` replaced: every row at once, fresh arrays every iteration."""
    w = np.full((lik.shape[0], lik.shape[2]), 1.0 / lik.shape[2])
    for _ in range(iters):
        post = w[:, None, :] * lik
        post /= np.maximum(post.sum(axis=2, keepdims=True), 1e-300)
        w = post.sum(axis=1) / cnt[:, None]
    return w


@pytest.mark.parametrize("grid", [5, 8, 13, 64, 100, 128, 200])
def test_shrink_em_numpy_blocks_give_the_batched_loops_bits(monkeypatch: pytest.MonkeyPatch, grid: int):
    rng = np.random.default_rng(grid)
    lik = np.exp(-rng.exponential(3.0, size=(300, 7, grid)))
    lik[::7, 2] = 0.0  # a prompt that is not valid in these rows
    lik[5, :, : grid // 2] = 0.0
    cnt = (lik.sum(axis=2) > 0).sum(axis=1).astype(np.float64)
    monkeypatch.setattr(pm, "SHRINK_BLOCK_BYTES", 8 * 7 * grid * 17)  # 17 rows per block: blocks end mid-batch
    monkeypatch.setenv(_jit.ENV_VAR, "0")
    np.testing.assert_array_equal(pm._shrink_em(lik, cnt, 40), _shrink_em_batched(lik, cnt, 40))


@needs_numba
@pytest.mark.parametrize("grid", [5, 8, 13, 64, 100, 128])
def test_shrink_em_kernel_gives_the_numpy_bits(monkeypatch: pytest.MonkeyPatch, grid: int):
    rng = np.random.default_rng(100 + grid)
    lik = np.exp(-rng.exponential(3.0, size=(120, 9, grid)))
    lik[::5, 4] = 0.0
    cnt = (lik.sum(axis=2) > 0).sum(axis=1).astype(np.float64)
    a, b = _both_paths(monkeypatch, pm._shrink_em, lik, cnt, 60)
    np.testing.assert_array_equal(a, b)


@needs_numba
def test_eb_shrink_gives_the_same_bits_on_both_paths(monkeypatch: pytest.MonkeyPatch):
    rng = np.random.default_rng(5)
    mean = rng.normal(0.6, 0.05, size=(6, 11, 1, 9))
    var = rng.exponential(1e-3, size=mean.shape)
    valid = rng.random((6, 11)) < 0.8
    mean[0, 3, 0, 2] = np.nan  # unseen reading
    a, b = _both_paths(monkeypatch, pm.eb_shrink, mean, var, valid)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[valid], mean[valid])  # it did shrink


# ------------------------------------------------------------------------ jackknife_bon_max
def _bon_reference(scores: np.ndarray, counts: np.ndarray, n_max: int, jackknife: bool) -> np.ndarray:
    """The O(M^2) formula jackknife_bon_max replaced: every left-out position's shares in full."""
    order = np.argsort(scores, axis=1, kind="stable")
    st = np.take_along_axis(scores, order, axis=1)
    ct = np.take_along_axis(counts.astype(np.float64), order, axis=1)
    cum = np.cumsum(ct, axis=1)
    m = cum[:, -1]
    ds = np.diff(st, axis=1)
    top = st[:, -1]
    n = np.arange(1, n_max + 1)
    est = top[:, None] - np.einsum("rj,rjn->rn", ds, (cum[:, :-1] / m[:, None])[:, :, None] ** n)
    if not jackknife:
        return est
    m_n = scores.shape[1]
    shift = (np.arange(m_n)[:, None] <= np.arange(m_n - 1)[None, :]).astype(np.float64)  # (i, j): j >= i
    fl = np.clip((cum[:, None, :-1] - shift) / np.maximum(m - 1, 1)[:, None, None], 0.0, 1.0)
    inner = np.einsum("rj,rijn->rin", ds, fl[..., None] ** n)
    loo = top[:, None] - np.einsum("ri,rin->rn", ct / m[:, None], inner)
    return np.where((m >= 2)[:, None], m[:, None] * est - (m - 1)[:, None] * loo, est)


def _bon_inputs(seed: int, rows: int, outcomes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(rows, outcomes)).round(1)  # rounded: tied scores
    counts = rng.integers(0, 4, size=(rows, outcomes))
    counts[::3, 1:] = 0  # one observed outcome
    counts[::5] = 0
    counts[::5, 0] = 1  # a single completion (no jackknife)
    counts[:, 0] = np.maximum(counts[:, 0], counts.sum(axis=1) == 0)  # at least one completion per row
    return scores, counts


@pytest.mark.parametrize("jackknife", [True, False])
@pytest.mark.parametrize(("outcomes", "n_max"), [(1, 5), (2, 1), (8, 32), (11, 7)])
def test_bon_estimator_equals_the_quadratic_formula(
    monkeypatch: pytest.MonkeyPatch, outcomes: int, n_max: int, jackknife: bool
):
    scores, counts = _bon_inputs(outcomes, 400, outcomes)
    monkeypatch.setattr(pm, "BON_BLOCK_ELEMENTS", 3 * outcomes * n_max * 37)  # 37 rows per block
    monkeypatch.setenv(_jit.ENV_VAR, "0")
    got = pm.jackknife_bon_max(scores, counts, n_max, jackknife)
    np.testing.assert_allclose(got, _bon_reference(scores, counts, n_max, jackknife), rtol=1e-12, atol=1e-13)


@needs_numba
@pytest.mark.parametrize("jackknife", [True, False])
@pytest.mark.parametrize(("outcomes", "n_max"), [(1, 5), (2, 1), (8, 32), (11, 7)])
def test_bon_kernel_gives_the_numpy_bits(monkeypatch: pytest.MonkeyPatch, outcomes: int, n_max: int, jackknife: bool):
    scores, counts = _bon_inputs(50 + outcomes, 700, outcomes)
    a, b = _both_paths(monkeypatch, pm.jackknife_bon_max, scores, counts, n_max, jackknife)
    np.testing.assert_array_equal(a, b)


def test_bon_rows_are_independent_of_the_batch(monkeypatch: pytest.MonkeyPatch):
    """A row's estimate depends on that row only: alone, in a batch, or in another block."""
    scores, counts = _bon_inputs(9, 300, 6)
    for flag in ("0", "1") if _jit.available() else ("0",):
        monkeypatch.setenv(_jit.ENV_VAR, flag)
        full = pm.jackknife_bon_max(scores, counts, 9)
        np.testing.assert_array_equal(pm.jackknife_bon_max(scores[7:8], counts[7:8], 9), full[7:8])
        np.testing.assert_array_equal(pm.jackknife_bon_max(scores[::-1], counts[::-1], 9), full[::-1])


# --------------------------------------------------------------------------- scatter sums
@needs_numba
@pytest.mark.parametrize("sign", [1, -1])
def test_scatter_sums_kernel_adds_in_row_order_like_add_at(monkeypatch: pytest.MonkeyPatch, sign: int):
    rng = np.random.default_rng(sign + 2)
    target = rng.integers(0, 9, size=500)  # many repeats per target: the order of the adds matters
    v = rng.normal(size=(500, 5)) * 10.0 ** rng.integers(-8, 8, size=(500, 1))
    start = rng.normal(size=(9, 3, 5))
    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv(_jit.ENV_VAR, flag)
        acc, acc2 = start.copy(), start.copy()
        pm._scatter_sums(acc[:, 1], acc2[:, 1], target, v, sign)  # a strided view, as PlugInSums passes
        results.append((acc, acc2))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[0][0][:, [0, 2]], start[:, [0, 2]])  # other objective rows untouched


# -------------------------------------------------------------------- the NPMLE's variance
def test_npmle_from_held_pairs_equals_the_dense_form():
    """Each group's own (k, m) pairs give the dense form's values (every group over every pair, by matrix products)."""
    from scipy.stats import binom

    from iapo_gym import oracle

    rng = np.random.default_rng(11)
    m = rng.choice([2, 4, 6, 14], size=900)
    k = rng.binomial(m, rng.beta(2, 2, size=900))
    group = rng.integers(0, 40, size=900)
    group[group == 7] = 8  # a group without cells
    n_max = 9
    est, var = pm.npmle_binary_q_var(k, m, group, 40, n_max)
    # the dense form, every group over every pair
    grid = pm.NPMLE_GRID
    pairs, code = np.unique(np.stack([k, m], axis=1), axis=0, return_inverse=True)
    code = code.reshape(-1)
    lik = binom.pmf(pairs[:, 0][None, :], pairs[:, 1][None, :], grid[:, None])
    hist = np.bincount(group * pairs.shape[0] + code, minlength=40 * pairs.shape[0]).reshape(40, -1).astype(np.float64)
    n = hist.sum(axis=1, keepdims=True)
    w = np.full((40, grid.size), 1.0 / grid.size)
    for _ in range(pm.NPMLE_ITERS):
        w = w * ((hist / np.maximum(w @ lik, 1e-300)) @ lik.T) / np.maximum(n, 1.0)
    f = oracle.mv_credit(np.stack([grid, 1.0 - grid], axis=1), np.zeros(grid.size, np.int64), n_max)
    post = w[:, :, None] * lik[None, :, :]
    post /= np.maximum(post.sum(axis=1, keepdims=True), 1e-300)
    pmean = np.einsum("btk,tn->bkn", post, f)
    nn = np.maximum(n, 1.0)
    mean = np.einsum("bk,bkn->bn", hist, pmean) / nn
    want = np.maximum(np.einsum("bk,bkn->bn", hist, pmean * pmean) / nn - mean * mean, 0.0) / nn
    # the same sums in another order: equal to rounding (the bits are the group-local order's, below)
    np.testing.assert_allclose(est, w @ f, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(var, want, rtol=1e-6, atol=1e-15)
    assert var[8].max() > 0 and not var[7].any()


def test_npmle_of_a_group_does_not_depend_on_the_other_groups(monkeypatch):
    """A seed determines its run: a group's estimate and variance are the same bits alone and in any batch.

    The batch's (k, m) pairs differ from a group's own; a matrix product over all of them (the former
    form) summed each group's terms in a blocked order that moved with the batch, and flipped near-tied
    decisions of a few runs in 200 (Synth-Bernoulli, T = 5,000).
    """
    rng = np.random.default_rng(5)
    n_groups, per = 60, 120
    m = rng.choice([2, 4, 5, 7, 15], size=(n_groups, per))
    k = rng.binomial(m, rng.uniform(0.15, 0.95, size=(n_groups, per)))
    group = np.repeat(np.arange(n_groups), per)
    for flag in ("0", "1") if _jit.available() else ("0",):
        monkeypatch.setenv(_jit.ENV_VAR, flag)
        est, var = pm.npmle_binary_q_var(k.ravel(), m.ravel(), group, n_groups, 32)
        for g in (0, 17, 59):
            alone, alone_var = pm.npmle_binary_q_var(k[g], m[g], np.zeros(per, np.int64), 1, 32)
            np.testing.assert_array_equal(alone[0], est[g])
            np.testing.assert_array_equal(alone_var[0], var[g])
        # reversed group order, with two groups of other data around it
        order = np.r_[n_groups, np.arange(n_groups)[::-1], n_groups + 1]
        k2 = np.vstack([k, rng.binomial(3, 0.5, size=(2, per))])
        m2 = np.vstack([m, np.full((2, per), 3)])
        est2, var2 = pm.npmle_binary_q_var(
            k2[order].ravel(), m2[order].ravel(), np.repeat(np.arange(order.size), per), order.size, 32
        )
        np.testing.assert_array_equal(est2[1:-1][::-1], est)
        np.testing.assert_array_equal(var2[1:-1][::-1], var)
    if _jit.available():
        monkeypatch.setenv(_jit.ENV_VAR, "0")
        numpy_path = pm.npmle_binary_q_var(k.ravel(), m.ravel(), group, n_groups, 32)
        monkeypatch.setenv(_jit.ENV_VAR, "1")
        compiled = pm.npmle_binary_q_var(k.ravel(), m.ravel(), group, n_groups, 32)
        np.testing.assert_array_equal(numpy_path[0], compiled[0])
        np.testing.assert_array_equal(numpy_path[1], compiled[1])


# ------------------------------------------------------------- memo of the majority-vote estimates
def _count_cells(seed: int, cells: int, a_n: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell counts ``(cells, A)`` with many repeated rows, unanimous rows and a few empty cells, and a gold per cell."""
    rng = np.random.default_rng(seed)
    m = rng.integers(1, high + 1, size=cells)
    counts = np.stack([rng.multinomial(k, rng.dirichlet(np.full(a_n, 0.5))) for k in m]).astype(np.int32)
    counts[::9] = 0
    counts[::9, 0] = m[::9]  # unanimous
    counts[::13] = 0  # never pulled
    return counts, rng.integers(0, a_n, size=cells)


@pytest.mark.parametrize(("a_n", "high"), [(2, 9), (3, 6), (5, 40), (7, 3)])
def test_memo_estimates_are_the_direct_estimates_of_each_row(monkeypatch: pytest.MonkeyPatch, a_n: int, high: int):
    """Rows read from the memo -- met in earlier calls, in any order, through table growth -- have one direct batch's bits."""
    counts, gold = _count_cells(a_n + high, 3_000, a_n, high)
    seen = counts.sum(axis=1) > 0
    own = counts[np.arange(counts.shape[0]), gold]
    others = np.where(np.arange(a_n)[None, :] == gold[:, None], -1, counts)
    others = np.maximum(-np.sort(-others, axis=1)[:, : a_n - 1], 0)
    want = pm.jackknife_mv_credit(np.concatenate([own[:, None], others], axis=1)[seen], 9)
    for flag in ("0", "1") if _jit.available() else ("0",):
        monkeypatch.setenv(_jit.ENV_VAR, flag)
        memo = pm.MVCreditMemo(a_n, 9, True)
        cell = np.arange(counts.shape[0])
        keys, m, top = pm._mv_count_keys(counts, gold, cell, cell, memo.bits)
        assert top < 1 << memo.bits
        np.testing.assert_array_equal(m, counts.sum(axis=1))
        keys = keys[seen]
        for part in (keys[1500:], keys[::-1], keys[:700], keys):  # new rows in several batches, then all met
            slot = memo.slots(part)
            np.testing.assert_array_equal(memo.vals[slot], want[_where(keys, part)])
        assert memo.size == np.unique(keys).size
        if flag == "1" and memo.size > 1 << 11:
            assert memo.table_keys.size >= 2 * memo.size  # the table grew (kept at most half full)


@pytest.mark.parametrize("flag", ["0", "1"] if _jit.available() else ["0"])
@pytest.mark.parametrize("task", ["SynthBernoulli", "MATH"])
def test_a_shared_memo_warmed_by_other_batches_changes_no_decision(monkeypatch: pytest.MonkeyPatch, task: str, flag: str):
    """Batches of one process share the memo (``shared_memo``): a batch after others decides as it does alone.

    Synth-Bernoulli (binary answers) and MATH (5 answer categories; skipped without the released
    table): seeds 3-5 fitted with an empty memo, then again after two batches of other seeds and
    budgets filled it; the policies (arms, spend, every logged number) are the same, and the memo
    did grow and was read.
    """
    from policy_pins import fingerprint, load_math, make_envs

    from iapo_gym.agents import make_agent

    if task == "MATH" and load_math() is None:
        pytest.skip("the released MATH table is absent")
    monkeypatch.setenv(_jit.ENV_VAR, flag)
    monkeypatch.setattr(pm, "_SHARED_MEMOS", {})
    make_env = make_envs(task)
    agent = make_agent("psst_model")
    env = make_env(3)
    weights, n_arms = env.unwrapped.contexts.weights, env.unwrapped.n_arms

    def fit(seeds: list[int], budget: int) -> list[str]:
        return [fingerprint(p, weights, n_arms) for p in agent.fit_many(make_env, budget, seeds)]

    alone = fit([3, 4, 5], 2_000)
    pm._SHARED_MEMOS.clear()
    fit([0, 1, 2, 6, 7], 3_000)
    fit([8, 9], 1_000)
    (memo,) = pm._SHARED_MEMOS.values()
    size = memo.size
    assert size > 0
    assert fit([3, 4, 5], 2_000) == alone
    assert pm._SHARED_MEMOS[next(iter(pm._SHARED_MEMOS))] is memo  # the same memo was read, not a new one
    assert memo.size >= size


def test_shared_memo_starts_afresh_past_its_bound(monkeypatch: pytest.MonkeyPatch):
    """A shared memo past ``SHARED_MEMO_ROWS`` rows is replaced by an empty one; each setting has its own."""
    monkeypatch.setattr(pm, "_SHARED_MEMOS", {})
    monkeypatch.setattr(pm, "SHARED_MEMO_ROWS", 10)
    memo = pm.shared_memo(3, 9, True)
    assert pm.shared_memo(3, 9, True) is memo
    assert pm.shared_memo(3, 9, False) is not memo and pm.shared_memo(4, 9, True) is not memo
    counts, gold = _count_cells(5, 200, 3, 6)
    cell = np.arange(counts.shape[0])
    keys, m, _ = pm._mv_count_keys(counts, gold, cell, cell, memo.bits)
    vals, slot = memo.lookup(keys[m > 0])
    assert memo.size > 10 and vals.shape[0] >= memo.size and slot.max() < memo.size
    fresh = pm.shared_memo(3, 9, True)
    assert fresh is not memo and fresh.size == 0


def _where(keys: np.ndarray, part: np.ndarray) -> np.ndarray:
    """Index into ``keys`` of each of ``part``'s entries (the first one where keys repeat)."""
    order = np.argsort(keys, kind="stable")
    return order[np.searchsorted(keys[order], part)]


@needs_numba
@pytest.mark.parametrize("a_n", [2, 5, 9])
def test_count_keys_kernel_gives_the_numpy_keys(monkeypatch: pytest.MonkeyPatch, a_n: int):
    counts, gold = _count_cells(40 + a_n, 900, a_n, 20)
    rng = np.random.default_rng(a_n)
    cell = rng.integers(0, counts.shape[0], size=1_500)  # cells read in any order, some twice
    gold_flat = np.concatenate([gold, [-1]])  # an unseen (run, column): gold -1
    gcell = cell.copy()
    gcell[counts[cell].sum(axis=1) == 0] = gold.size  # empty cells point at it
    a, b = _both_paths(monkeypatch, pm._mv_count_keys, counts, gold_flat, cell, gcell, 62 // a_n)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert a[2] == counts[cell].max()


@needs_numba
@pytest.mark.parametrize("width", [1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 127, 128])
def test_add_of_a_pending_draw_gives_the_numpy_counts_and_cost_bits(monkeypatch: pytest.MonkeyPatch, width: int):
    """CountStats.add reading the draw: the counts, completions and (numpy's pairwise) cost sums of the materialised pulls."""
    from iapo_gym.sampling import draw_pulls
    from iapo_gym.tables.testing import example_table

    table = example_table("mv", seed=width, n_prompts=4, n_queries=9, n_outcomes=5)
    rng = np.random.default_rng(width)
    b = 300
    prompt, query = rng.integers(0, 4, size=b), rng.integers(0, 9, size=b)
    n = rng.integers(1, width + 1, size=b)
    n[0] = width
    start = np.concatenate([[0], np.cumsum(n)[:-1]])
    u = rng.random(int(n.sum()))
    unit_cost = rng.uniform(0.1, 3.0, size=b) * 10.0 ** rng.integers(-3, 3, size=b)
    run, col = rng.integers(0, 3, size=b), rng.integers(0, 6, size=b)
    stats = {}
    for flag in ("0", "1"):
        monkeypatch.setenv(_jit.ENV_VAR, flag)
        pulls = draw_pulls(table, prompt, query, n, u, start, unit_cost=unit_cost)
        assert (pulls.pending_draw is not None) == (flag == "1")
        st = pm.CountStats(3, 4, 6, 1, "mv")
        st.add(pulls, run, col)
        st.add(pulls, run, col)  # running sums: the second call adds to the first
        stats[flag] = st
    for name in ("counts", "gold", "cost", "completions"):
        np.testing.assert_array_equal(getattr(stats["0"], name), getattr(stats["1"], name))
    assert stats["1"].counts.sum() == 2 * n.sum()


@needs_numba
def test_plugin_q_kernel_gives_the_numpy_bits(monkeypatch: pytest.MonkeyPatch):
    """PlugInSums.q of the majority-vote plug-in: the fused pass and the numpy steps, NaN where not alive or never pulled."""
    rng = np.random.default_rng(3)
    s_n, p_n, n_max = 5, 7, 6
    stats = pm.CountStats(s_n, p_n, 4, 1, "mv")
    stats._allocate(4)
    stats.cost[:] = rng.uniform(1.0, 9.0, size=(s_n, p_n))
    stats.completions[:] = rng.integers(1, 30, size=(s_n, p_n))
    weights = np.array([[1.0, 0.02], [2.0, 0.0], [0.5, 0.3]])
    sums = pm.PlugInSums(stats, weights, n_max, True)
    vals = rng.random((40, n_max))
    target = rng.integers(0, s_n * p_n, size=40)
    acc, acc2 = sums.acc.reshape(-1, n_max), sums.acc2.reshape(-1, n_max)
    np.add.at(acc, target, vals)
    np.add.at(acc2, target, vals * vals)
    np.add.at(sums.cells.reshape(-1), target, 1)
    acc2[target[0]] -= 1e-3  # a negative spread: clipped to 0
    alive = rng.random((s_n, p_n)) < 0.8
    (q0, sd0), (q1, sd1) = _both_paths(monkeypatch, lambda: (sums.q(alive, weights), sums.sd))
    np.testing.assert_array_equal(q0, q1)
    np.testing.assert_array_equal(sd0, sd1)
    assert np.isnan(q1).any() and np.isfinite(q1).any()


def test_plan_takes_the_sorted_distinct_cells_of_the_round(monkeypatch: pytest.MonkeyPatch):
    """The cells a round takes out: every alive prompt on each distinct column of its run, sorted as np.unique sorts them."""
    from iapo_gym.agents import make_agent
    from iapo_gym.env import IAPOEnv
    from iapo_gym.tables.testing import example_table

    table = example_table("mv", seed=2, n_prompts=6, n_queries=10, n_outcomes=4, n_max=8)
    envs = [IAPOEnv(table, split_seed=s) for s in range(4)]
    seen = []
    original = pm.PairedModelAllocation.plan

    def plan(self, avail, last):  # noqa: ANN001, ANN202
        units, rows = original(self, avail, last)
        seen.append((self.pending, rows))
        return units, rows

    monkeypatch.setattr(pm.PairedModelAllocation, "plan", plan)
    make_agent("psst_model").fit_many(lambda s: envs[s], 3_000, list(range(4)))  # 8 train queries: the walk wraps
    assert seen
    for pending, rows in seen:
        want = np.unique((rows.run * 6 + rows.prompt) * 8 + rows.col)  # what the cells were before
        s_i, p_i, w_i = pending
        np.testing.assert_array_equal((s_i * 6 + p_i) * 8 + w_i, want)
    assert any(rows.run.size > np.unique((rows.run * 6 + rows.prompt) * 8 + rows.col).size for _, rows in seen)  # repeats


# ------------------------------------------------------------------------ policies, both paths
MODEL_CASES = [c for c in CASES if c.agent == "psst_model"]


@needs_numba
@pytest.mark.parametrize("flag", ["0", "1"])
@pytest.mark.parametrize("case", MODEL_CASES, ids=[c.key for c in MODEL_CASES])
def test_psst_model_policies_are_pinned_on_both_paths(monkeypatch: pytest.MonkeyPatch, case, flag: str):
    monkeypatch.setenv(_jit.ENV_VAR, flag)
    assert compute(case) == json.loads(PINS.read_text())[case.key]


@needs_numba
@pytest.mark.parametrize("seed", range(4))
def test_best_arms_and_errors_kernel_gives_the_numpy_arms(monkeypatch: pytest.MonkeyPatch, seed: int):
    """Each prompt's first best arm and its standard error: the same bits on both paths (NaN, ties, infinities, zeros)."""
    rng = np.random.default_rng(seed)
    values = [0.1, 0.25, 0.5, -0.0, 0.0, np.nan, -np.inf, np.inf]
    q = rng.choice(values, size=(3, 4, 5, 6), p=[0.3, 0.2, 0.2, 0.05, 0.05, 0.14, 0.03, 0.03])
    q[0, 0, 0] = np.nan  # no arm known
    sd = rng.random(q.shape)
    sd[rng.random(q.shape) < 0.2] = np.nan
    a, b = _both_paths(monkeypatch, pm.best_arms_and_errors, q, sd)
    for x, y in zip(a, b, strict=True):
        assert x.tobytes() == y.tobytes()
    assert a[0][0, 0, 0] == -np.inf and np.isfinite(a[1]).all()
    qn = np.where(np.isnan(q), -np.inf, q)
    np.testing.assert_array_equal(a[0], qn.max(axis=-1))
