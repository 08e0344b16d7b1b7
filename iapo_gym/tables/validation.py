"""Validation of outcome tables, their manifests and their arrays: one clear error per defect.

Every check raises :class:`TableError` (a ``ValueError``) whose message starts with the field at
fault and ends with the fix, e.g. ``"answer_probs: rows must sum to 1 ...; renormalise ..."``.
The checks run in a fixed order and stop at the first defect, so one defect gives one message.

* :func:`validate_manifest` checks a manifest dict (``manifest.json`` of the on-disk format, see
  :mod:`iapo_gym.tables.io`) on its own: fields present, schema version known, types and sizes.
* :func:`validate_arrays` checks the arrays of a table against the sizes its manifest declares.
* :func:`validate_table` checks an in-memory :class:`~iapo_gym.tables.format.OutcomeTable`.

Size limits (:data:`LIMITS`) are checked on the *declared* sizes (manifest fields, array headers)
before anything of that size is allocated: ``n_max <= 1024``, ``P * n_max <= 2**20`` arms,
``n_answers <= 4096`` answer categories, ``pool_size <= 2**16`` samples, costs in ``[0, 1e9]``,
context weights of magnitude ``<= 1e6`` (so a utility ``w * N * cost`` stays far from overflow) and
at most ``2**32`` bytes (4 GiB) of arrays per table. A table above a limit is refused with a message
naming the field and the limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from iapo_gym.contexts import ContextSet
from iapo_gym.tables.format import SCHEMA_VERSION, STRATEGIES, OutcomeTable

__all__ = [
    "ARRAYS",
    "LIMITS",
    "MANIFEST_FIELDS",
    "PROB_ATOL",
    "TableError",
    "validate",
    "validate_arrays",
    "validate_manifest",
    "validate_table",
]

#: Tolerance on "probabilities sum to 1".
PROB_ATOL = 1e-6

#: Upper bounds on declared table sizes and values (see the module docstring).
LIMITS: dict[str, float] = {
    "n_max": 1024,
    "arms": 2**20,
    "n_answers": 4096,
    "pool_size": 2**16,
    "cost": 1e9,
    "weight": 1e6,
    "table_bytes": 2**32,
}

#: Fields every manifest must hold (``pool_size`` may be null).
MANIFEST_FIELDS: tuple[str, ...] = (
    "schema_version",
    "task",
    "strategy",
    "objectives",
    "objective_ranges",
    "prompts",
    "query_ids",
    "cost_unit",
    "contexts",
    "n_max",
    "pool_size",
    "provenance",
    "checksums",
    "shapes",
)

#: Arrays a table may hold, per strategy (``outcome_probs`` is optional for pooled BoN tables).
ARRAYS: dict[str, tuple[str, ...]] = {
    "mv": ("cost", "split", "answer_probs", "gold"),
    "bon": ("cost", "split", "outcome_values", "outcome_probs"),
}


class TableError(ValueError):
    """A table, manifest or array file is invalid; the message names the field and the fix."""


def _fail(field: str, defect: str, fix: str) -> None:
    raise TableError(f"{field}: {defect}; {fix}")


# ---------------------------------------------------------------------------- manifest
def _n_answers(n_answers: Any) -> None:
    if not _is_int(n_answers) or n_answers < 1:
        _fail("n_answers", f"is {n_answers!r}, must be an integer >= 1", "set it to the number of answer categories A")
    if n_answers > LIMITS["n_answers"]:
        _fail(
            "n_answers",
            f"is {n_answers}, above the limit of {LIMITS['n_answers']:g} answer categories",
            "merge rare answers into one category, or fix n_answers",
        )


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _str_list(manifest: Mapping, key: str, allow_empty: bool = False) -> None:
    value = manifest[key]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        _fail(key, f"must be a list of strings, got {type(value).__name__}", f"write {key} as a JSON list of strings")
    if not value and not allow_empty:
        _fail(key, "is empty", f"a table needs at least one entry in {key}")


def _objective_ranges(ranges: Any, n_objectives: int) -> np.ndarray:
    try:
        arr = np.asarray(ranges, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.zeros((0,))
    if arr.shape != (n_objectives, 2):
        _fail(
            "objective_ranges",
            f"has shape {arr.shape}, expected ({n_objectives}, 2) (one [low, high] per objective)",
            "give one [low, high] pair per objective",
        )
    if not np.all(np.isfinite(arr)) or np.any(arr[:, 0] > arr[:, 1]):
        _fail("objective_ranges", "holds a non-finite bound or low > high", "write finite [low, high] with low <= high")
    return arr


def _contexts(contexts: Any, n_objectives: int) -> ContextSet:
    if isinstance(contexts, ContextSet):
        cs = contexts
    else:
        try:
            cs = ContextSet.from_json(contexts)
        except (KeyError, TypeError, ValueError) as exc:
            _fail("contexts", f"is not a valid context set ({exc})", "write ContextSet.to_json(): names, weights, probs")
    if cs.n_objectives != n_objectives:
        _fail(
            "contexts",
            f"weights have {cs.weights.shape[1]} columns, expected K+1 = {n_objectives + 1} "
            f"({n_objectives} objectives plus the cost weight)",
            "give each context one weight per objective and the cost weight last",
        )
    _weights_bounded(cs)
    return cs


def _n_max(n_max: Any, n_prompts: int) -> None:
    if not _is_int(n_max) or n_max < 1:
        _fail("n_max", f"is {n_max!r}, must be an integer >= 1", "set n_max to the largest N of an arm (e.g. 32)")
    if n_max > LIMITS["n_max"]:
        _fail("n_max", f"is {n_max}, above the limit of {LIMITS['n_max']:g}", "set n_max to the largest N of an arm (e.g. 32)")
    if n_prompts * n_max > LIMITS["arms"]:
        _fail(
            "n_max",
            f"{n_prompts} prompts x n_max {n_max} = {n_prompts * n_max} arms, above the limit of {LIMITS['arms']:g}",
            "use fewer prompts or a smaller n_max",
        )


def _pool_size(pool_size: Any) -> None:
    if pool_size is not None and (not _is_int(pool_size) or pool_size < 1):
        _fail("pool_size", f"is {pool_size!r}", "use null (a distribution table) or the pool's sample count M >= 1")
    if pool_size is not None and pool_size > LIMITS["pool_size"]:
        limit = LIMITS["pool_size"]
        _fail("pool_size", f"is {pool_size}, above the limit of {limit:g}", "store fewer samples per (prompt, query)")


def _weights_bounded(cs: ContextSet) -> None:
    big = np.abs(cs.weights) > LIMITS["weight"]
    if big.any():
        c, k = (int(i) for i in np.argwhere(big)[0])
        _fail(
            "contexts",
            f"weight {cs.weights[c, k]:g} of context {c} exceeds the limit of {LIMITS['weight']:g} in magnitude",
            "rescale the context weights",
        )


def _strategy(strategy: Any) -> None:
    if strategy not in STRATEGIES:
        _fail("strategy", f"unknown strategy {strategy!r}", f"use one of {list(STRATEGIES)}")


def _unique_ids(ids: tuple[str, ...] | list[str], field: str) -> None:
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(q for q in ids if q in seen or seen.add(q))  # type: ignore[func-returns-value]
        _fail(field, f"duplicate id {dup!r}", f"give every entry of {field} a distinct id")


def validate_manifest(manifest: Any) -> None:
    """Check a manifest dict on its own (fields, schema version, types, sizes).

    Raises:
        TableError: the first defect found, naming the field and the fix.
    """
    if not isinstance(manifest, Mapping):
        _fail("manifest", f"is a {type(manifest).__name__}, expected a JSON object", "rewrite manifest.json as an object")
    missing = [f for f in MANIFEST_FIELDS if f not in manifest]
    if missing:
        _fail("manifest", f"missing field {missing[0]!r}", f"add {missing[0]!r} (required: {', '.join(MANIFEST_FIELDS)})")
    version = manifest["schema_version"]
    if version != SCHEMA_VERSION:
        _fail(
            "schema_version",
            f"unknown schema version {version!r} (this iapo-gym reads version {SCHEMA_VERSION})",
            "upgrade iapo-gym, or re-import / rebuild the table with this version",
        )
    if not isinstance(manifest["task"], str) or not manifest["task"]:
        _fail("task", f"is {manifest['task']!r}", "name the task with a non-empty string")
    _strategy(manifest["strategy"])
    _str_list(manifest, "objectives")
    _str_list(manifest, "prompts")
    _str_list(manifest, "query_ids")
    _unique_ids(manifest["query_ids"], "query_ids")
    if not isinstance(manifest["cost_unit"], str):
        _fail("cost_unit", f"is {manifest['cost_unit']!r}", 'describe the cost unit with a string, e.g. "tokens/1000"')
    if manifest["strategy"] == "mv" and len(manifest["objectives"]) != 1:
        _fail("objectives", f"an MV table has one objective, got {manifest['objectives']}", 'use ["correct"]')
    k = len(manifest["objectives"])
    _objective_ranges(manifest["objective_ranges"], k)
    _contexts(manifest["contexts"], k)
    _n_max(manifest["n_max"], len(manifest["prompts"]))
    _pool_size(manifest["pool_size"])
    if "n_answers" in manifest:
        _n_answers(manifest["n_answers"])
    if not isinstance(manifest["provenance"], Mapping):
        _fail("provenance", "must be a JSON object", "record model, sampling parameters, date, source as an object")
    for key in ("checksums", "shapes"):
        if not isinstance(manifest[key], Mapping):
            _fail(key, "must be a JSON object keyed by array name", "re-save the table with iapo_gym.tables.io.save_table")


# ---------------------------------------------------------------------------- arrays
def _shape(arrays: Mapping[str, np.ndarray], name: str, expected: tuple[int, ...], meaning: str) -> np.ndarray:
    arr = arrays[name]
    if arr.shape != expected:
        _fail(name, f"has shape {arr.shape}, expected {expected} ({meaning})", f"make {name} {meaning}")
    return arr


def _finite(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind == "f":
        if np.isnan(arr).any():
            idx = tuple(int(i) for i in np.argwhere(np.isnan(arr))[0])
            _fail(name, f"contains NaN (first at index {idx})", f"replace the missing values of {name}")
        if np.isinf(arr).any():
            idx = tuple(int(i) for i in np.argwhere(np.isinf(arr))[0])
            _fail(name, f"contains inf (first at index {idx})", f"replace the infinite values of {name} by finite numbers")


def _probabilities(probs: np.ndarray, name: str) -> None:
    if (probs < 0).any():
        idx = tuple(int(i) for i in np.argwhere(probs < 0)[0])
        _fail(name, f"negative probability {probs[idx]:g} at index {idx}", "probabilities must be >= 0")
    sums = probs.sum(axis=-1)
    bad = np.abs(sums - 1.0) > PROB_ATOL
    if bad.any():
        p, q = (int(i) for i in np.argwhere(bad)[0])
        _fail(
            name,
            f"rows must sum to 1 (prompt {p}, query {q} sums to {sums[p, q]:.9g})",
            "renormalise each (prompt, query) row over its last axis",
        )


def _check_arrays(  # noqa: C901 - one flat, ordered list of independent checks
    arrays: Mapping[str, np.ndarray | None],
    *,
    strategy: str,
    n_prompts: int,
    n_queries: int,
    objective_ranges: np.ndarray,
    pool_size: int | None,
) -> None:
    """The array checks shared by :func:`validate_arrays` and :func:`validate_table`."""
    _strategy(strategy)
    k = objective_ranges.shape[0]
    present = {n: a for n, a in arrays.items() if a is not None}
    required = [n for n in ARRAYS[strategy] if not (strategy == "bon" and n == "outcome_probs" and pool_size)]
    for name in required:
        if name not in present:
            _fail(name, f"missing (a {strategy} table needs {', '.join(required)})", f"add the {name} array")
    other = "bon" if strategy == "mv" else "mv"
    for name in present:
        if name in ARRAYS[other] and name not in ARRAYS[strategy]:
            _fail(name, f"belongs to a {other} table, this one is {strategy}", f"drop {name} or fix strategy")
    for name, arr in present.items():
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            kind = getattr(arr, "dtype", type(arr).__name__)
            _fail(name, f"has dtype {kind}, expected numbers", f"store {name} as a numeric array")
    pq = (n_prompts, n_queries)
    cost = _shape(present, "cost", pq, f"(prompts, queries) = {pq}")
    split = _shape(present, "split", (n_queries,), f"one entry per query = ({n_queries},)")
    probs: np.ndarray | None  # a BoN pool may omit outcome_probs
    if strategy == "mv":
        probs = present["answer_probs"]
        if probs.ndim != 3 or probs.shape[:2] != pq:
            _fail("answer_probs", f"has shape {probs.shape}, expected {pq + ('A',)}", "make it (prompts, queries, answers)")
        gold = _shape(present, "gold", (n_queries,), f"one gold answer per query = ({n_queries},)")
        _n_answers(probs.shape[2])
    else:
        values = present["outcome_values"]
        if values.ndim != 4 or values.shape[:2] != pq or values.shape[3] != k:
            _fail(
                "outcome_values",
                f"has shape {values.shape}, expected {pq + ('M', k)}",
                "make it (prompts, queries, outcomes, objectives)",
            )
        m = values.shape[2]
        if m > LIMITS["pool_size"]:
            limit = LIMITS["pool_size"]
            _fail("outcome_values", f"holds {m} outcomes per (prompt, query), above the limit of {limit:g}", "store fewer")
        probs = present.get("outcome_probs")
        if probs is None:
            probs = np.full(values.shape[:3], 1.0 / m)
        elif probs.shape != values.shape[:3]:
            _fail(
                "outcome_probs",
                f"has shape {probs.shape}, expected {values.shape[:3]} like outcome_values",
                "make it (P, Q, M)",
            )
        if pool_size is not None and m != pool_size:
            _fail("pool_size", f"is {pool_size} but outcome_values hold {m} outcomes", f"set pool_size to {m} or null")
    for name, arr in present.items():
        _finite(arr, name)
    if (cost < 0).any():
        p, q = (int(i) for i in np.argwhere(cost < 0)[0])
        _fail("cost", f"negative cost {cost[p, q]:g} at prompt {p}, query {q}", "costs are magnitudes and must be >= 0")
    if (cost > LIMITS["cost"]).any():
        p, q = (int(i) for i in np.argwhere(cost > LIMITS["cost"])[0])
        _fail(
            "cost",
            f"cost {cost[p, q]:g} at prompt {p}, query {q} exceeds the limit of {LIMITS['cost']:g} per completion",
            "express costs in a larger unit (e.g. tokens/1000)",
        )
    name = "answer_probs" if strategy == "mv" else "outcome_probs"
    _probabilities(probs, name)
    if strategy == "bon" and pool_size is not None and not np.allclose(probs, 1.0 / pool_size, atol=PROB_ATOL):
        _fail("outcome_probs", f"a pool of {pool_size} samples has probabilities 1/{pool_size}", "set pool_size to null")
    if strategy == "mv":
        if gold.dtype.kind not in "iu":
            _fail("gold", f"has dtype {gold.dtype}, expected integers", "store gold answer indices as integers")
        n_ans = probs.shape[2]
        if gold.size and (gold.min() < 0 or gold.max() >= n_ans):
            bad = int(np.flatnonzero((gold < 0) | (gold >= n_ans))[0])
            _fail(
                "gold",
                f"index {int(gold[bad])} at query {bad} is out of range 0..{n_ans - 1}",
                "gold must index an answer category",
            )
        lo, hi = objective_ranges[0]
        if lo > 0 or hi < 1:
            _fail("objective_ranges", f"an MV table scores 0/1, but the range is [{lo:g}, {hi:g}]", "use [[0, 1]]")
    else:
        lo, hi = objective_ranges[:, 0], objective_ranges[:, 1]
        out = (values < lo - 1e-9) | (values > hi + 1e-9)
        if out.any():
            idx = tuple(int(i) for i in np.argwhere(out)[0])
            _fail(
                "outcome_values",
                f"objective {idx[3]} value {values[idx]:g} at index {idx} is outside its declared range "
                f"[{lo[idx[3]]:g}, {hi[idx[3]]:g}]",
                "fix the value or widen objective_ranges",
            )
    if not np.isin(split, (0, 1)).all():
        _fail("split", f"holds values {sorted(set(np.unique(split).tolist()) - {0, 1})[:5]}", "use 0 = train, 1 = test")
    for value, label in ((0, "train"), (1, "test")):
        if not (split == value).any():
            _fail("split", f"the {label} split is empty", f"mark at least one query {value} ({label})")


def validate_arrays(arrays: Mapping[str, np.ndarray | None], manifest: Mapping[str, Any]) -> None:
    """Check the arrays of a table against the sizes its (already validated) manifest declares."""
    _check_arrays(
        arrays,
        strategy=manifest["strategy"],
        n_prompts=len(manifest["prompts"]),
        n_queries=len(manifest["query_ids"]),
        objective_ranges=np.asarray(manifest["objective_ranges"], dtype=np.float64),
        pool_size=manifest["pool_size"],
    )


def validate_table(table: OutcomeTable) -> None:
    """Check an in-memory table: metadata, array shapes and values (raises :class:`TableError`)."""
    if not isinstance(table, OutcomeTable):
        _fail("table", f"is a {type(table).__name__}", "pass an iapo_gym.tables.format.OutcomeTable")
    if not isinstance(table.task, str) or not table.task:
        _fail("task", f"is {table.task!r}", "name the task with a non-empty string")
    _strategy(table.strategy)
    if not table.objectives:
        _fail("objectives", "is empty", "name at least one objective")
    if table.strategy == "mv" and table.n_objectives != 1:
        _fail("objectives", f"an MV table has one objective, got {table.objectives}", 'use ("correct",)')
    if not table.prompts:
        _fail("prompts", "is empty", "a table needs at least one prompt")
    if not table.query_ids:
        _fail("query_ids", "is empty", "a table needs at least one query")
    _unique_ids(table.query_ids, "query_ids")
    ranges = _objective_ranges(table.objective_ranges, table.n_objectives)
    _contexts(table.contexts, table.n_objectives)
    _n_max(table.n_max, table.n_prompts)
    _pool_size(table.pool_size)
    _check_arrays(
        {n: getattr(table, n) for n in ("cost", "split", "answer_probs", "gold", "outcome_values", "outcome_probs")},
        strategy=table.strategy,
        n_prompts=table.n_prompts,
        n_queries=table.n_queries,
        objective_ranges=ranges,
        pool_size=table.pool_size,
    )


#: The name docs/ARCHITECTURE.md gives the table check.
validate = validate_table
