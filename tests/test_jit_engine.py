"""The engine's compiled kernels give the numpy path's bits: tallies, draws, halving, whole policies.

Each kernel (``iapo_gym._jit``) has a numpy twin that stays the reference; ``IAPO_GYM_JIT`` picks
the path. These tests run both paths on the same input and compare the results exactly (bytes, so
signed zeros and NaN count): property tests on random pulls for the kernels, and whole fitted
policies (arms, spend and diagnostics) of every agent that goes through them, on the released MATH
table (skipped when absent) and on synthetic majority-vote tasks, for several batch shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_pins import fingerprint, load_math, make_envs

from iapo_gym import _jit
from iapo_gym.contexts import ContextSet
from iapo_gym.sampling import Pulls

pytest.importorskip("numba")

from iapo_gym.agents import _common, _engine  # noqa: E402
from iapo_gym.sampling import _outcomes  # noqa: E402


def both(monkeypatch: pytest.MonkeyPatch, fn, *args):  # noqa: ANN001, ANN201
    """``fn(*args)`` with the numpy path, then with the kernels."""
    out = []
    for flag in ("0", "1"):
        monkeypatch.setenv(_jit.ENV_VAR, flag)
        out.append(fn(*args))
    return out


def contexts_of(weights: list[list[float]]) -> ContextSet:
    return ContextSet(tuple(f"c{i}" for i in range(len(weights))), np.array(weights))


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def random_pulls(rng: np.random.Generator, b: int, width: int, a: int, n_prompts: int, unit: bool) -> Pulls:
    """MV pulls of mixed sizes (1..width), answers skewed towards a few categories (many ties and wins)."""
    n = rng.integers(1, width + 1, b)
    probs = rng.dirichlet(np.full(a, 0.3))
    outcome = rng.choice(a, size=(b, width), p=probs).astype(np.int64)
    mask = np.arange(width)[None, :] < n[:, None]
    outcome[~mask] = -1
    gold = rng.integers(0, a, b)
    prompt = rng.integers(0, n_prompts, b)
    query = np.zeros(b, dtype=np.int64)
    if unit:
        return Pulls("mv", prompt, n, query, outcome, None, None, gold, mask, a, unit_cost=rng.random(b) * 3)
    cost = np.where(mask, rng.random((b, width)), 0.0)  # live pulls: every completion its own cost
    return Pulls("mv", prompt, n, query, outcome, None, cost, gold, mask, a)


def cells_in_order(pulls: Pulls, run: np.ndarray) -> tuple[Pulls, np.ndarray]:
    """The same pulls with each (run, prompt) cell's pulls consecutive (stable: a cell keeps its pulls' order).

    The kernels may then keep one accumulator row, flushed at each change of cell, instead of one
    per cell (``ROLLING_MIN_VALUES``); a cell's sum is the same sequence of additions either way.
    """
    o = np.lexsort((pulls.prompt, run))
    values = pulls.values[o] if pulls.strategy == "bon" else None
    unit = None if pulls.unit_cost is None else pulls.unit_cost[o]
    cost = pulls.cost[o] if unit is None else None
    out = Pulls(pulls.strategy, pulls.prompt[o], pulls.n[o], pulls.query[o], pulls.outcome[o], values, cost,
                pulls.gold[o], pulls.mask[o], pulls.n_categories, unit_cost=unit)  # fmt: skip
    return out, run[o]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    b=st.integers(1, 90),
    width=st.integers(1, 40),
    a=st.sampled_from([1, 2, 3, 5, 9, 12, 40]),
    n_max=st.integers(1, 40),
    runs=st.integers(1, 4),
    unit=st.booleans(),
    weights=st.sampled_from(
        [[[1.0, 0.0], [1.0, 0.5]], [[-2.0, 1.0]], [[1.0, 0.1], [0.5, 0.0], [3.0, 2.0]], [[0.7, 0.3], [1.3, 0.0]]]
    ),
    weighting=st.sampled_from(["block", "query"]),
    grouped=st.booleans(),
)
def test_block_tallies_are_the_numpy_bits(monkeypatch, seed, b, width, a, n_max, runs, unit, weights, weighting, grouped):
    """NestedStats.add (block and query weighting): gain, cost, count identical, over two batches on existing tallies.

    Covers: packed votes (few answers) and per-answer counts (40 answers), one answer, pulls wider
    than ``n_max``, one pull per cell and several, in any order or each cell's consecutive (one
    accumulator row), one cost per pull and per completion, negative objective weights (signed
    zeros), several objective-weight rows.
    """
    rng = np.random.default_rng(seed)
    n_prompts = 3
    batches = [random_pulls(rng, b, width, a, n_prompts, unit) for _ in range(2)]
    run_of = [rng.integers(0, runs, b) for _ in range(2)]
    if grouped:  # and summed in one rolling row, however few the cells
        batches, run_of = map(list, zip(*(cells_in_order(p, r) for p, r in zip(batches, run_of, strict=True)), strict=True))
        monkeypatch.setattr(_engine, "ROLLING_MIN_VALUES", 0)
    contexts = contexts_of(weights)

    def tallies():  # noqa: ANN202
        stats = _engine.NestedStats(runs, n_prompts, n_max, contexts, weighting=weighting)
        for pulls, run in zip(batches, run_of, strict=True):
            stats.add(pulls, run)
        return stats.gain, stats.cost, stats.count

    numpy_path, kernels = both(monkeypatch, tallies)
    for x, y in zip(numpy_path, kernels, strict=True):
        assert same_bits(x, y)
    assert kernels[2].sum() > 0  # something was recorded


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    b=st.integers(1, 90),
    width=st.integers(1, 40),
    a=st.sampled_from([1, 2, 5, 9, 40]),
    runs=st.integers(1, 4),
    unit=st.booleans(),
    dead=st.floats(0.0, 1.0),
)
def test_live_arms_skip_only_dead_tallies(monkeypatch, seed, b, width, a, runs, unit, dead):
    """NestedStats.add with ``live``: on both paths, live arms get the bits of a tally without ``live``, dead ones nothing.

    Two batches on existing tallies (one pull per cell and several), several objective rows with a
    negative weight; the arms not live are left exactly as they were before the batches.
    """
    rng = np.random.default_rng(seed)
    n_prompts, n_max = 3, 40
    batches = [random_pulls(rng, b, width, a, n_prompts, unit) for _ in range(3)]
    run_of = [rng.integers(0, runs, b) for _ in range(3)]
    live = rng.random((runs, n_prompts, n_max)) >= dead
    contexts = contexts_of([[1.0, 0.0], [-2.0, 0.5]])

    def tallies(use_live: bool):  # noqa: ANN202
        stats = _engine.NestedStats(runs, n_prompts, n_max, contexts)
        stats.add(batches[0], run_of[0])  # earlier data, recorded in full
        for pulls, run in zip(batches[1:], run_of[1:], strict=True):
            stats.add(pulls, run, live=live if use_live else None)
        return stats.gain, stats.cost, stats.count

    monkeypatch.setenv(_jit.ENV_VAR, "0")
    first = _engine.NestedStats(runs, n_prompts, n_max, contexts)
    first.add(batches[0], run_of[0])
    full = tallies(False)
    for path in ("0", "1"):
        monkeypatch.setenv(_jit.ENV_VAR, path)
        got = tallies(True)
        for x, want, before in zip(got, full, (first.gain, first.cost, first.count), strict=True):
            keep = live[:, None] if x.ndim == 4 else live
            keep = np.broadcast_to(keep, x.shape)
            assert same_bits(x[keep], want[keep]), path
            assert same_bits(x[~keep], before[~keep]), path


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), b=st.integers(1, 70), width=st.integers(1, 70), a=st.sampled_from([1, 2, 4, 7, 17]))
def test_size_sums_are_the_numpy_bits(monkeypatch, seed, b, width, a):
    """The per-size credit sums of a batch (what the query-weighted tallies and nested_gains read)."""
    pulls = random_pulls(np.random.default_rng(seed), b, width, a, 2, True)
    n = pulls.n.copy()
    plan = _engine.block_plan(width)
    numpy_path, kernels = both(monkeypatch, _engine._mv_size_sums, pulls, plan, n)
    assert same_bits(numpy_path, kernels)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 30), n=st.integers(1, 200), k_frac=st.floats(0.0, 1.0),
    levels=st.integers(1, 6),
)
def test_top_k_mask_is_the_numpy_mask(monkeypatch, seed, rows, n, k_frac, levels):
    """Keys with many ties (few distinct levels, signed zeros, the unseen rank): the same kept entries."""
    rng = np.random.default_rng(seed)
    choices = np.array([0.0, -0.0, _common.UNSEEN, 0.25, -1.5, 7.0])[:levels]
    key = rng.choice(choices, size=(rows, n))
    key[rng.random((rows, n)) < 0.3] = rng.random() if levels > 3 else 0.0
    k = max(1, int(k_frac * n))
    numpy_path, kernels = both(monkeypatch, _common._top_k_mask, key, k)
    assert same_bits(numpy_path, kernels)
    assert (kernels.sum(axis=1) == k).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), b=st.integers(1, 50), width=st.integers(1, 40), outcomes=st.integers(2, 30))
def test_inverse_cdf_outcomes_are_the_numpy_outcomes(monkeypatch, seed, b, width, outcomes):
    """Outcomes and mask of the inverse-CDF draw (few and many outcomes; uniforms on the thresholds)."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(rng.dirichlet(np.full(outcomes, 0.5), size=b), axis=1)
    cdf[:, -1] = 1.0
    u = rng.random((b, width))
    u[:, ::3] = cdf[:, :1]  # exactly on a threshold
    n = rng.integers(1, width + 1, b)
    numpy_path, kernels = both(monkeypatch, _outcomes, u, cdf, n)
    for x, y in zip(numpy_path[:2], kernels[:2], strict=True):
        assert same_bits(x, y)
    assert numpy_path[2] == kernels[2]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1), b=st.integers(1, 50), width=st.integers(1, 40), outcomes=st.integers(2, 30),
    full=st.booleans(),
)
def test_outcomes_of_flat_uniforms_are_the_padded_ones(monkeypatch, seed, b, width, outcomes, full):
    """Flat uniforms with row offsets (how RunBatch hands them over) give the padded rows' outcomes on both paths.

    Rows of mixed sizes at scattered offsets, or every row full and in order (the no-gather case).
    """
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(rng.dirichlet(np.full(outcomes, 0.5), size=b), axis=1)
    cdf[:, -1] = 1.0
    n = np.full(b, width) if full else rng.integers(1, width + 1, b)
    gap = np.zeros(b, dtype=np.int64) if full else rng.integers(0, 3, b)  # other values between rows
    start = np.cumsum(n + gap) - n
    flat = rng.random(int(start[-1] + n[-1]) + 2)
    flat[::4] = cdf[0, 0]  # on a threshold
    padded = np.zeros((b, int(n.max())))
    for i in range(b):
        padded[i, : n[i]] = flat[start[i] : start[i] + n[i]]
    monkeypatch.setenv(_jit.ENV_VAR, "0")
    want = _outcomes(padded, cdf, n)
    for got in both(monkeypatch, _outcomes, flat, cdf, n, start):
        for x, y in zip(got[:2], want[:2], strict=True):
            assert same_bits(x, y)
        assert got[2] == want[2]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1), b=st.integers(1, 60), width=st.integers(1, 40), a=st.sampled_from([1, 2, 5, 9]),
    runs=st.integers(1, 3), weighting=st.sampled_from(["block", "query"]),
)
def test_tallies_of_a_pending_draw_are_those_of_its_outcomes(monkeypatch, seed, b, width, a, runs, weighting):
    """Pulls whose outcomes are left to the compiled tally (``pending_draw``): the tallies of the materialised pulls.

    The same uniforms drawn into MV pulls by ``draw_pulls`` with the kernels (lazy outcomes, read by
    the tally kernel in place) and without (numpy outcomes); the lazy pulls' ``outcome`` and
    ``mask`` on first access equal the numpy ones.
    """
    from iapo_gym.sampling import draw_pulls
    from iapo_gym.tables.testing import example_table

    rng = np.random.default_rng(seed)
    table = example_table("mv", seed=seed, n_prompts=3, n_queries=5, n_outcomes=a, n_max=40)
    n = rng.integers(1, width + 1, b)
    start = np.cumsum(n + rng.integers(0, 2, b)) - n
    u = rng.random(int(start[-1] + n[-1]))
    thresholds = np.cumsum(table.mv_arrays()[0], axis=-1).ravel()
    if (thresholds < 1.0).any():
        u[::3] = rng.choice(thresholds[thresholds < 1.0], u[::3].size)  # uniforms on the thresholds
    prompt, query = rng.integers(0, 3, b), rng.integers(0, 5, b)
    run = rng.integers(0, runs, b)
    contexts = contexts_of([[1.0, 0.0], [0.5, 1.0]])

    def tallies():  # noqa: ANN202
        pulls = draw_pulls(table, prompt, query, n, u, start)
        lazy = pulls.pending_draw is not None
        stats = _engine.NestedStats(runs, 3, 40, contexts, weighting=weighting)
        stats.add(pulls, run)
        return lazy, stats.gain, stats.cost, stats.count, pulls.outcome, pulls.mask

    numpy_path, kernels = both(monkeypatch, tallies)
    assert not numpy_path[0] and kernels[0]  # the kernels' pulls left their outcomes to the tally
    for x, y in zip(numpy_path[1:], kernels[1:], strict=True):
        assert same_bits(x, y)


def random_bon_pulls(
    rng: np.random.Generator, b: int, width: int, k: int, n_prompts: int, unit: bool, spread: int
) -> Pulls:
    """Best-of-N pulls of mixed sizes whose values span ``2 ** -spread .. 4``, both signs and signed zeros.

    A wide spread makes the per-size float sums depend on their order of addition (a tiny score
    added to a large partial sum is lost, to a tiny one kept), so a kernel that sums in another
    order than numpy's ``reduceat`` gets other bits.
    """
    n = np.full(b, width) if rng.random() < 0.3 else rng.integers(1, width + 1, b)
    mask = np.arange(width)[None, :] < n[:, None]
    values = rng.random((b, width, k)) * 2.0 ** rng.integers(-spread, 3, (b, width, k))
    values *= np.where(rng.random(values.shape) < 0.3, -1.0, 1.0)
    values[rng.random(values.shape) < 0.05] = -0.0
    values = np.where(mask[:, :, None], values, 0.0)
    outcome = np.where(mask, 0, -1)
    prompt = rng.integers(0, n_prompts, b)
    query, gold = np.zeros(b, dtype=np.int64), np.full(b, -1)
    if unit:
        return Pulls("bon", prompt, n, query, outcome, values, None, gold, mask, 4, unit_cost=rng.random(b) * 3)
    return Pulls("bon", prompt, n, query, outcome, values, np.where(mask, rng.random((b, width)), 0.0), gold, mask, 4)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    width=st.one_of(st.integers(1, 40), st.sampled_from([127, 128, 129, 136, 137, 257, 300, 520, 1000])),
    k=st.integers(1, 4),
    n_max_frac=st.floats(0.05, 1.2),
    runs=st.integers(1, 4),
    unit=st.booleans(),
    spread=st.sampled_from([2, 60]),
    dead=st.sampled_from([0.0, 0.0, 0.4, 0.9]),
    n_rows=st.integers(1, 4),
    grouped=st.booleans(),
)
def test_bon_block_tallies_are_the_numpy_bits(
    monkeypatch, seed, width, k, n_max_frac, runs, unit, spread, dead, n_rows, grouped
):
    """Best-of-N ``"block"`` tallies (``_bon_block_add_kernel``): gain, cost, count the numpy path's bytes.

    Widths 1..1000 (per-size sums of 1..1000 blocks: numpy's pairwise sum below 8 terms, with 8
    accumulators up to 128, split above), pulls wider than ``n_max``, 1-4 objectives (4: the numpy
    path, its einsum sums otherwise), several objective rows with negative and zero weights, one
    pull per cell and several (in any order, or each cell's consecutive: one accumulator row), live
    arms, two batches on existing tallies.
    """
    rng = np.random.default_rng(seed)
    n_prompts = 3
    b = int(rng.integers(1, 70 if width <= 40 else 8))
    n_max = max(1, int(width * n_max_frac))
    batches = [random_bon_pulls(rng, b, width, k, n_prompts, unit, spread) for _ in range(2)]
    run_of = [rng.integers(0, runs, b) for _ in range(2)]
    if grouped:  # and summed in one rolling row, however few the cells
        batches, run_of = map(list, zip(*(cells_in_order(p, r) for p, r in zip(batches, run_of, strict=True)), strict=True))
        monkeypatch.setattr(_engine, "ROLLING_MIN_VALUES", 0)
    w = rng.random((n_rows, k + 1)) * np.where(rng.random((n_rows, k + 1)) < 0.3, -1.0, 1.0)
    w[rng.random(w.shape) < 0.1] = 0.0
    w[:, -1] = np.abs(w[:, -1])
    contexts = contexts_of(w.tolist())
    live = rng.random((runs, n_prompts, n_max)) >= dead if dead else None

    def tallies():  # noqa: ANN202
        stats = _engine.NestedStats(runs, n_prompts, n_max, contexts)
        for pulls, run in zip(batches, run_of, strict=True):
            stats.add(pulls, run, live=live)
        return stats.gain, stats.cost, stats.count

    numpy_path, kernels = both(monkeypatch, tallies)
    for x, y in zip(numpy_path, kernels, strict=True):
        assert same_bits(x, y)
    assert kernels[2].sum() > 0 or live is not None


def pairwise_sum(x: list[float], split: int = 128) -> float:
    """numpy's pairwise summation (``loops_utils.h.src``), in Python: the order the kernel must reproduce."""
    n = len(x)
    if n < 8:
        total = 0.0
        for v in x:
            total += v
        return total
    if n <= split:
        r = x[:8]
        i = 8
        while i < n - n % 8:
            r = [r[j] + x[i + j] for j in range(8)]
            i += 8
        total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for v in x[i:]:
            total += v
        return total
    half = n // 2 - (n // 2) % 8
    return pairwise_sum(x[:half], split) + pairwise_sum(x[half:], split)


@pytest.mark.parametrize("width", [20, 200, 1000])
def test_bon_size_sums_follow_numpy_pairwise_order(monkeypatch, width):
    """Per-size sums of one wide pull: numpy's ``reduceat`` is the first block plus numpy's pairwise sum of the rest.

    Scores spread over 2**-60 .. 4 (so the order of addition shows in the bits): the numpy path
    equals that reference for every size, the kernel equals the numpy path, and a running sum,
    or a pairwise sum that never splits, would differ for some size -- the test tells them apart.
    """
    rng = np.random.default_rng(width)
    score = (rng.random(width) * 2.0 ** rng.integers(-60, 3, width)).astype(np.float32).astype(np.float64)
    pulls = Pulls("bon", np.zeros(1, dtype=np.int64), np.array([width]), np.zeros(1, dtype=np.int64),
                  np.zeros((1, width), dtype=np.int64), score[None, :, None], None, np.full(1, -1),
                  np.ones((1, width), dtype=bool), 1, unit_cost=np.ones(1))  # fmt: skip

    def gains():  # noqa: ANN202
        stats = _engine.NestedStats(1, 1, width, contexts_of([[1.0, 0.0]]))
        stats.add(pulls, np.zeros(1, dtype=np.int64))
        return stats.gain[0, 0, 0]

    numpy_path, kernels = both(monkeypatch, gains)
    assert same_bits(numpy_path, kernels)
    others = {"running": False, "unsplit": False}
    for k in range(1, width + 1):
        best = [float(score[i * k : i * k + k].max()) for i in range(width // k)]
        assert numpy_path[k - 1] == best[0] + pairwise_sum(best[1:]), k
        running = best[0]
        for v in best[1:]:  # left to right (not sum(): Python 3.12 compensates float sums)
            running += v
        others["running"] |= numpy_path[k - 1] != running
        others["unsplit"] |= numpy_path[k - 1] != best[0] + pairwise_sum(best[1:], split=10**9)
    assert others["running"]
    assert others["unsplit"] == (width > 129)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), b=st.integers(1, 40), width=st.integers(1, 40), worlds=st.integers(1, 4))
def test_bon_values_of_the_draw_are_the_numpy_values(monkeypatch, seed, b, width, worlds):
    """Best-of-N pulls drawn from one table and from one world per run: the same outcomes, mask, values (0.0 past n), costs."""
    from iapo_gym.sampling import draw_pulls, draw_pulls_worlds
    from iapo_gym.tables.testing import example_table

    rng = np.random.default_rng(seed)
    tables = [example_table("bon", seed=seed + i, n_prompts=3, n_queries=5, n_outcomes=6, n_max=40) for i in range(worlds)]
    n = rng.integers(1, width + 1, b)
    start = np.cumsum(n) - n
    u = rng.random(int(n.sum()))
    prompt, query = rng.integers(0, 3, b), rng.integers(0, 5, b)
    bounds = np.unique(np.r_[0, np.sort(rng.integers(0, b, worlds - 1))])

    def draws():  # noqa: ANN202
        one = draw_pulls(tables[0], prompt, query, n, u, start)
        many = draw_pulls_worlds(tables[: bounds.size], bounds, prompt, query + 7, query, n, u, start)
        return one.outcome, one.values, many.outcome, many.mask, many.values, many.unit_cost, many.query

    numpy_path, kernels = both(monkeypatch, draws)
    for x, y in zip(numpy_path, kernels, strict=True):
        assert same_bits(x, y)
    # one kernel call over the batch's listed worlds (segment j from world world_of[j], any order): the same pulls
    from iapo_gym.sampling import WorldArrays

    order = rng.permutation(worlds)[: bounds.size]
    listed = draw_pulls_worlds(
        [tables[w] for w in order], bounds, prompt, query + 7, query, n, u, start, WorldArrays.of(tables), order
    )
    monkeypatch.setenv(_jit.ENV_VAR, "0")
    want = draw_pulls_worlds([tables[w] for w in order], bounds, prompt, query + 7, query, n, u, start)
    for x, y in zip(
        (want.outcome, want.mask, want.values, want.unit_cost, want.query),
        (listed.outcome, listed.mask, listed.values, listed.unit_cost, listed.query),
        strict=True,
    ):
        assert same_bits(x, y)


def test_ranked_means_are_means_at(monkeypatch):
    """The halving's means of active arms: the kernel's are means_at's bits, NaN (unseen) ranked UNSEEN."""
    rng = np.random.default_rng(5)
    contexts = contexts_of([[1.0, 0.0], [1.0, 0.3], [0.5, 1.0]])
    stats = _engine.NestedStats(4, 5, 6, contexts)
    monkeypatch.setenv(_jit.ENV_VAR, "0")
    stats.add(random_pulls(rng, 60, 6, 3, 5, True), rng.integers(0, 4, 60))
    idx = np.sort(rng.permuted(np.tile(np.arange(30), (12, 1)), axis=1)[:, :9], axis=1)
    row = np.arange(12)[:, None]
    want = stats.means_at(row // 3, row % 3, idx)
    assert np.isnan(want).any()  # some arms unseen
    want = np.where(np.isnan(want), _common.UNSEEN, want)
    monkeypatch.setenv(_jit.ENV_VAR, "1")
    assert same_bits(stats.ranked_means(idx, 3, _common.UNSEEN), want)



@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), runs=st.integers(1, 5), levels=st.integers(1, 4), empty=st.booleans())
def test_halving_and_best_arms_of_uneven_rows_are_the_numpy_ones(monkeypatch, seed, runs, levels, empty):
    """Rows with different numbers of active arms (some runs halved, some not): ``halve`` and ``best_arms_of`` agree.

    The compiled path ranks each group of rows by ``ranked_means`` of named (run, context) rows;
    the numpy path by ``means_at`` and by every arm's mean. Unseen arms, ties of equal means
    (arms never pulled in a run share NaN, ranked ``UNSEEN``), and rows without active arms.
    """
    rng = np.random.default_rng(seed)
    contexts = contexts_of([[1.0, 0.0], [1.0, 0.3], [0.5, 1.0]])
    monkeypatch.setenv(_jit.ENV_VAR, "0")
    stats = _engine.NestedStats(runs, 5, 6, contexts)
    stats.add(random_pulls(rng, 40, 6, 3, 5, True), rng.integers(0, runs, 40))
    active = rng.random((runs, 3, 30)) < rng.choice([0.2, 0.5, 1.0], (runs, 3, 1)) ** levels
    if empty:
        active[0, 0] = False
    trimmed = rng.random(runs) < 0.7

    def decide():  # noqa: ANN202
        act = active.copy()
        best = _common.best_arms_of(act, stats)
        _common.halve(act, stats, trimmed)
        return best, act, _common.best_arms_of(act, stats)

    numpy_path, kernels = both(monkeypatch, decide)
    for x, y in zip(numpy_path, kernels, strict=True):
        assert same_bits(x, y)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1), runs=st.integers(1, 4), n_max=st.integers(1, 40), spread=st.sampled_from([0, 1, 3, 1000]),
    start=st.sampled_from(["all", "some", "topk"]),
)
def test_compact_halving_makes_halve_s_decisions(monkeypatch, seed, runs, n_max, spread, start):
    """:class:`CompactHalving` (one compiled pass per halving) trims, unions and deploys as ``halve`` / ``best_arms_of``.

    Several halvings of random subsets of runs, rows that start full, partly active or empty,
    means with many ties (``spread`` distinct gains: 0 -> every seen arm ties; the threshold falls
    inside a tie) and unseen arms; rows wide enough for the bucket pass and narrow ones.
    """
    rng = np.random.default_rng(seed)
    contexts = contexts_of([[1.0, 0.0], [1.0, 0.3], [0.5, 1.0], [0.5, 0.0]])
    c_n, p_n = 4, 5
    n_arms = p_n * n_max
    stats = _engine.NestedStats(runs, p_n, n_max, contexts)
    stats.gain[...] = rng.integers(0, spread + 1, stats.gain.shape) * 0.25
    stats.cost[...] = rng.integers(0, 3, stats.cost.shape) * 0.5
    stats.count[...] = rng.integers(0, 4, stats.count.shape)  # 0: unseen (NaN mean): no gain, no cost, as tallies hold
    stats.gain *= stats.count[:, None] > 0
    stats.cost *= stats.count > 0
    if start == "all":
        active = np.ones((runs, c_n, n_arms), dtype=bool)
    elif start == "some":
        active = rng.random((runs, c_n, n_arms)) < rng.choice([0.0, 0.3, 1.0], (runs, c_n, 1))
    else:  # Top-K: whole prompts per context
        active = np.repeat(rng.random((runs, c_n, p_n)) < 0.5, n_max, axis=-1)
    trims = [rng.random(runs) < 0.7 for _ in range(6)]

    def numpy_path():  # noqa: ANN202
        act = active.copy()
        lives = []
        for t in trims:
            _common.halve(act, stats, t)
            lives.append(act.any(axis=1))
        return act, lives, _common.best_arms_of(act, stats), np.count_nonzero(act, axis=-1)

    monkeypatch.setenv(_jit.ENV_VAR, "0")
    want_act, want_lives, want_best, want_n = numpy_path()
    monkeypatch.setenv(_jit.ENV_VAR, "1")
    act = active.copy()
    compact = _common.CompactHalving(act, stats)
    assert same_bits(compact.live, active.any(axis=1))
    for t, live in zip(trims, want_lives, strict=True):
        compact.halve(t)
        assert same_bits(compact.live, live)
    best, n_active = compact.best_arms()
    compact.sync()
    assert same_bits(act, want_act)
    assert same_bits(best, want_best)
    assert same_bits(n_active, want_n)


def test_kth_key_finds_every_rank_among_ties_and_unseen():
    """The bucketed selection gives the k-th smallest of keys with ties, UNSEEN, one value, and a huge spread."""
    kth_key = _common._kth_key
    rng = np.random.default_rng(3)
    cases = [
        rng.random(300),
        np.round(rng.random(257) * 4) / 4,  # five values
        np.full(64, 0.5),
        np.where(rng.random(100) < 0.3, _common.UNSEEN, rng.random(100)),
        np.full(10, _common.UNSEEN),
        np.array([1e308, -1e308, 0.0, 3.0, -2.0]),
        np.array([2.0, 1.0]),
    ]
    for key in cases:
        n = key.size
        ordered = np.sort(key)
        for want in range(n):
            x, above, equal = kth_key(key.copy(), n, want, np.empty(n), np.empty(n, np.int64), np.empty(n // 2 + 1, np.int64))
            assert x == ordered[want]
            assert above == np.count_nonzero(key > x) and equal == np.count_nonzero(key == x)


# ------------------------------------------------------------------------------ whole policies
AGENTS = ("psst", "topk4", "seqhalving", "psst_paired", "topk_paired", "psst_model", "uniform", "triple_n1")


def policies(monkeypatch: pytest.MonkeyPatch, task: str, agent: str, budget: int, batches: list[list[int]]) -> dict:
    """``{flag: {seed: fingerprint}}`` of every seed of ``batches`` (each fitted as one batch) on both paths."""
    from iapo_gym.agents import make_agent

    make_env = make_envs(task)
    out: dict[str, dict[int, str]] = {}
    for flag in ("0", "1"):
        monkeypatch.setenv(_jit.ENV_VAR, flag)
        prints: dict[int, str] = {}
        for seeds in batches:
            for seed, policy in zip(seeds, make_agent(agent).fit_many(make_env, budget, seeds), strict=True):
                env = make_env(seed)
                got = fingerprint(policy, env.contexts.weights, env.n_prompts * env.n_max)
                assert prints.setdefault(seed, got) == got, f"seed {seed} depends on its batch ({flag=})"
        out[flag] = prints
    return out


@pytest.mark.parametrize("agent", AGENTS)
@pytest.mark.parametrize(
    ("task", "budget"), [("MATH", 5_000), ("SynthBernoulli", 3_000), ("SmolArith", 1_500), ("SynthCategorical", 4_000)]
)
def test_policies_are_identical_with_and_without_the_kernels(monkeypatch, agent, task, budget):
    """Every seed's policy is the same bits on both paths, alone, in a batch and in another batch order."""
    if task == "MATH" and load_math() is None:
        pytest.skip("the released MATH table is absent (../shared/data/published/MATH_final.pkl)")
    prints = policies(monkeypatch, task, agent, budget, [[0, 1, 2, 3, 4], [3, 0], [2]])
    assert prints["0"] == prints["1"]
    assert len(set(prints["1"].values())) > 1  # the fingerprints tell seeds apart


def test_psst_at_a_large_budget_is_identical(monkeypatch):
    """MATH at T = 50,000 (wide pulls, several calls per round), PSST: both paths, same policies."""
    if load_math() is None:
        pytest.skip("the released MATH table is absent (../shared/data/published/MATH_final.pkl)")
    prints = policies(monkeypatch, "MATH", "psst", 50_000, [[0, 1, 2, 3, 4, 5]])
    assert prints["0"] == prints["1"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    a=st.integers(1, 9),
    n_max=st.integers(1, 40),
    zeros=st.integers(0, 8),
    seed=st.integers(0, 2**31 - 1),
)
def test_mv_credit_kernel_is_the_numpy_recursion(monkeypatch, a, n_max, zeros, seed):
    """The oracle's exact MV credit per gold-first row: the compiled recursion gives numpy's bits.

    Rows with answers of probability 0 (the kernel stops its recursion at the last positive one),
    one-hot rows, uniform rows (ties of every size) and coarse rows of 1/128 multiples (the
    released tables' grid).
    """
    from iapo_gym import oracle

    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(a, 0.6), size=40)
    probs[:10, a - min(zeros, a - 1) :] = 0.0  # trailing zero-probability answers
    probs[10] = 0.0
    probs[10, 0] = 1.0  # one-hot
    probs[11] = 1.0 / a  # uniform: every tie size
    probs[12:20] = np.floor(probs[12:20] * 128) + 1.0
    probs /= probs.sum(axis=1, keepdims=True)
    rows = oracle._gold_first(probs, rng.integers(0, a, size=40))
    numpy_rows, kernel_rows = both(monkeypatch, oracle._mv_credit_unique, rows, n_max)
    assert same_bits(numpy_rows, kernel_rows)
    numpy_all, kernel_all = both(monkeypatch, oracle.mv_credit, probs, rng.integers(0, a, size=40), n_max)
    assert same_bits(numpy_all, kernel_all)


def test_psst_model_count_kernel_adds_what_bincount_adds():
    """psst_model's per-completion count update: the in-place kernel and the numpy bincount give the same counts."""
    from iapo_gym.agents.psst_model import _add_counts

    rng = np.random.default_rng(5)
    counts = rng.integers(0, 50, size=(3, 4, 7, 5)).astype(np.int32)
    flat = rng.integers(0, counts.size, size=2_000)
    flat[:300] = flat[0]  # many completions in one cell
    want = counts.copy()
    want.reshape(-1)[:] += np.bincount(flat, minlength=counts.size).astype(np.int32)
    _add_counts(counts.reshape(-1), flat)
    assert same_bits(counts, want)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1), runs=st.integers(1, 6), prompts=st.integers(1, 5), n_max=st.integers(1, 9),
    live=st.floats(0.0, 1.0), last=st.booleans(),
)
def test_maximal_arms_rows_are_the_numpy_rows(monkeypatch, seed, runs, prompts, n_max, live, last):
    """PSST's allocation (Eq. 6) from the compiled pass: the same lambda and rows, dead prompts and runs included."""
    from types import SimpleNamespace

    from iapo_gym.agents._rounds import MaximalArms
    from iapo_gym.runs import RunStreams

    rng = np.random.default_rng(seed)
    active = rng.random((runs, 2, prompts * n_max)) < live
    avail = rng.integers(0, 4 * prompts * n_max, size=(runs, 1))

    def plan():  # noqa: ANN202
        batch = SimpleNamespace(n_runs=runs, n_max=n_max, streams=RunStreams(list(range(runs)), "t"))
        units, rows = MaximalArms(batch, object(), active.copy()).plan(avail, last)  # type: ignore[arg-type]
        return units, rows.run, rows.prompt, rows.n

    numpy_path, kernels = both(monkeypatch, plan)
    if last:  # the numpy path appends the extra pulls; the compiled one puts each run's after its other rows
        order = np.argsort(numpy_path[1], kind="stable")
        numpy_path = (numpy_path[0], *(x[order] for x in numpy_path[1:]))
        assert bool(np.all(np.diff(kernels[1]) >= 0))  # run-major
    for x, y in zip(numpy_path, kernels, strict=True):
        assert x.dtype == y.dtype and same_bits(x, y)
    assert (np.bincount(kernels[1], weights=kernels[3], minlength=runs) <= avail[:, 0]).all()  # within each budget


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    b=st.integers(1, 300),
    n_runs=st.integers(1, 12),
    order=st.sampled_from(["increasing", "nondecreasing", "any", "out_of_range"]),
)
def test_row_scan_is_what_numpy_finds(seed, b, n_runs, order):
    """``_scan_rows`` (one compiled pass over a request): limits, order flags, per-run charges and segments as numpy's."""
    from iapo_gym.runs import _scan_rows

    rng = np.random.default_rng(seed)
    run = rng.integers(0, n_runs, b)
    if order == "increasing":
        run = np.unique(run)
    elif order == "nondecreasing":
        run = np.sort(run)
    elif order == "out_of_range":
        run[rng.integers(0, run.size)] = n_runs + int(rng.integers(0, 3))
    prompt = rng.integers(0, 7, run.size)
    n = rng.integers(1, 33, run.size)
    limits, increasing, charge, bounds, total = _scan_rows(run, prompt, n, n_runs)
    assert limits.tolist() == [run.min(), run.max(), prompt.min(), prompt.max(), n.min(), n.max()]
    assert increasing == bool(np.all(np.diff(run) > 0))
    if run.max() >= n_runs:
        assert not charge.any() and bounds.size == 0 and total.size == 0
        return
    assert charge.tolist() == np.bincount(run, weights=n, minlength=n_runs).astype(np.int64).tolist()
    if np.all(np.diff(run) >= 0):
        starts = np.concatenate(([0], np.flatnonzero(np.diff(run)) + 1))
        assert bounds.tolist() == starts.tolist()
        assert total.tolist() == np.add.reduceat(n, starts).tolist()
    else:
        assert bounds.size == 0 and total.size == 0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("layout", ["any", "grouped", "one_per_cell"])
def test_pulls_of_one_completion_are_the_numpy_bits(monkeypatch, seed, layout):
    """Calls whose pulls hold one completion each (TRIPLE's rounds; ``_one_completion_add_kernel``): the numpy tallies.

    Answers given or left to the kernel's draw (``pending_draw``), one pull per cell or several (in
    any order, or each cell's consecutive), a cost per pull or per completion, live arms or not,
    two objective rows (one negative), two batches on existing tallies; dead arms keep their bits.
    """
    from iapo_gym.sampling import draw_pulls
    from iapo_gym.tables.testing import example_table

    rng = np.random.default_rng(seed)
    runs, n_prompts, n_max, a = 3, 4, 8, int(rng.choice([2, 5]))
    contexts = contexts_of([[1.0, 0.0], [-2.0, 0.5]])
    table = example_table("mv", seed=seed, n_prompts=n_prompts, n_queries=6, n_outcomes=a, n_max=n_max)
    live = rng.random((runs, n_prompts, n_max)) >= 0.3 if seed % 2 else None
    batches = []
    for k in range(2):
        b = runs * n_prompts if layout == "one_per_cell" else int(rng.integers(20, 80))
        if layout == "one_per_cell":
            run, prompt = np.divmod(rng.permutation(b), n_prompts)
        else:
            run, prompt = rng.integers(0, runs, b), rng.integers(0, n_prompts, b)
            if layout == "grouped":
                o = np.lexsort((prompt, run))
                run, prompt = run[o], prompt[o]
        n = np.ones(b, dtype=np.int64)
        u = rng.random(b)
        if k == 0:  # given answers, a cost per completion
            pulls = random_pulls(rng, b, 1, a, n_prompts, unit=bool(seed % 3))
            pulls = Pulls("mv", prompt, n, pulls.query, pulls.outcome, None, None if pulls.unit_cost is not None else
                          pulls.cost, pulls.gold, pulls.mask, a, unit_cost=pulls.unit_cost)  # fmt: skip
            batches.append((lambda p=pulls: p, run))
        else:  # answers drawn in the kernel (pending) on the compiled path
            query = rng.integers(0, 6, b)
            batches.append((lambda p=prompt, q=query, n=n, u=u: draw_pulls(table, p, q, n, u, np.arange(n.size)), run))

    def tallies():  # noqa: ANN202
        stats = _engine.NestedStats(runs, n_prompts, n_max, contexts)
        for make, run in batches:
            stats.add(make(), run, live=live)
        return stats.gain, stats.cost, stats.count

    numpy_path, kernels = both(monkeypatch, tallies)
    for x, y in zip(numpy_path, kernels, strict=True):
        assert same_bits(x, y)
    assert kernels[2][:, :, 0].sum() > 0 and not kernels[2][:, :, 1:].any()  # size 1 only
