"""The public conformance check for tables."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import iapo_gym.tables as tables
from iapo_gym.tables.testing import assert_tables_equal, check_table, check_table_dir, example_table


@pytest.mark.parametrize("strategy", ["mv", "bon"])
@pytest.mark.parametrize("seed", [0, 1])
def test_example_tables_conform(strategy: str, seed: int) -> None:
    table = example_table(strategy, seed=seed)
    check_table(table)
    assert table.strategy == strategy and table.n_queries == 10
    assert (table.split == 1).sum() == 2


def test_released_math_conforms(math_pickle: Path) -> None:
    check_table(tables.import_released(math_pickle))


def test_invalid_table_fails_the_check() -> None:
    table = example_table("mv")
    bad = replace(table, answer_probs=table.answer_probs * 2)
    with pytest.raises(tables.TableError, match="answer_probs: rows must sum to 1"):
        check_table(bad)


def test_round_trip_loss_is_reported() -> None:
    """A provenance value JSON cannot keep (a tuple comes back as a list) fails the round trip."""
    table = replace(example_table("bon"), provenance={"sampling": (0.7, 0.95)})
    with pytest.raises(tables.TableError, match="provenance: differs after the round trip"):
        check_table(table)


def test_assert_tables_equal_names_the_field() -> None:
    a = example_table("mv", seed=0)
    b = replace(a, cost=a.cost + 1e-3)
    with pytest.raises(tables.TableError, match="^cost: differs"):
        assert_tables_equal(a, b)
    c = replace(a, contexts=a.contexts.__class__(a.contexts.names, a.contexts.weights * 2))
    with pytest.raises(tables.TableError, match="^contexts: differ"):
        assert_tables_equal(a, c)


def test_check_table_dir(tmp_path: Path) -> None:
    path = tables.save_table(example_table("bon", seed=9), tmp_path / "t")
    loaded = check_table_dir(path)
    assert loaded.task == "Example-bon"
    np.testing.assert_array_equal(loaded.outcome_values, example_table("bon", seed=9).outcome_values)


def test_unknown_example_strategy() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'beam'"):
        example_table("beam")
