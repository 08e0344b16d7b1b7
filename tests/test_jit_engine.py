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
)
def test_block_tallies_are_the_numpy_bits(monkeypatch, seed, b, width, a, n_max, runs, unit, weights, weighting):
    """NestedStats.add (block and query weighting): gain, cost, count identical, over two batches on existing tallies.

    Covers: packed votes (few answers) and per-answer counts (40 answers), one answer, pulls wider
    than ``n_max``, one pull per cell and several, one cost per pull and per completion, negative
    objective weights (signed zeros), several objective-weight rows.
    """
    rng = np.random.default_rng(seed)
    n_prompts = 3
    batches = [random_pulls(rng, b, width, a, n_prompts, unit) for _ in range(2)]
    run_of = [rng.integers(0, runs, b) for _ in range(2)]
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
@pytest.mark.parametrize(("task", "budget"), [("MATH", 5_000), ("SynthBernoulli", 3_000), ("SmolArith", 1_500)])
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
