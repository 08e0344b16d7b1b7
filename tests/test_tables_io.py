"""The on-disk format: round trips, raw sample pools, atomic writes."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from iapo_gym.tables.format import SCHEMA_VERSION
from iapo_gym.tables.io import (
    ARRAYS_FILE,
    MANIFEST_FILE,
    array_checksum,
    load_table,
    mv_probs_from_pool,
    save_table,
)
from iapo_gym.tables.testing import assert_tables_equal, example_table
from iapo_gym.tables.validation import TableError


@pytest.mark.parametrize("strategy", ["mv", "bon"])
def test_round_trip(tmp_path: Path, strategy: str) -> None:
    table = example_table(strategy, seed=3)
    path = save_table(table, tmp_path / "tables" / "ex")
    assert sorted(os.listdir(path)) == [ARRAYS_FILE, MANIFEST_FILE]
    assert sorted(os.listdir(tmp_path / "tables")) == ["ex"]  # no temporary left behind
    loaded = load_table(path)
    assert_tables_equal(table, loaded)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["task"] == f"Example-{strategy}" and manifest["strategy"] == strategy
    name = "answer_probs" if strategy == "mv" else "outcome_values"
    assert manifest["checksums"][name] == array_checksum(getattr(table, name))
    assert manifest["shapes"]["cost"] == [3, 10]
    with np.load(path / ARRAYS_FILE, allow_pickle=False) as npz:
        assert npz["split"].dtype == np.int8 and npz["cost"].dtype == np.float64


def test_round_trip_math(math_pickle: Path, tmp_path: Path) -> None:
    from iapo_gym.tables.importer import import_released

    table = import_released(math_pickle)
    loaded = load_table(save_table(table, tmp_path / "MATH"))
    assert_tables_equal(table, loaded)
    assert loaded.provenance["source_sha256"] == table.provenance["source_sha256"]
    np.testing.assert_array_equal(loaded.contexts.weights, [[1, 0], [1, 0.2], [1, 1]])


def test_overwrite(tmp_path: Path) -> None:
    first, second = example_table("mv", seed=1), example_table("mv", seed=2)
    path = save_table(first, tmp_path / "t")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_table(second, path)
    assert_tables_equal(first, load_table(path))
    save_table(second, path, overwrite=True)
    assert_tables_equal(second, load_table(path))
    assert sorted(os.listdir(tmp_path)) == ["t"]


class _Crash(Exception):
    pass


def test_crash_leaves_no_half_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = example_table("bon", seed=5)
    save_table(old, tmp_path / "existing")
    real_savez = np.savez_compressed

    def savez_then_die(fh, **arrays):
        real_savez(fh, **arrays)
        raise _Crash("killed after arrays.npz")

    monkeypatch.setattr("iapo_gym.tables.io.np.savez_compressed", savez_then_die)
    with pytest.raises(_Crash):
        save_table(example_table("mv"), tmp_path / "new")
    with pytest.raises(_Crash):
        save_table(example_table("bon", seed=6), tmp_path / "existing", overwrite=True)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["existing"]  # no "new", no temporaries
    assert_tables_equal(old, load_table(tmp_path / "existing"))  # the old table is intact


def test_bon_pool_omits_probs(tmp_path: Path) -> None:
    base = example_table("bon", seed=7)
    m = base.outcome_values.shape[2]
    pooled = replace(base, outcome_probs=np.full(base.outcome_probs.shape, 1.0 / m), pool_size=m)
    path = save_table(pooled, tmp_path / "pool")
    with np.load(path / ARRAYS_FILE, allow_pickle=False) as npz:
        assert "outcome_probs" not in npz.files
    loaded = load_table(path)
    assert loaded.pool_size == m
    np.testing.assert_array_equal(loaded.outcome_probs, 1.0 / m)
    assert_tables_equal(pooled, loaded)


def test_mv_pool_answers(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    base = example_table("mv", seed=8)
    pool = rng.integers(0, 4, size=(3, 10, 16))
    probs = mv_probs_from_pool(pool, 4)
    # a vectorised count equals the per-row definition
    for p, q in [(0, 0), (2, 9), (1, 5)]:
        np.testing.assert_array_equal(probs[p, q], np.bincount(pool[p, q], minlength=4) / 16)
    table = replace(base, answer_probs=probs)
    path = save_table(table, tmp_path / "mvpool", mv_pool=pool)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["pool_size"] == 16 and manifest["n_answers"] == 4
    with np.load(path / ARRAYS_FILE, allow_pickle=False) as npz:
        assert "answer_probs" not in npz.files
        np.testing.assert_array_equal(npz["pool_answers"], pool)
    loaded = load_table(path)
    np.testing.assert_array_equal(loaded.answer_probs, probs)
    assert loaded.pool_size == 16
    # a pool that does not match the table's probabilities is refused
    with pytest.raises(TableError, match="mv_pool: the pool's answer frequencies differ"):
        save_table(table, tmp_path / "bad", mv_pool=(pool + 1) % 4)
    # without n_answers the category count is inferred from the pool and the gold answers
    del manifest["n_answers"]
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    inferred = load_table(path)
    assert inferred.answer_probs.shape[2] == max(pool.max(), base.gold.max()) + 1


def test_provenance_with_numpy_values_is_written_as_json(tmp_path: Path) -> None:
    table = replace(example_table("mv"), provenance={"seed": np.int64(3), "temperature": np.float32(0.5), "n": [1, 2]})
    loaded = load_table(save_table(table, tmp_path / "t"))
    assert loaded.provenance == {"seed": 3, "temperature": 0.5, "n": [1, 2]}
