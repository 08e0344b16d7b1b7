"""OutcomeTable.with_contexts: the new table's oracle values are those of its own contexts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from iapo_gym import oracle
from iapo_gym.contexts import ContextSet
from iapo_gym.tables.testing import example_table


def _other_contexts(table) -> ContextSet:
    w = table.contexts.weights.copy()
    w[:, :-1] = w[:, :-1][:, ::-1]  # swap the objective weights
    w[:, -1] = w[:, -1] * 3 + 0.05
    return ContextSet(tuple(f"o{i}" for i in range(w.shape[0])), w)


def test_bon_values_are_recomputed_for_the_new_contexts():
    table = example_table("bon", seed=3, n_prompts=3, n_queries=12, n_max=5)
    before = oracle.q_values(table)  # fills the cache under the table's own contexts
    ctx = _other_contexts(table)
    moved = table.with_contexts(ctx)
    fresh = replace(table, contexts=ctx)  # a new table with an empty cache
    np.testing.assert_array_equal(oracle.q_values(moved), oracle.q_values(fresh))
    assert not np.allclose(oracle.q_values(moved), before)  # the stale values would be these
    np.testing.assert_array_equal(oracle.q_values(table), before)  # the original is untouched


def test_mv_credit_stays_shared_and_values_follow_the_new_contexts():
    table = example_table("mv", seed=1, n_prompts=3, n_queries=12, n_max=5)
    oracle.q_values(table)
    ctx = _other_contexts(table)
    moved = table.with_contexts(ctx)
    assert moved.cache["oracle/mv_credit"] is table.cache["oracle/mv_credit"]  # context-free: reused
    np.testing.assert_array_equal(oracle.q_values(moved), oracle.q_values(replace(table, contexts=ctx)))
