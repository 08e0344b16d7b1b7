"""Public conformance checks for outcome tables (run them on your own tables).

>>> from iapo_gym.tables.testing import check_table, example_table
>>> check_table(example_table("bon"))      # raises on the first problem, returns None when fine

:func:`check_table` validates a table (every check of :mod:`iapo_gym.tables.validation`) and
round-trips it through the on-disk format (:func:`~iapo_gym.tables.io.save_table` then
:func:`~iapo_gym.tables.io.load_table` in a temporary directory), asserting that every field comes
back equal. :func:`check_table_dir` does the same for a table directory on disk.
:func:`example_table` builds a small valid table of either strategy, a template for your own.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from iapo_gym.contexts import ContextSet, cost_contexts
from iapo_gym.tables.format import OutcomeTable
from iapo_gym.tables.io import load_table, save_table
from iapo_gym.tables.validation import TableError, validate_table

__all__ = ["assert_tables_equal", "check_table", "check_table_dir", "example_table"]

_ARRAY_FIELDS = ("objective_ranges", "cost", "split", "answer_probs", "gold", "outcome_values", "outcome_probs")
_PLAIN_FIELDS = ("task", "strategy", "prompts", "query_ids", "objectives", "n_max", "cost_unit", "provenance", "pool_size")


def assert_tables_equal(a: OutcomeTable, b: OutcomeTable) -> None:
    """Raise :class:`TableError` naming the first field in which two tables differ."""
    for name in _PLAIN_FIELDS:
        if getattr(a, name) != getattr(b, name):
            raise TableError(f"{name}: differs after the round trip ({getattr(a, name)!r} != {getattr(b, name)!r})")
    for name in _ARRAY_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if (x is None) != (y is None) or (x is not None and (x.shape != y.shape or not np.array_equal(x, y))):
            raise TableError(f"{name}: differs after the round trip")
    ca, cb = a.contexts, b.contexts
    if ca.names != cb.names or not np.array_equal(ca.weights, cb.weights) or not np.array_equal(ca.probs, cb.probs):
        raise TableError("contexts: differ after the round trip")


def check_table(table: OutcomeTable) -> None:
    """Validate ``table`` and check that it survives a save/load round trip unchanged.

    Raises:
        TableError: the first defect (validation) or the first field that the round trip changed.
    """
    validate_table(table)
    with tempfile.TemporaryDirectory(prefix="iapo-gym-check-") as tmp:
        path = save_table(table, Path(tmp) / "table")
        loaded = load_table(path)
    assert_tables_equal(table, loaded)


def check_table_dir(directory: str | Path) -> OutcomeTable:
    """Load a table directory (checksums, validation), run :func:`check_table` on it, return it."""
    table = load_table(directory)
    check_table(table)
    return table


def example_table(
    strategy: str = "mv",
    seed: int = 0,
    n_prompts: int = 3,
    n_queries: int = 10,
    n_outcomes: int = 4,
    n_max: int = 8,
) -> OutcomeTable:
    """A small valid table drawn from ``seed`` (MV: ``n_outcomes`` answer categories; BoN: 2 objectives).

    The first ``n_queries - n_queries // 5`` queries are train, the rest test.
    """
    rng = np.random.default_rng(seed)
    p, q, m = n_prompts, n_queries, n_outcomes
    probs = rng.dirichlet(np.ones(m), size=(p, q))
    n_test = max(q // 5, 1)
    split = np.r_[np.zeros(q - n_test, np.int8), np.ones(n_test, np.int8)]
    common = dict(
        task=f"Example-{strategy}",
        prompts=tuple(f"prompt-{i}" for i in range(p)),
        query_ids=tuple(f"q{j}" for j in range(q)),
        n_max=n_max,
        cost=np.broadcast_to(rng.uniform(0.5, 2.0, size=(p, 1)), (p, q)).copy(),
        split=split,
        cost_unit="tokens/1000",
        provenance={"generator": "iapo_gym.tables.testing.example_table", "seed": seed},
    )
    if strategy == "mv":
        return OutcomeTable(
            strategy="mv",
            objectives=("correct",),
            objective_ranges=np.array([[0.0, 1.0]]),
            contexts=cost_contexts({"low": 0.0, "mid": 0.05, "high": 0.2}),
            answer_probs=probs,
            gold=rng.integers(0, m, size=q),
            **common,
        )
    if strategy == "bon":
        return OutcomeTable(
            strategy="bon",
            objectives=("helpful", "harmless"),
            objective_ranges=np.array([[-1.0, 1.0], [-1.0, 1.0]]),
            contexts=ContextSet(("a", "b"), np.array([[0.3, 0.7, 0.0], [0.8, 0.2, 0.1]]), np.array([0.5, 0.5])),
            outcome_values=rng.uniform(-1.0, 1.0, size=(p, q, m, 2)),
            outcome_probs=probs,
            **common,
        )
    raise ValueError(f"unknown strategy {strategy!r}; use 'mv' or 'bon'")
