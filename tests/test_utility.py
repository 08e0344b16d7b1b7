"""Utilities of raw pulls: hand-computed BoN / MV / IA cases, nested blocks, a property test."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iapo_gym.sampling import Pulls
from iapo_gym.utility import block_utilities, ia_utility, nested_sums, utility


def mv_pulls(rows: list[list[int]], gold: list[int], cost: list[float], n_categories: int = 5) -> Pulls:
    """MV pulls from ragged answer lists (padded with -1)."""
    width = max(len(r) for r in rows)
    b = len(rows)
    outcome = np.full((b, width), -1, dtype=np.int64)
    mask = np.zeros((b, width), dtype=bool)
    for i, r in enumerate(rows):
        outcome[i, : len(r)] = r
        mask[i, : len(r)] = True
    g = np.asarray(gold, dtype=np.int64)
    values = np.where(mask, (outcome == g[:, None]).astype(float), 0.0)[..., None]
    c = np.where(mask, np.asarray(cost, dtype=float)[:, None], 0.0)
    n = mask.sum(1).astype(np.int64)
    return Pulls("mv", np.zeros(b, np.int64), n, np.zeros(b, np.int64), outcome, values, c, g, mask, n_categories)


def bon_pulls(vals: list[list[list[float]]], cost: list[list[float]]) -> Pulls:
    """BoN pulls from ragged per-completion objective vectors."""
    width = max(len(r) for r in vals)
    b, k = len(vals), len(vals[0][0])
    values = np.zeros((b, width, k))
    c = np.zeros((b, width))
    mask = np.zeros((b, width), dtype=bool)
    outcome = np.full((b, width), -1, dtype=np.int64)
    for i, r in enumerate(vals):
        values[i, : len(r)] = r
        c[i, : len(r)] = cost[i]
        mask[i, : len(r)] = True
        outcome[i, : len(r)] = np.arange(len(r))
    n = mask.sum(1).astype(np.int64)
    z = np.zeros(b, np.int64)
    return Pulls("bon", z, n, z, outcome, values, c, np.full(b, -1, np.int64), mask, 8)


MV_W = np.array([[1.0, 0.0], [1.0, 0.5], [2.0, 1.0]])


def test_mv_credit_unique_plurality_tie2_tie3_and_miss():
    pulls = mv_pulls(
        [
            [0, 0, 1],  # gold unique plurality -> 1
            [0, 1, 1, 0],  # tie of 2 with gold -> 1/2
            [0, 1, 2],  # tie of 3 with gold -> 1/3
            [1, 1, 0],  # gold loses -> 0
            [2, 2, 1, 1, 3],  # tie of 2 without gold -> 0
            [3],  # single vote for gold 3 -> 1
        ],
        gold=[0, 0, 0, 0, 0, 3],
        cost=[0.1, 0.2, 0.3, 0.1, 0.0, 1.0],
    )
    u = utility(pulls, MV_W)
    credit = np.array([1.0, 0.5, 1 / 3, 0.0, 0.0, 1.0])
    total_cost = np.array([0.3, 0.8, 0.9, 0.3, 0.0, 1.0])
    np.testing.assert_allclose(u[0], credit)
    np.testing.assert_allclose(u[1], credit - 0.5 * total_cost)
    np.testing.assert_allclose(u[2], 2 * credit - total_cost)


def test_mv_padding_is_ignored():
    # Row 0 has padding positions whose (garbage) outcomes would flip the vote if counted.
    pulls = mv_pulls([[0, 1, 0], [1, 1, 1, 1, 1]], gold=[0, 0], cost=[1.0, 1.0])
    outcome = pulls.outcome.copy()
    outcome[0, 3:] = 1
    cost = pulls.cost.copy()
    cost[0, 3:] = 7.0
    garbled = Pulls(
        "mv", pulls.prompt, pulls.n, pulls.query, outcome, pulls.values, cost, pulls.gold, pulls.mask, 5
    )
    u = utility(garbled, [1.0, 1.0])
    np.testing.assert_allclose(u, [[1.0 - 3.0, 0.0 - 5.0]])


def test_bon_max_over_weights_and_cost():
    pulls = bon_pulls(
        [[[1.0, 0.0], [0.0, 1.0], [0.4, 0.4]], [[0.2, 0.9]]],
        cost=[[0.5, 0.5, 1.0], [2.0]],
    )
    w = np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.25], [0.5, 0.5, 1.0]])
    u = utility(pulls, w)
    expected = np.array(
        [
            [0.9, 0.9 * 0.2 + 0.1 * 0.9],
            [0.9 - 0.25 * 2.0, 0.02 + 0.81 - 0.25 * 2.0],
            [0.5 - 2.0, 0.55 - 2.0],
        ]
    )
    np.testing.assert_allclose(u, expected)


def test_ia_utility_means_per_completion():
    pulls = bon_pulls([[[1.0, 0.0], [0.0, 1.0], [0.4, 0.4]]], cost=[[0.5, 0.5, 1.0]])
    u = ia_utility(pulls, [[0.9, 0.1, 0.5]])
    per = np.array([0.9 - 0.25, 0.1 - 0.25, 0.4 - 0.5])
    np.testing.assert_allclose(u, [[per.mean()]])
    mv = mv_pulls([[0, 1, 0, 2]], gold=[0], cost=[0.5])
    np.testing.assert_allclose(ia_utility(mv, [2.0, 1.0]), [[2.0 * 0.5 - 0.5]])


def test_block_utilities_and_nested_sums_by_hand():
    pulls = mv_pulls([[0, 1, 0, 0, 1, 1, 0], [1, 0]], gold=[0, 0], cost=[1.0, 1.0])
    w = [[1.0, 0.1]]
    vals, real = block_utilities(pulls, w, 2)
    # J = 7 // 2 = 3 blocks; row 0: [0,1] tie2 -> .5, [0,0] -> 1, [1,1] -> 0; row 1: [1,0] -> .5
    np.testing.assert_array_equal(real, [[True, True, True], [True, False, False]])
    np.testing.assert_allclose(vals[0], [[0.5 - 0.2, 1.0 - 0.2, 0.0 - 0.2], [0.5 - 0.2, 0.0, 0.0]])
    sums, counts = nested_sums(pulls, w, 8)
    np.testing.assert_array_equal(counts, [[7, 3, 2, 1, 1, 1, 1, 0], [2, 1, 0, 0, 0, 0, 0, 0]])
    # k = 3: blocks [0,1,0] -> 1, [0,1,1] -> 0; k = 7: the whole pull (4 zeros vs 3 ones) -> 1
    assert sums[0, 0, 2] == pytest.approx(1.0 + 0.0 - 0.6)
    assert sums[0, 0, 6] == pytest.approx(1.0 - 0.7)
    assert sums[0, 0, 0] == pytest.approx(4.0 - 0.7)
    assert sums[0, 1, 1] == pytest.approx(0.5 - 0.2)
    assert sums[0, 1, 2] == 0.0 and sums[0, 0, 7] == 0.0


def test_weights_are_validated():
    pulls = mv_pulls([[0]], gold=[0], cost=[1.0])
    with pytest.raises(ValueError, match="shape"):
        utility(pulls, [[1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="magnitude"):
        utility(pulls, [[1.0, -0.2]])


@st.composite
def random_pulls(draw):
    strategy = draw(st.sampled_from(["mv", "bon"]))
    b = draw(st.integers(1, 6))
    width = draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    n = rng.integers(0, width + 1, size=b)
    n[0] = width
    mask = np.arange(width)[None, :] < n[:, None]
    a = 4
    outcome = np.where(mask, rng.integers(0, a, size=(b, width)), -1)
    cost = np.where(mask, rng.uniform(0.5, 1.5, size=(b, 1)), 0.0)
    z = np.zeros(b, np.int64)
    if strategy == "mv":
        gold = rng.integers(0, a, size=b)
        values = (outcome == gold[:, None]).astype(float)[..., None] * mask[..., None]
    else:
        gold = np.full(b, -1)
        values = np.where(mask[..., None], rng.uniform(0, 1, size=(b, width, 2)), 0.0)
    pulls = Pulls(strategy, z, n.astype(np.int64), z, outcome.astype(np.int64), values, cost, gold.astype(np.int64), mask, a)
    k = values.shape[2]
    weights = np.concatenate([rng.uniform(0, 1, size=(3, k)), rng.uniform(0, 1, size=(3, 1))], axis=1)
    return pulls, weights


@settings(max_examples=60, deadline=None)
@given(random_pulls())
def test_block_of_full_width_equals_utility(case):
    pulls, w = case
    vals, real = block_utilities(pulls, w, pulls.width)
    full = utility(pulls, w)
    assert vals.shape == (3, len(pulls), 1)
    is_full = pulls.n == pulls.width
    np.testing.assert_array_equal(real[:, 0], is_full)
    np.testing.assert_allclose(vals[:, is_full, 0], full[:, is_full])
    # and k = n for every pull separately (a pull's own size is one block of itself)
    sums, counts = nested_sums(pulls, w, pulls.width)
    for b in np.flatnonzero(pulls.n > 0):
        assert counts[b, pulls.n[b] - 1] == 1
        np.testing.assert_allclose(sums[:, b, pulls.n[b] - 1], full[:, b])
