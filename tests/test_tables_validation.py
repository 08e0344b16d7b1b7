"""One clear error per defect: manifests, arrays and in-memory tables."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from iapo_gym.contexts import ContextSet
from iapo_gym.tables.io import ARRAYS_FILE, MANIFEST_FILE, array_checksum, load_table, save_table
from iapo_gym.tables.testing import example_table
from iapo_gym.tables.validation import TableError, validate_manifest, validate_table

Arrays = dict[str, np.ndarray]
Manifest = dict


def _rewrite(directory: Path, arrays_fn=None, manifest_fn=None, fix_checksums: bool = True) -> None:
    """Apply a defect to a saved table, keeping checksums consistent unless told otherwise."""
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    with np.load(directory / ARRAYS_FILE, allow_pickle=False) as npz:
        arrays = {n: npz[n] for n in npz.files}
    if arrays_fn is not None:
        arrays_fn(arrays)
        if fix_checksums:
            manifest["checksums"] = {n: array_checksum(a) for n, a in arrays.items() if a.dtype.kind != "O"}
            manifest["shapes"] = {n: list(a.shape) for n, a in arrays.items()}
            manifest["dtypes"] = {n: a.dtype.str for n, a in arrays.items()}
        np.savez(directory / ARRAYS_FILE, **arrays)
    if manifest_fn is not None:
        replaced = manifest_fn(manifest)
        if isinstance(replaced, list):  # a mutation may replace the whole manifest
            manifest = replaced
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))


def _set(key, value) -> Callable[[Manifest], None]:
    return lambda m: m.__setitem__(key, value)


def _arr(name: str, fn) -> Callable[[Arrays], None]:
    def mutate(arrays: Arrays) -> None:
        arrays[name] = fn(arrays[name].copy())

    return mutate


def _at(index, value):
    def f(a):
        a[index] = value
        return a

    return f


# (label, strategy, arrays mutation, manifest mutation, expected message fragment)
DISK_DEFECTS = [
    ("missing field", "mv", None, lambda m: m.__delitem__("n_max"), "manifest: missing field 'n_max'"),
    ("unknown schema", "mv", None, _set("schema_version", 99), "schema_version: unknown schema version 99"),
    ("unknown strategy", "mv", None, _set("strategy", "beam"), "strategy: unknown strategy 'beam'"),
    ("n_max < 1", "mv", None, _set("n_max", 0), "n_max: is 0, must be an integer >= 1"),
    ("pool size < 1", "bon", None, _set("pool_size", 0), "pool_size: is 0"),
    ("duplicate query ids", "mv", None, lambda m: m["query_ids"].__setitem__(1, "q0"), "query_ids: duplicate id 'q0'"),
    (
        "contexts with wrong K",
        "mv",
        None,
        _set("contexts", ContextSet(("a",), np.array([[0.5, 0.5, 0.1]])).to_json()),
        "contexts: weights have 3 columns, expected K+1 = 2",
    ),
    (
        "ranges low > high",
        "bon",
        None,
        _set("objective_ranges", [[1, -1], [-1, 1]]),
        "objective_ranges: holds a non-finite bound or low > high",
    ),
    (
        "ranges wrong shape",
        "bon",
        None,
        _set("objective_ranges", [[-1, 1]]),
        "objective_ranges: has shape (1, 2), expected (2, 2)",
    ),
    ("empty prompts", "mv", None, _set("prompts", []), "prompts: is empty"),
    ("cost shape vs prompts", "mv", None, lambda m: m["prompts"].__delitem__(-1), "cost: has shape (3, 10), expected (2, 10)"),
    (
        "probs shape vs queries",
        "mv",
        _arr("answer_probs", lambda a: a[:, :-1]),
        None,
        "answer_probs: has shape (3, 9, 4), expected (3, 10, 'A')",
    ),
    (
        "values shape",
        "bon",
        _arr("outcome_values", lambda a: a[..., :1]),
        None,
        "outcome_values: has shape (3, 10, 4, 1), expected (3, 10, 'M', 2)",
    ),
    (
        "probs vs values",
        "bon",
        _arr("outcome_probs", lambda a: a[:, :, :3]),
        None,
        "outcome_probs: has shape (3, 10, 3), expected (3, 10, 4)",
    ),
    ("gold shape", "mv", _arr("gold", lambda a: a[:5]), None, "gold: has shape (5,), expected (10,)"),
    ("split shape", "mv", _arr("split", lambda a: a[:5]), None, "split: has shape (5,), expected (10,)"),
    (
        "rows not summing to 1",
        "mv",
        _arr("answer_probs", lambda a: a * 0.9),
        None,
        "answer_probs: rows must sum to 1 (prompt 0, query 0 sums to 0.9",
    ),
    (
        "negative probability",
        "bon",
        _arr("outcome_probs", lambda a: _at((1, 2, 0), -0.25)(a)),
        None,
        "outcome_probs: negative probability -0.25 at index (1, 2, 0)",
    ),
    ("NaN", "mv", _arr("cost", _at((2, 3), np.nan)), None, "cost: contains NaN (first at index (2, 3))"),
    (
        "inf",
        "bon",
        _arr("outcome_values", _at((0, 1, 2, 1), np.inf)),
        None,
        "outcome_values: contains inf (first at index (0, 1, 2, 1))",
    ),
    ("negative cost", "mv", _arr("cost", _at((1, 4), -0.5)), None, "cost: negative cost -0.5 at prompt 1, query 4"),
    ("gold out of range", "mv", _arr("gold", _at(0, 7)), None, "gold: index 7 at query 0 is out of range 0..3"),
    ("gold not integer", "mv", _arr("gold", lambda a: a.astype(float)), None, "gold: has dtype float64, expected integers"),
    (
        "objective outside range",
        "bon",
        _arr("outcome_values", _at((2, 0, 1, 0), 3.5)),
        None,
        "outcome_values: objective 0 value 3.5 at index (2, 0, 1, 0) is outside its declared range [-1, 1]",
    ),
    ("mv range not [0, 1]", "mv", None, _set("objective_ranges", [[0.0, 0.5]]), "objective_ranges: an MV table scores 0/1"),
    ("split values", "mv", _arr("split", _at(3, 2)), None, "split: holds values [2]; use 0 = train, 1 = test"),
    ("empty test split", "mv", _arr("split", lambda a: np.zeros_like(a)), None, "split: the test split is empty"),
    ("empty train split", "bon", _arr("split", lambda a: np.ones_like(a)), None, "split: the train split is empty"),
    (
        "missing array",
        "mv",
        lambda a: a.__delitem__("gold"),
        None,
        "gold: missing (a mv table needs cost, split, answer_probs, gold)",
    ),
    (
        "foreign array",
        "mv",
        lambda a: a.__setitem__("outcome_values", np.zeros((3, 10, 4, 1))),
        None,
        "outcome_values: belongs to a bon table",
    ),
    ("unknown array", "mv", lambda a: a.__setitem__("extra", np.zeros(3)), None, "extra: unknown array in arrays.npz"),
    ("pool size vs outcomes", "bon", None, _set("pool_size", 5), "pool_size: is 5 but outcome_values hold 4 outcomes"),
    ("manifest not an object", "mv", None, lambda m: [1, 2], "manifest: is a list, expected a JSON object"),
    ("task empty", "mv", None, _set("task", ""), "task: is ''"),
]


@pytest.mark.parametrize(
    "strategy, arrays_fn, manifest_fn, expected",
    [case[1:] for case in DISK_DEFECTS],
    ids=[case[0] for case in DISK_DEFECTS],
)
def test_disk_defect_gives_one_clear_error(tmp_path: Path, strategy, arrays_fn, manifest_fn, expected) -> None:
    directory = save_table(example_table(strategy, seed=4), tmp_path / "t")
    load_table(directory)  # valid before the defect
    _rewrite(directory, arrays_fn, manifest_fn)
    with pytest.raises(TableError) as info:
        load_table(directory)
    assert expected in str(info.value)
    assert "; " in str(info.value)  # every message ends with the fix


def test_checksum_mismatch(tmp_path: Path) -> None:
    directory = save_table(example_table("mv"), tmp_path / "t")
    _rewrite(directory, _arr("cost", lambda a: a * 2), fix_checksums=False)
    with pytest.raises(TableError, match="cost: checksum mismatch.*re-import or re-build"):
        load_table(directory)


def test_malformed_json(tmp_path: Path) -> None:
    directory = save_table(example_table("mv"), tmp_path / "t")
    (directory / MANIFEST_FILE).write_text('{"schema_version": 1, "task": ')
    with pytest.raises(TableError, match=r"manifest.json: malformed JSON \(Expecting value at line 1, column 31\)"):
        load_table(directory)


def test_missing_manifest_and_arrays(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="manifest.json: not found .* not a table directory"):
        load_table(tmp_path)
    directory = save_table(example_table("mv"), tmp_path / "t")
    (directory / ARRAYS_FILE).unlink()
    with pytest.raises(TableError, match="arrays.npz: not found"):
        load_table(directory)


def test_pickled_object_array_is_never_unpickled(tmp_path: Path) -> None:
    directory = save_table(example_table("mv"), tmp_path / "t")
    _rewrite(directory, lambda a: a.__setitem__("gold", np.array([object()] * 10, dtype=object)))
    with pytest.raises(TableError, match="arrays.npz: unreadable .*allow_pickle"):
        load_table(directory)


# ----------------------------------------------------------------------------- in-memory tables
MEMORY_DEFECTS = [
    ("negative cost", "mv", lambda t: replace(t, cost=-t.cost), "cost: negative cost"),
    (
        "NaN probs",
        "bon",
        lambda t: replace(t, outcome_probs=np.full_like(t.outcome_probs, np.nan)),
        "outcome_probs: contains NaN",
    ),
    ("unknown strategy", "mv", lambda t: replace(t, strategy="beam"), "strategy: unknown strategy 'beam'"),
    ("n_max", "mv", lambda t: replace(t, n_max=0), "n_max: is 0"),
    ("two MV objectives", "mv", lambda t: replace(t, objectives=("a", "b")), "objectives: an MV table has one objective"),
    ("duplicate query ids", "bon", lambda t: replace(t, query_ids=("x",) * t.n_queries), "query_ids: duplicate id 'x'"),
    ("missing gold", "mv", lambda t: replace(t, gold=None), "gold: missing"),
    (
        "contexts K",
        "bon",
        lambda t: replace(t, contexts=ContextSet(("c",), np.array([[1.0, 0.5]]))),
        "contexts: weights have 2 columns, expected K+1 = 3",
    ),
]


@pytest.mark.parametrize(
    "strategy, mutate, expected", [c[1:] for c in MEMORY_DEFECTS], ids=[c[0] for c in MEMORY_DEFECTS]
)
def test_memory_defect_gives_one_clear_error(tmp_path: Path, strategy, mutate, expected) -> None:
    table = mutate(example_table(strategy, seed=1))
    with pytest.raises(TableError) as info:
        validate_table(table)
    assert expected in str(info.value)
    with pytest.raises(TableError):  # and it is never written
        save_table(table, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_valid_tables_pass(math_pickle: Path) -> None:
    from iapo_gym.tables.importer import import_released

    for table in (example_table("mv"), example_table("bon"), import_released(math_pickle)):
        validate_table(table)


def test_validate_manifest_accepts_what_save_writes(tmp_path: Path) -> None:
    directory = save_table(example_table("bon"), tmp_path / "t")
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    validate_manifest(manifest)
    assert manifest["shapes"]["outcome_values"] == [3, 10, 4, 2]
