"""The on-disk table format (schema version :data:`~iapo_gym.tables.format.SCHEMA_VERSION`).

A table is a directory ``<name>/`` holding two files:

``manifest.json`` (UTF-8 JSON object)
    ``schema_version`` (int, currently 1), ``task`` (str), ``strategy`` (``"mv"`` | ``"bon"``),
    ``objectives`` (K names; MV: ``["correct"]``), ``objective_ranges`` (K ``[low, high]`` pairs),
    ``prompts`` (P prompt texts or ids), ``query_ids`` (Q distinct ids), ``cost_unit`` (str),
    ``contexts`` (``ContextSet.to_json()``: ``names``, ``weights`` (C, K+1) with the cost-weight
    magnitude last, ``probs``), ``n_max`` (int >= 1), ``pool_size`` (null, or M when the table is a
    raw pool of M equally likely samples per (prompt, query)), ``provenance`` (object: model,
    sampling parameters, date, source ...), ``checksums`` (array name -> sha256 hex digest of the
    array's C-order bytes), ``shapes`` (array name -> list of ints), ``dtypes`` (array name -> numpy
    dtype string). Optional: ``n_answers`` (int, MV pool form only, see below).

``arrays.npz`` (numpy ``.npz``; always loaded with ``allow_pickle=False``)
    * ``cost`` ``(P, Q)`` float64: expected cost of one completion, in ``cost_unit``;
    * ``split`` ``(Q,)`` int8: 0 = train, 1 = test;
    * MV, distribution form: ``answer_probs`` ``(P, Q, A)`` float64 (rows sum to 1) and ``gold``
      ``(Q,)`` int64 (the correct category);
    * MV, pool form: ``pool_answers`` ``(P, Q, M)`` int64, the answer category of each of M sampled
      completions, and ``gold``; ``pool_size = M``, ``n_answers = A`` (default: one more than the
      largest category in ``pool_answers`` and ``gold``). On load it becomes
      ``answer_probs[p, q, a] = #{i : pool_answers[p, q, i] == a} / M``;
    * BoN: ``outcome_values`` ``(P, Q, M, K)`` float64 and ``outcome_probs`` ``(P, Q, M)`` float64;
      when ``pool_size = M`` the M outcomes are equally likely samples and ``outcome_probs`` may be
      omitted (it is ``1/M`` on load).

:func:`save_table` writes into a temporary directory beside the target and moves it into place
with :func:`os.replace`, so a crash never leaves a half-written table under the target name.
:func:`load_table` verifies every array checksum and validates the table before returning it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from iapo_gym.contexts import ContextSet
from iapo_gym.tables.format import SCHEMA_VERSION, OutcomeTable
from iapo_gym.tables.validation import LIMITS, TableError, validate_arrays, validate_manifest, validate_table

__all__ = [
    "ARRAYS_FILE",
    "MANIFEST_FILE",
    "array_checksum",
    "load_table",
    "mv_probs_from_pool",
    "read_manifest",
    "save_table",
    "table_to_manifest",
]

MANIFEST_FILE = "manifest.json"
ARRAYS_FILE = "arrays.npz"

#: Every array name the format knows.
KNOWN_ARRAYS = ("cost", "split", "answer_probs", "gold", "pool_answers", "outcome_values", "outcome_probs")

_DTYPES = {
    "cost": np.float64,
    "split": np.int8,
    "answer_probs": np.float64,
    "gold": np.int64,
    "pool_answers": np.int64,
    "outcome_values": np.float64,
    "outcome_probs": np.float64,
}


def array_checksum(arr: NDArray) -> str:
    """sha256 hex digest of an array's C-order bytes (as stored in ``manifest["checksums"]``)."""
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def mv_probs_from_pool(pool_answers: NDArray[np.integer], n_answers: int) -> NDArray[np.float64]:
    """Answer distribution ``(P, Q, A)`` of a pool of sampled answer categories ``(P, Q, M)``."""
    pool = np.asarray(pool_answers)
    p, q, m = pool.shape
    if pool.size and (pool.min() < 0 or pool.max() >= n_answers):
        raise TableError(
            f"pool_answers: categories must lie in 0..{n_answers - 1}; found {int(pool.min())}..{int(pool.max())}; "
            "fix the pool or set n_answers in the manifest"
        )
    rows = np.arange(p * q).repeat(m) * n_answers + pool.reshape(-1)
    counts = np.bincount(rows, minlength=p * q * n_answers).reshape(p, q, n_answers)
    return counts / float(m)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"provenance value of type {type(obj).__name__} is not JSON-serialisable")


def _table_arrays(table: OutcomeTable, mv_pool: NDArray | None) -> dict[str, NDArray]:
    arrays: dict[str, NDArray] = {"cost": table.cost, "split": table.split}
    if table.strategy == "mv":
        answer_probs, arrays["gold"] = table.mv_arrays()
        if mv_pool is None:
            arrays["answer_probs"] = answer_probs
        else:
            arrays["pool_answers"] = mv_pool
    else:
        arrays["outcome_values"], outcome_probs = table.bon_arrays()
        if table.pool_size is None or not np.allclose(outcome_probs, 1.0 / table.pool_size):
            arrays["outcome_probs"] = outcome_probs
    return {n: np.ascontiguousarray(a, dtype=_DTYPES[n]) for n, a in arrays.items()}


def table_to_manifest(table: OutcomeTable, arrays: Mapping[str, NDArray]) -> dict[str, Any]:
    """The manifest dict describing ``table`` whose stored arrays are ``arrays``."""
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "task": table.task,
        "strategy": table.strategy,
        "objectives": list(table.objectives),
        "objective_ranges": np.asarray(table.objective_ranges, dtype=np.float64).tolist(),
        "prompts": list(table.prompts),
        "query_ids": list(table.query_ids),
        "cost_unit": table.cost_unit,
        "contexts": table.contexts.to_json(),
        "n_max": int(table.n_max),
        "pool_size": None if table.pool_size is None else int(table.pool_size),
        "provenance": dict(table.provenance),
        "checksums": {n: array_checksum(a) for n, a in arrays.items()},
        "shapes": {n: list(a.shape) for n, a in arrays.items()},
        "dtypes": {n: a.dtype.str for n, a in arrays.items()},
    }
    if "pool_answers" in arrays:
        manifest["n_answers"] = int(table.mv_arrays()[0].shape[2])
    return manifest


def save_table(
    table: OutcomeTable,
    directory: str | Path,
    overwrite: bool = False,
    *,
    mv_pool: NDArray[np.integer] | None = None,
) -> Path:
    """Validate ``table`` and write it atomically to ``directory`` (see the module docstring).

    Args:
        table: the table to write.
        directory: the table directory ``<name>/`` to create.
        overwrite: replace an existing table there (else :class:`FileExistsError`).
        mv_pool: for an MV table built from a pool of samples, the ``(P, Q, M)`` answer categories;
            stored as ``pool_answers`` instead of ``answer_probs`` (must reproduce them exactly).

    Returns:
        The table directory.
    """
    validate_table(table)
    target = Path(directory)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True (or --force) to replace it")
    if mv_pool is not None:
        if table.strategy != "mv":
            raise TableError("mv_pool: only MV tables have answer pools; omit mv_pool for a BoN table")
        mv_pool = np.asarray(mv_pool)
        if mv_pool.ndim != 3 or mv_pool.shape[:2] != (table.n_prompts, table.n_queries):
            raise TableError(f"mv_pool: shape {mv_pool.shape}, expected (P, Q, M) = ({table.n_prompts}, {table.n_queries}, M)")
        answer_probs = table.mv_arrays()[0]
        probs = mv_probs_from_pool(mv_pool, answer_probs.shape[2])
        if not np.allclose(probs, answer_probs, atol=1e-12, rtol=0):
            raise TableError("mv_pool: the pool's answer frequencies differ from table.answer_probs; pass the matching pool")
        table = _with_pool_size(table, mv_pool.shape[2])
    arrays = _table_arrays(table, mv_pool)
    manifest = table_to_manifest(table, arrays)
    text = json.dumps(manifest, indent=1, default=_json_default, allow_nan=False)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0o700; a table dir gets the usual mode
        with open(tmp / ARRAYS_FILE, "wb") as fh:
            named: dict[str, Any] = arrays  # the arrays are keywords only (mypy: not allow_pickle)
            np.savez_compressed(fh, **named)
            fh.flush()
            os.fsync(fh.fileno())
        with open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if target.exists():  # overwrite: move the old table aside, then swap the new one in
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "table")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _with_pool_size(table: OutcomeTable, pool_size: int) -> OutcomeTable:
    from dataclasses import replace

    return replace(table, pool_size=pool_size)


#: Largest ``manifest.json`` read (bytes) and deepest JSON nesting accepted in it.
MAX_MANIFEST_BYTES = 256 * 2**20
MAX_MANIFEST_DEPTH = 64

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def _json_depth(raw: bytes) -> int:
    """Deepest ``[`` / ``{`` nesting of JSON text ``raw`` (string contents ignored), without parsing it."""
    skeleton = np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)
    if not skeleton.size:
        return 0
    step = ((skeleton == ord("[")) | (skeleton == ord("{"))).astype(np.int64)
    step -= ((skeleton == ord("]")) | (skeleton == ord("}"))).astype(np.int64)
    return int(np.cumsum(step).max(initial=0))


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Read and validate ``<directory>/manifest.json`` (raises :class:`TableError`).

    The file is refused before it is parsed when it is larger than :data:`MAX_MANIFEST_BYTES` or
    nests deeper than :data:`MAX_MANIFEST_DEPTH`.
    """
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise TableError(
            f"{MANIFEST_FILE}: not found in {Path(directory)}; this is not a table directory "
            "(create one with save_table, `iapo-gym data import FILE` or `iapo-gym data pull TASK`)"
        )
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise TableError(f"{MANIFEST_FILE}: unreadable ({exc}); check the file's permissions") from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise TableError(f"{MANIFEST_FILE}: larger than {MAX_MANIFEST_BYTES} bytes; this is not a manifest, re-save the table")
    depth = _json_depth(raw)
    if depth > MAX_MANIFEST_DEPTH:
        raise TableError(
            f"{MANIFEST_FILE}: JSON nested {depth} levels deep (a manifest needs at most 4, the limit is "
            f"{MAX_MANIFEST_DEPTH}); the file is damaged or hostile, re-save the table"
        )
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise TableError(
            f"{MANIFEST_FILE}: malformed JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "repair the file or re-save the table"
        ) from exc
    except UnicodeDecodeError as exc:
        raise TableError(f"{MANIFEST_FILE}: not UTF-8 text ({exc}); re-save the table") from exc
    except RecursionError as exc:  # pragma: no cover - the depth check above comes first
        raise TableError(f"{MANIFEST_FILE}: JSON nested too deeply; re-save the table") from exc
    validate_manifest(manifest)
    return manifest


def _expected_shapes(manifest: Mapping[str, Any]) -> dict[str, tuple[int | str, ...]]:
    """Array name -> the shape the manifest's sizes imply (a letter: a free axis, bounded separately)."""
    p, q, k = len(manifest["prompts"]), len(manifest["query_ids"]), len(manifest["objectives"])
    m = "M" if manifest["pool_size"] is None else manifest["pool_size"]
    return {
        "cost": (p, q),
        "split": (q,),
        "gold": (q,),
        "answer_probs": (p, q, "A"),
        "pool_answers": (p, q, m),
        "outcome_values": (p, q, m, k),
        "outcome_probs": (p, q, m),
    }


def _check_declared(name: str, shape: tuple[int, ...], dtype: np.dtype, manifest: Mapping[str, Any]) -> None:
    """Refuse an ``.npy`` header that disagrees with the manifest, before its data is read."""
    if dtype.hasobject:
        raise TableError(
            f"{ARRAYS_FILE}: unreadable ({name} holds Python objects, which are never unpickled: allow_pickle=False); "
            "store numeric arrays only"
        )
    if dtype.kind not in "biuf":
        raise TableError(f"{name}: dtype {dtype.str} in {ARRAYS_FILE} is not numeric; store {name} as a numeric array")
    expected = _expected_shapes(manifest)[name]
    if len(shape) != len(expected) or any(not isinstance(e, str) and s != e for s, e in zip(shape, expected, strict=True)):
        pool = manifest["pool_size"]
        if pool is not None and len(shape) == len(expected) and len(shape) >= 3 and shape[2] != pool:
            raise TableError(
                f"pool_size: is {pool} but {name} hold {shape[2]} outcomes; set pool_size to {shape[2]} or null"
            )
        raise TableError(f"{name}: has shape {tuple(shape)}, expected {expected}; the files do not belong together")
    if name == "answer_probs" and shape[2] > LIMITS["n_answers"]:
        raise TableError(
            f"answer_probs: {shape[2]} answer categories, above the limit of {LIMITS['n_answers']:g}; "
            "merge rare answers into one category"
        )
    if name in ("pool_answers", "outcome_values", "outcome_probs") and shape[2] > LIMITS["pool_size"]:
        raise TableError(
            f"{name}: {shape[2]} outcomes per (prompt, query), above the limit of {LIMITS['pool_size']:g}; store fewer"
        )
    if "checksums" in manifest and name not in manifest["checksums"]:
        raise TableError(f"checksums: no checksum for array {name!r}; re-save the table with save_table")
    declared = manifest["shapes"].get(name)
    if declared is not None and list(shape) != list(declared):
        raise TableError(
            f"{name}: shape {list(shape)} differs from the manifest's {declared}; the files do not belong together"
        )
    dtypes = manifest.get("dtypes") or {}
    if name in dtypes and dtype.str != dtypes[name]:
        raise TableError(
            f"{name}: dtype {dtype.str} differs from the manifest's {dtypes[name]}; the files do not belong together"
        )


def _member_header(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    raise ValueError(f"unsupported .npy format version {version}")


def _read_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, shape: tuple[int, ...], fortran: bool, dtype: np.dtype
) -> NDArray:
    """Decompress one member into an array allocated at its (already checked) size."""
    arr = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
    view = arr.data.cast("B") if arr.size else memoryview(bytearray())
    with zf.open(info) as member:
        fh = cast(Any, member)  # a zipfile.ZipExtFile: readinto decompresses into our buffer
        _member_header(fh)
        pos = 0
        while pos < len(view):
            got = fh.readinto(view[pos:])
            if not got:
                raise TableError(f"{info.filename}: truncated in {ARRAYS_FILE}; re-import or re-build the table")
            pos += got
        if fh.read(1):
            raise TableError(f"{info.filename}: longer than its header says; re-import or re-build the table")
    return arr.T if fortran else arr


def _read_arrays(directory: Path, manifest: Mapping[str, Any]) -> dict[str, NDArray]:
    """Read ``arrays.npz`` without trusting it.

    Every member's ``.npy`` header is checked against the manifest (shape, dtype, sizes, the zip's
    declared length) and the total size against ``LIMITS["table_bytes"]`` before any array data is
    decompressed; each array is then read into a buffer of exactly its checked size.
    """
    path = directory / ARRAYS_FILE
    if not path.is_file():
        raise TableError(f"{ARRAYS_FILE}: not found in {directory}; the table is incomplete, re-import or re-build it")
    checksums = manifest["checksums"]
    arrays: dict[str, NDArray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            members: dict[str, zipfile.ZipInfo] = {}
            for info in zf.infolist():
                name = info.filename.removesuffix(".npy")
                if name not in KNOWN_ARRAYS or not info.filename.endswith(".npy"):
                    raise TableError(f"{name}: unknown array in {ARRAYS_FILE} (known: {', '.join(KNOWN_ARRAYS)}); remove it")
                if name in members:
                    raise TableError(f"{name}: stored twice in {ARRAYS_FILE}; re-save the table")
                members[name] = info
            headers = {}
            total = 0
            for name, info in members.items():
                with zf.open(info) as fh:
                    shape, fortran, dtype = _member_header(fh)
                    header_len = fh.tell()
                _check_declared(name, shape, dtype, manifest)
                nbytes = math.prod(shape) * dtype.itemsize
                if info.file_size != header_len + nbytes:
                    raise TableError(
                        f"{name}: the zip entry holds {info.file_size} bytes but its header describes "
                        f"{header_len + nbytes}; the file is damaged, re-import or re-build the table"
                    )
                total += nbytes
                if name == "pool_answers":  # becomes answer_probs (P, Q, n_answers) float64
                    total += math.prod(shape[:2]) * int(manifest.get("n_answers") or 1) * 8
                headers[name] = (shape, fortran, dtype)
            missing = sorted(set(checksums) - set(members))
            if missing:
                raise TableError(f"{missing[0]}: listed in the manifest but missing from {ARRAYS_FILE}; re-save the table")
            if total > LIMITS["table_bytes"]:
                raise TableError(
                    f"{ARRAYS_FILE}: the arrays would take {total} bytes, above the limit of {LIMITS['table_bytes']:g}; "
                    "this is not a table this version can load"
                )
            for name, info in members.items():
                arrays[name] = _read_member(zf, info, *headers[name])
    except TableError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise TableError(f"{ARRAYS_FILE}: unreadable ({exc}); re-import or re-build the table") from exc
    for name, arr in arrays.items():
        if array_checksum(arr) != checksums[name]:
            raise TableError(
                f"{name}: checksum mismatch (the array in {ARRAYS_FILE} is not the one the manifest describes); "
                "the file is corrupted or was edited: re-import or re-build the table"
            )
    return arrays


def load_table(directory: str | Path) -> OutcomeTable:
    """Load a table directory: read the manifest, verify checksums, convert pools, validate.

    Raises:
        TableError: one clear message for the first defect found.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    arrays = _read_arrays(directory, manifest)
    pool_size = manifest["pool_size"]
    if "pool_answers" in arrays:
        if manifest["strategy"] != "mv" or "answer_probs" in arrays:
            raise TableError("pool_answers: only an MV table without answer_probs may store a pool; keep one of the two")
        pool = arrays.pop("pool_answers")
        if pool.ndim != 3 or pool.dtype.kind not in "iu":
            raise TableError(f"pool_answers: shape {pool.shape} dtype {pool.dtype}, expected (P, Q, M) integers")
        if pool_size != pool.shape[2]:
            raise TableError(
                f"pool_size: is {pool_size} but pool_answers hold {pool.shape[2]} samples; set it to {pool.shape[2]}"
            )
        gold = arrays.get("gold")
        n_answers = manifest.get("n_answers")
        if n_answers is None:
            n_answers = int(max(pool.max(initial=0), 0 if gold is None or not gold.size else gold.max())) + 1
            if n_answers > LIMITS["n_answers"]:  # checked before the (P, Q, n_answers) counts are allocated
                raise TableError(
                    f"pool_answers: category {n_answers - 1} implies {n_answers} answer categories, above the limit of "
                    f"{LIMITS['n_answers']:g}; number the answer categories 0, 1, 2, ..."
                )
        arrays["answer_probs"] = mv_probs_from_pool(pool, int(n_answers))
    validate_arrays(arrays, manifest)
    provenance = dict(manifest["provenance"])
    from iapo_gym.tables.importer import release_arrays_match

    if release_arrays_match(provenance, manifest["checksums"]) is False:  # claims the release, holds other arrays
        provenance.update(modified=True, modified_reason="the arrays differ from the pinned release table")
    if manifest["strategy"] == "bon" and "outcome_probs" not in arrays:
        arrays["outcome_probs"] = np.full(arrays["outcome_values"].shape[:3], 1.0 / arrays["outcome_values"].shape[2])
    table = OutcomeTable(
        task=manifest["task"],
        strategy=manifest["strategy"],
        prompts=tuple(manifest["prompts"]),
        query_ids=tuple(manifest["query_ids"]),
        objectives=tuple(manifest["objectives"]),
        objective_ranges=np.asarray(manifest["objective_ranges"], dtype=np.float64),
        contexts=ContextSet.from_json(manifest["contexts"]),
        n_max=int(manifest["n_max"]),
        cost=arrays["cost"].astype(np.float64, copy=False),
        split=arrays["split"].astype(np.int8, copy=False),
        answer_probs=arrays.get("answer_probs"),
        gold=None if "gold" not in arrays else arrays["gold"].astype(np.int64, copy=False),
        outcome_values=arrays.get("outcome_values"),
        outcome_probs=arrays.get("outcome_probs"),
        cost_unit=manifest["cost_unit"],
        provenance=provenance,
        pool_size=pool_size,
    )
    return table
