"""The vectorised completion sampler: frequencies, padding, determinism, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from iapo_gym.sampling import sample_pulls
from iapo_gym.tables.testing import example_table


@pytest.mark.parametrize("strategy", ["mv", "bon"])
def test_frequencies_match_table_probabilities(strategy: str) -> None:
    table = example_table(strategy, seed=3)
    rng = np.random.default_rng(11)
    B = 4000
    pulls = sample_pulls(table, np.zeros(B, int), np.ones(B, int), np.full(B, table.n_max), rng)
    probs = (table.answer_probs if strategy == "mv" else table.outcome_probs)[0, 1]
    freq = np.bincount(pulls.outcome.ravel(), minlength=probs.size) / pulls.outcome.size
    se = np.sqrt(probs * (1 - probs) / pulls.outcome.size)
    assert np.all(np.abs(freq - probs) <= 5 * se + 1e-12)


def test_padding_mask_values_and_cost() -> None:
    table = example_table("bon", seed=1)
    pulls = sample_pulls(table, np.array([0, 1]), np.array([2, 0]), np.array([1, 3]), np.random.default_rng(0), width=5)
    assert pulls.width == 5 and pulls.completions == 4
    np.testing.assert_array_equal(pulls.mask, [[1, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    assert np.all(pulls.outcome[~pulls.mask] == -1) and np.all(pulls.cost[~pulls.mask] == 0)
    np.testing.assert_allclose(pulls.cost[1, :3], table.cost[1, 0])
    np.testing.assert_array_equal(pulls.values[1, 2], table.outcome_values[1, 0, pulls.outcome[1, 2]])


def test_mv_values_mark_gold_answers() -> None:
    table = example_table("mv", seed=2)
    pulls = sample_pulls(table, np.zeros(50, int), np.arange(50) % table.n_queries, np.full(50, 4), np.random.default_rng(5))
    expected = (pulls.outcome == table.gold[pulls.query][:, None]) & pulls.mask
    np.testing.assert_array_equal(pulls.values[..., 0], expected.astype(float))


def test_same_seed_same_outcomes_different_seed_differs() -> None:
    table = example_table("mv", seed=0)
    args = (np.arange(64) % table.n_prompts, np.arange(64) % table.n_queries, np.full(64, table.n_max))
    a = sample_pulls(table, *args, np.random.default_rng(7)).outcome
    b = sample_pulls(table, *args, np.random.default_rng(7)).outcome
    c = sample_pulls(table, *args, np.random.default_rng(8)).outcome
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_arguments_are_named() -> None:
    table = example_table("mv", seed=0)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="N must lie in 1"):
        sample_pulls(table, [0], [0], [table.n_max + 1], rng)
    with pytest.raises(ValueError, match="query indices"):
        sample_pulls(table, [0], [table.n_queries], [1], rng)
    with pytest.raises(ValueError, match="width"):
        sample_pulls(table, [0], [0], [3], rng, width=2)


@pytest.mark.parametrize("strategy", ["mv", "bon"])
def test_draws_from_several_worlds_equal_draws_from_their_stack(strategy: str) -> None:
    """draw_pulls_worlds (each run's rows from its own world) == draw_pulls on the stacked worlds."""
    from iapo_gym.sampling import draw_pulls, draw_pulls_worlds
    from iapo_gym.tables.format import concat_queries

    worlds = [example_table(strategy, seed=s) for s in (1, 2, 3)]
    stack = concat_queries(worlds)
    rng = np.random.default_rng(5)
    rows = np.array([4, 1, 6])  # rows per world, world-major
    bounds = np.concatenate([[0], np.cumsum(rows)[:-1]])
    world = np.repeat(np.arange(3), rows)
    local = rng.integers(0, worlds[0].n_queries, rows.sum())
    offsets = np.concatenate([[0], np.cumsum([w.n_queries for w in worlds])[:-1]])
    prompt = rng.integers(0, worlds[0].n_prompts, rows.sum())
    n = rng.integers(1, worlds[0].n_max + 1, rows.sum())
    u = rng.random((rows.sum(), int(n.max())))
    got = draw_pulls_worlds(worlds, bounds, prompt, local + offsets[world], local, n, u)
    want = draw_pulls(stack, prompt, local + offsets[world], n, u)
    for name in ("outcome", "mask", "gold", "unit_cost", "query", "values", "cost"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert got.n_categories == want.n_categories and got.strategy == want.strategy
