"""Import the IAPO paper's released tables (pickles of the authors' classes) safely.

The release (github.com/IAPO-AAAI25/IAPO-PSST, folder ``data/``) ships Python pickles of the
authors' environment objects. Unpickling runs whatever callables a pickle names, so these files are
read ONLY through :class:`RestrictedUnpickler`, whose ``find_class`` allows:

* numpy array reconstruction: ``numpy.core.multiarray._reconstruct`` (and the ``numpy._core``
  spelling of numpy 2), ``numpy.ndarray``, ``numpy.dtype``, ``multiarray.scalar``,
  ``numeric._frombuffer``;
* the numpy random generator the authors saved in ``env.rng``: every ``numpy.random`` global the
  pickle needs is mapped to an *inert stand-in* that swallows its state (nothing of numpy.random
  is ever called);
* the authors' classes (``Envs.catMV.catMV.CategoricalMVEnv``, ``CostContext``,
  ``Envs.catBoN.catBoN.CategoricalBoNEnv``, ``Context``,
  ``Envs.synthBernoulli.synthBernoulli.SyntheticBernoulliEnv``, ...), mapped to inert stand-ins
  that only store their pickled ``__dict__`` (their module is never imported) apart from their
  own attributes, so pickled state cannot spoof what the importer records (``source_class``).

Every other global is refused with :class:`TableImportError` naming it, *before* it is looked up
or called.

Conversion (one :class:`~iapo_gym.tables.format.OutcomeTable` per released env):

* MV (``CategoricalMVEnv``: ``cat_probs (P, Xtr, C)``, ``answers``, ``cat_probs_te``,
  ``answers_te``, ``cost_per_prompt (P,)``, ``cost_coeffs {low, mid, high}``,
  ``context_distribution``, ``N_max``) -> ``strategy="mv"``; queries are the train queries then
  the test queries (``split`` 0 / 1, ids ``train-<j>`` / ``test-<j>``), ``cost`` the per-prompt
  cost broadcast to ``(P, Q)``, contexts ``(1, coeff)`` in the order low, mid, high with the
  released ``context_distribution``, objective ``("correct",)`` in ``[0, 1]``.
* BoN (``CategoricalBoNEnv``: ``outcome_vectors_train (P, Q, M, K)``, ``outcome_probs_train``,
  the same for test, ``cost_per_prompt``, ``weights`` as (K+1)-tuples whose last entry is the
  (non-positive) cost weight, ``context_distribution``, ``N_max``) -> ``strategy="bon"``; the
  cost weight is stored as its magnitude; the declared objective range is the first of [0, 1],
  [-1, 1], [0, 4] (the paper's o_max values) holding every released value, else the observed
  min/max; HelpfulHarmless objectives are named ``("helpful", "harmless")``, others
  ``objective-<k>``; context names read ``helpful=0.3,harmless=0.7,cost=1``.
* Synthetic Bernoulli (``SyntheticBernoulliEnv``: ``success_probs`` / ``success_probs_test``
  dicts of tiers easy/medium/hard, each ``(P, X_t)``) -> ``strategy="mv"`` with two answer
  categories (0 wrong, 1 right, gold 1); the tiers are concatenated (query ids
  ``train-easy-<j>`` ...). The authors draw a tier, then a query in it; the pooled table is exact
  when the tier distribution is proportional to the tier sizes and otherwise records the released
  ``tier_distribution`` in the provenance.

Prompts are ids ``prompt-<i>`` (the release carries no prompt texts). Provenance records the
source file name, its sha256 and git blob id, the release commit and the original class.

Integrity and resource limits, all checked before anything is unpickled or allocated:

* the bytes are compared with the pinned release (:data:`RELEASE_BLOBS`, :data:`RELEASE_SHA256`);
  a file matching none is refused (:class:`ReleaseMismatchError`) unless ``allow_modified=True``,
  and its tables then carry ``provenance["modified"] = True``;
* :func:`scan_pickle` walks the opcodes first and refuses memo indices beyond the opcode count;
* arrays are rebuilt only from raw bytes whose length matches the declared shape and dtype
  (``numpy.ndarray`` cannot be called; object dtypes are refused).

API: :func:`import_released_all` returns every table of a file (HH and SB hold several envs);
:func:`import_released` returns the single table of a one-env file (MATH, CQA) or the ``index``-th.
"""

from __future__ import annotations

import _compat_pickle
import hashlib
import importlib
import io
import math
import pickle
import pickletools
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from iapo_gym.contexts import ContextSet
from iapo_gym.tables.format import OutcomeTable
from iapo_gym.tables.validation import TableError, validate_table

__all__ = [
    "RELEASE_BLOBS",
    "RELEASE_COMMIT",
    "RELEASE_SHA256",
    "RELEASE_FILES",
    "MAX_PICKLE_BYTES",
    "ReleaseMismatchError",
    "RestrictedUnpickler",
    "TableImportError",
    "git_blob_id",
    "is_modified",
    "release_arrays_match",
    "release_match",
    "release_status",
    "scan_pickle",
    "import_released",
    "import_released_all",
    "import_released_bytes",
    "restricted_load",
]

#: Commit of github.com/IAPO-AAAI25/IAPO-PSST whose ``data/`` folder holds the released tables.
RELEASE_COMMIT = "ba274e4bed9283476c7efe52481e6d9bdf2d2947"

#: Released file name -> task name used by the env ids.
RELEASE_FILES: dict[str, str] = {
    "MATH_final.pkl": "MATH",
    "CQA_final.pkl": "CommonsenseQA",
    "HH_final.pkl": "HelpfulHarmless",
    "Summarization_final.pkl": "Summarization",
    "SB_final.pkl": "SynthBernoulli",
}

#: Git blob ids of the released files at :data:`RELEASE_COMMIT` (``git hash-object FILE``).
RELEASE_BLOBS: dict[str, str] = {
    "MATH_final.pkl": "50a3f35a26c689c611f92a32248624c7e9bcc302",
    "CQA_final.pkl": "18307bad4f8d71098546fe887e064436015ef3dc",
    "HH_final.pkl": "d6043f39466a98048c31f75654c84f4c0bf47fa5",
    "Summarization_final.pkl": "cfea635c99b5665f3d68aa0d89e91d4a67aa6481",
    "SB_final.pkl": "50b002e6334eab0b1cb6c4bb721bda1b493fbf79",
}

#: sha256 digests known for some released files.
RELEASE_SHA256: dict[str, str] = {
    "MATH_final.pkl": "1979a97ee6dc9cb35e3071651c40be42b281c215081195ef0d8b1ef9b334d7d9",
}


#: sha256 of the arrays of each converted release table (the ``checksums`` of its manifest), per
#: released file and env index: a table directory that claims to be a release is checked against them.
RELEASE_TABLE_CHECKSUMS: dict[str, tuple[dict[str, str], ...]] = {
    "MATH_final.pkl": (
        {
            "cost": "b183d2430beaf955b7f4b1ee5bca194563c1864f989ef5e0b62371fc84b53359",
            "split": "f1114ec355dff65f46a7d943e15d3cb9bf74f10d4f46ee65ea7933ec1141c1e6",
            "gold": "251e279507a314220b5dfda4d5067955b77e806dcb328992fdbf0d2be27984ad",
            "answer_probs": "a5278b62ea3aa996e8957c53e82a3ad4779c502f802c2c9836d08a49d4b6a2d6",
        },
    ),
}


class TableImportError(TableError, pickle.UnpicklingError):
    """A released file could not be imported (a refused global, an unknown layout, bad arrays)."""


# ---------------------------------------------------------------------------- inert stand-ins
class InertObject:
    """Stand-in for a pickled class: accepts any constructor arguments and state, runs nothing.

    The class attribute ``_pickled_global`` names the global it replaces; the pickled state lands in
    the separate dict :attr:`pickled_state` (never in the instance ``__dict__``), so a pickle cannot
    shadow ``_pickled_global`` or any other attribute the importer reads.
    """

    _pickled_global = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        object.__setattr__(self, "_inert_state", {})

    @property
    def pickled_state(self) -> dict[str, Any]:
        """The pickled ``__dict__`` of the authors' object (string keys)."""
        state = self.__dict__.get("_inert_state")
        if state is None:  # created by NEWOBJ / _reconstructor without __init__
            state = {}
            object.__setattr__(self, "_inert_state", state)
        return state

    def __setstate__(self, state: Any) -> None:
        if (
            isinstance(state, tuple)
            and len(state) == 2
            and all(part is None or isinstance(part, dict) for part in state)
        ):  # the (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.pickled_state.update({str(k): v for k, v in state.items()})
        else:
            self.pickled_state["_state"] = state

    def __getattr__(self, name: str) -> Any:  # read access to the pickled attributes, for inspection
        state = self.__dict__.get("_inert_state") or {}
        if name in state and not name.startswith("__"):
            return state[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is an inert stand-in; its attributes cannot be set")

    def __repr__(self) -> str:
        return f"<inert stand-in for {type(self)._pickled_global}>"


_STANDIN_CACHE: dict[tuple[str, str], type] = {}


def _standin(module: str, name: str) -> type:
    """A distinct inert class per pickled global (so the converter can tell them apart)."""
    key = (module, name)
    if key not in _STANDIN_CACHE:
        _STANDIN_CACHE[key] = type(name, (InertObject,), {"_pickled_global": f"{module}.{name}"})
    return _STANDIN_CACHE[key]


def _inert_factory(module: str, name: str) -> Callable[..., InertObject]:
    """A callable standing in for a numpy.random constructor function: returns an inert object."""
    cls = _standin(module, name)

    def make(*args: Any, **kwargs: Any) -> InertObject:
        return cls()

    return make


# ---------------------------------------------------------------------------- the allow-list
def _numpy_attr(modules: tuple[str, ...], name: str) -> Any:
    for mod in modules:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise TableImportError(f"this numpy has none of {[f'{m}.{name}' for m in modules]}")


#: Most dimensions a released array may have.
_MAX_NDIM = 32


def _checked_dtype(dtype: Any, what: str) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in "biufcSU" or dtype.itemsize == 0:
        raise TableImportError(f"refused {what} with dtype {dtype!r}: released tables hold numeric arrays only")
    return dtype


def _checked_shape(shape: Any, what: str) -> tuple[int, ...]:
    if (
        not isinstance(shape, tuple)
        or len(shape) > _MAX_NDIM
        or not all(isinstance(d, int | np.integer) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise TableImportError(f"refused {what} with shape {shape!r}")
    return tuple(int(d) for d in shape)


class _SafeArray(np.ndarray):
    """What the pickle global ``numpy.ndarray`` resolves to; it cannot be called.

    Calling ``numpy.ndarray(shape, dtype)`` would allocate an arbitrary shape before anything is
    checked. ``_reconstruct`` builds an empty one and BUILD fills it through :meth:`__setstate__`,
    which checks that the declared shape and dtype describe exactly the raw bytes the pickle
    carries before numpy sees them. Converted with ``np.asarray`` later.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> _SafeArray:
        raise TableImportError(
            "refused call of numpy.ndarray(...): released tables rebuild arrays through _reconstruct and BUILD"
        )

    def __reduce__(self) -> Any:  # never re-pickled as this class
        return np.asarray(self).__reduce__()

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise TableImportError("refused array state: expected numpy's (version, shape, dtype, fortran, data)")
        shape, dtype, fortran, raw = state[-4:]
        shape = _checked_shape(shape, "array state")
        dtype = _checked_dtype(dtype, "array state")
        if not isinstance(raw, bytes | bytearray) or isinstance(fortran, np.ndarray):
            raise TableImportError(f"refused array state: data is a {type(raw).__name__}, expected bytes")
        if math.prod(shape) * dtype.itemsize != len(raw):
            raise TableImportError(
                f"refused array state: shape {shape} x {dtype.itemsize} bytes does not match the {len(raw)} bytes stored"
            )
        super().__setstate__(state)


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """``multiarray._reconstruct`` limited to what numpy writes: a plain empty ndarray to fill by BUILD."""
    if subtype is not _SafeArray:
        raise TableImportError(f"refused array reconstruction of {subtype!r}: only numpy.ndarray is allowed")
    if not isinstance(shape, tuple) or len(shape) != 1 or shape[0] != 0:
        raise TableImportError(f"refused array reconstruction with shape {shape!r}: numpy pickles start from (0,)")
    if not isinstance(dtype, bytes | str):
        raise TableImportError(f"refused array reconstruction with dtype {dtype!r}: numpy pickles start from b'b'")
    return _numpy_attr(_MULTIARRAY, "_reconstruct")(_SafeArray, (0,), dtype)


def _safe_scalar(dtype: Any, data: Any = None) -> Any:
    """``multiarray.scalar`` for numeric dtypes whose bytes are exactly one item."""
    _checked_dtype(dtype, "scalar")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise TableImportError(f"refused scalar of dtype {dtype!r}: expected {dtype.itemsize} bytes")
    return _numpy_attr(_MULTIARRAY, "scalar")(dtype, data)


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """``numeric._frombuffer`` (protocol-5 arrays) when ``shape`` and ``dtype`` describe exactly ``buf``."""
    dtype = _checked_dtype(dtype, "array buffer")
    shape = _checked_shape(shape, "array buffer")
    size = memoryview(buf).nbytes if isinstance(buf, bytes | bytearray | pickle.PickleBuffer) else -1
    if size != math.prod(shape) * dtype.itemsize or order not in ("C", "F"):
        raise TableImportError(f"refused array buffer: shape {shape} of {dtype} does not match {size} bytes")
    return _numpy_attr(_NUMERIC, "_frombuffer")(buf, dtype, shape, order)


def _safe_dtype(obj: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """``numpy.dtype`` for the plain type codes numpy's pickles name (``'f8'``, ``'i8'``, ...)."""
    if not isinstance(obj, str) or len(obj) > 8 or not isinstance(align, bool) or not isinstance(copy, bool):
        raise TableImportError(f"refused numpy.dtype({obj!r}, ...): released tables use plain type codes")
    try:
        return np.dtype(obj, align, copy)
    except TypeError as exc:
        raise TableImportError(f"refused numpy.dtype({obj!r}): {exc}") from exc


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")
#: (module, name) -> how to resolve it (lazily, so a numpy without one spelling still works).
_NUMPY_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): lambda: _SafeArray,
    ("numpy", "dtype"): lambda: _safe_dtype,
    **{(m, "_reconstruct"): (lambda: _safe_reconstruct) for m in _MULTIARRAY},
    **{(m, "scalar"): (lambda: _safe_scalar) for m in _MULTIARRAY},
    **{(m, "_frombuffer"): (lambda: _safe_frombuffer) for m in _NUMERIC},
}

#: numpy.random globals a pickled Generator / RandomState may name; all become inert.
_RANDOM_FUNCTIONS = {
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
}
_RANDOM_CLASSES = {
    ("numpy.random._pcg64", "PCG64"),
    ("numpy.random._pcg64", "PCG64DXSM"),
    ("numpy.random._mt19937", "MT19937"),
    ("numpy.random._philox", "Philox"),
    ("numpy.random._sfc64", "SFC64"),
    ("numpy.random._generator", "Generator"),
    ("numpy.random.mtrand", "RandomState"),
    ("numpy.random.bit_generator", "SeedSequence"),
}

#: The authors' plain data classes, by class name; their module must start with ``Envs.``.
AUTHOR_CLASSES = frozenset(
    {"CategoricalMVEnv", "CostContext", "CategoricalBoNEnv", "Context", "SyntheticBernoulliEnv"}
)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the allow-listed globals (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - documented on the class
        written = f"{module}.{name}"
        # protocol 0-2 pickles spell Python 3 globals by their Python 2 names (__builtin__, commands)
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        if key in _NUMPY_ALLOWED:
            return _NUMPY_ALLOWED[key]()
        if key in _RANDOM_FUNCTIONS:
            return _inert_factory(module, name)
        if key in _RANDOM_CLASSES:
            return _standin(module, name)
        if module.split(".")[0] == "Envs" and name in AUTHOR_CLASSES:
            return _standin(module, name)
        alias = "" if written == f"{module}.{name}" else f" (written as {written})"
        raise TableImportError(
            f"refused global {module}.{name}{alias}: a released IAPO table may only reference numpy arrays, "
            "numpy random state and the authors' data classes; this file is not a released table "
            "(or has been tampered with) and was not executed"
        )

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102
        raise TableImportError(f"refused persistent id {pid!r}: released tables carry none")


#: Largest released file read (bytes); the released tables are far smaller (MATH: 320 kB).
MAX_PICKLE_BYTES = 2**30

_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def scan_pickle(data: bytes) -> int:
    """Walk the opcodes of ``data`` without building anything; return how many there are.

    Refuses, before a byte is unpickled, what would make the C unpickler allocate far more than the
    file holds: a memo index larger than the number of opcodes (``LONG_BINPUT 2**27`` in a 9-byte
    pickle makes the C unpickler grow its memo to 2 GB; a genuine pickler numbers memo entries
    0, 1, 2, ...), lengths that run past the end of the file, and files over
    :data:`MAX_PICKLE_BYTES`.
    """
    if len(data) > MAX_PICKLE_BYTES:
        raise TableImportError(
            f"the file has {len(data)} bytes, above the limit of {MAX_PICKLE_BYTES}; it is not a released table"
        )
    count = 0
    puts: list[int] = []
    try:
        for op, arg, _pos in pickletools.genops(data):
            count += 1
            if op.name in _MEMO_PUTS and isinstance(arg, int | str):
                puts.append(int(arg))
    except (ValueError, TypeError, EOFError, struct.error, UnicodeDecodeError) as exc:
        raise TableImportError(f"could not unpickle the file: malformed pickle ({exc})") from exc
    if puts and max(puts) >= count:
        raise TableImportError(
            f"refused memo index {max(puts)} in a pickle of {count} opcodes: it would make the unpickler "
            "allocate far more than the file holds; the file is damaged or hostile"
        )
    return count


def restricted_load(data: bytes) -> Any:
    """Scan ``data`` (:func:`scan_pickle`) and unpickle it with :class:`RestrictedUnpickler`.

    Raises:
        TableImportError: a refused global, memo index or array, or a malformed pickle.
    """
    scan_pickle(data)
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except TableImportError:
        raise
    except Exception as exc:  # truncated or malformed pickles, numpy errors on bad array payloads
        raise TableImportError(f"could not unpickle the file: {type(exc).__name__}: {exc}") from exc


def git_blob_id(data: bytes) -> str:
    """The git blob id of ``data`` (what ``git hash-object FILE`` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ---------------------------------------------------------------------------- conversion helpers
def _get(env: InertObject, key: str, source: str) -> Any:
    if key not in env.pickled_state:
        raise TableImportError(f"{source}: the released {type(env)._pickled_global} has no attribute {key!r}")
    return env.pickled_state[key]


def _array(value: Any, name: str, source: str, ndim: int, dtype: type = np.float64) -> np.ndarray:
    if not isinstance(value, np.ndarray | list | tuple) and not np.isscalar(value):
        raise TableImportError(f"{source}: {name} is a {type(value).__name__}, expected a numeric array")
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TableImportError(f"{source}: {name} has dtype {arr.dtype}, expected numbers")
    if arr.ndim != ndim:
        raise TableImportError(f"{source}: {name} has shape {arr.shape}, expected {ndim} dimensions")
    return arr.astype(dtype, copy=False)


def _prompt_ids(env: InertObject, n_prompts: int) -> tuple[str, ...]:
    prompts = env.pickled_state.get("prompts")
    if isinstance(prompts, list | tuple) and len(prompts) == n_prompts and all(isinstance(p, str) for p in prompts):
        return tuple(prompts)
    return tuple(f"prompt-{i}" for i in range(n_prompts))


def _n_max(env: InertObject, source: str) -> int:
    n_max = _get(env, "N_max", source)
    if isinstance(n_max, np.ndarray):
        n_max = n_max.item()
    if not isinstance(n_max, int | np.integer) or isinstance(n_max, bool):
        raise TableImportError(f"{source}: N_max is {n_max!r}, expected an integer")
    return int(n_max)


def _convert_mv(env: InertObject, task: str, source: str, provenance: dict) -> OutcomeTable:
    tr = _array(_get(env, "cat_probs", source), "cat_probs", source, 3)
    te = _array(_get(env, "cat_probs_te", source), "cat_probs_te", source, 3)
    gold_tr = _array(_get(env, "answers", source), "answers", source, 1, np.int64)
    gold_te = _array(_get(env, "answers_te", source), "answers_te", source, 1, np.int64)
    cost_p = _array(_get(env, "cost_per_prompt", source), "cost_per_prompt", source, 1)
    coeffs = _get(env, "cost_coeffs", source)
    dist = _array(_get(env, "context_distribution", source), "context_distribution", source, 1)
    if tr.shape[0] != te.shape[0] or tr.shape[2] != te.shape[2]:
        raise TableImportError(f"{source}: cat_probs {tr.shape} and cat_probs_te {te.shape} disagree")
    if not isinstance(coeffs, dict) or set(coeffs) != {"low", "mid", "high"}:
        raise TableImportError(f"{source}: cost_coeffs must map low/mid/high to numbers; got {coeffs!r}")
    names = ("low", "mid", "high")
    weights = np.array([[1.0, abs(float(coeffs[n]))] for n in names])
    n_q = tr.shape[1] + te.shape[1]
    return OutcomeTable(
        task=task,
        strategy="mv",
        prompts=_prompt_ids(env, tr.shape[0]),
        query_ids=tuple(f"train-{j}" for j in range(tr.shape[1])) + tuple(f"test-{j}" for j in range(te.shape[1])),
        objectives=("correct",),
        objective_ranges=np.array([[0.0, 1.0]]),
        contexts=ContextSet(names, weights, dist),
        n_max=_n_max(env, source),
        cost=np.broadcast_to(cost_p[:, None], (tr.shape[0], n_q)).copy(),
        split=np.concatenate([np.zeros(tr.shape[1], np.int8), np.ones(te.shape[1], np.int8)]),
        answer_probs=np.concatenate([tr, te], axis=1),
        gold=np.concatenate([gold_tr, gold_te]),
        cost_unit="paper cost units per completion",
        provenance=provenance,
    )


#: Objective names of the released BoN tasks (the paper's wording); others get ``objective-<k>``.
BON_OBJECTIVES: dict[str, tuple[str, ...]] = {"HelpfulHarmless": ("helpful", "harmless")}

#: Declared objective ranges tried in order; the first that holds every released value is used.
_RANGE_CANDIDATES = ((0.0, 1.0), (-1.0, 1.0), (0.0, 4.0))


def _bon_context_names(objectives: tuple[str, ...], weights: np.ndarray) -> tuple[str, ...]:
    return tuple(
        ",".join(f"{o}={x:g}" for o, x in zip(objectives, row[:-1], strict=True)) + f",cost={row[-1]:g}" for row in weights
    )


def _declared_ranges(values: np.ndarray, k: int) -> tuple[np.ndarray, str]:
    if not values.size:
        return np.tile([0.0, 1.0], (k, 1)), "[0, 1] (no values released)"
    lo, hi = values.min(axis=(0, 1, 2)), values.max(axis=(0, 1, 2))
    for a, b in _RANGE_CANDIDATES:
        if lo.min() >= a and hi.max() <= b:
            return np.tile([a, b], (k, 1)), f"[{a:g}, {b:g}]: the smallest standard range holding every released value"
    return np.stack([lo, hi], axis=1), "observed min/max of the released outcome values"


def _convert_bon(env: InertObject, task: str, source: str, provenance: dict) -> OutcomeTable:
    v_tr = _array(_get(env, "outcome_vectors_train", source), "outcome_vectors_train", source, 4)
    p_tr = _array(_get(env, "outcome_probs_train", source), "outcome_probs_train", source, 3)
    v_te = env.pickled_state.get("outcome_vectors_test")
    p_te = env.pickled_state.get("outcome_probs_test")
    v_te = v_tr[:, :0] if v_te is None else _array(v_te, "outcome_vectors_test", source, 4)
    p_te = p_tr[:, :0] if p_te is None else _array(p_te, "outcome_probs_test", source, 3)
    if v_tr.shape[0] != v_te.shape[0] or v_tr.shape[2:] != v_te.shape[2:]:
        raise TableImportError(f"{source}: outcome_vectors_train {v_tr.shape} and _test {v_te.shape} disagree")
    n_p, n_tr, _, k = v_tr.shape
    n_te = v_te.shape[1]
    cost_p = _array(_get(env, "cost_per_prompt", source), "cost_per_prompt", source, 1)
    raw_w = _get(env, "weights", source) if "weights" in env.pickled_state else None
    if raw_w is None:  # fall back to the Context objects
        raw_w = [getattr(c, "weights", None) for c in _get(env, "_contexts", source)]
    w = _array([tuple(r) for r in raw_w], "weights", source, 2)
    if w.shape[1] != k + 1:
        raise TableImportError(f"{source}: weights have {w.shape[1]} entries per context; expected K+1 = {k + 1}")
    if np.any(w[:, -1] > 0):
        raise TableImportError(f"{source}: the released cost weights (last entry) must be <= 0; got {w[:, -1]}")
    w = w.copy()
    w[:, -1] = -w[:, -1]
    w[:, -1] += 0.0  # no -0.0 in manifests
    dist = _array(_get(env, "context_distribution", source), "context_distribution", source, 1)
    values = np.concatenate([v_tr, v_te], axis=1)
    ranges, range_note = _declared_ranges(values, k)
    objectives = BON_OBJECTIVES.get(task, tuple(f"objective-{i}" for i in range(k)))
    if len(objectives) != k:
        objectives = tuple(f"objective-{i}" for i in range(k))
    return OutcomeTable(
        task=task,
        strategy="bon",
        prompts=_prompt_ids(env, n_p),
        query_ids=tuple(f"train-{j}" for j in range(n_tr)) + tuple(f"test-{j}" for j in range(n_te)),
        objectives=objectives,
        objective_ranges=ranges,
        contexts=ContextSet(_bon_context_names(objectives, w), w, dist),
        n_max=_n_max(env, source),
        cost=np.broadcast_to(cost_p[:, None], (n_p, n_tr + n_te)).copy(),
        split=np.concatenate([np.zeros(n_tr, np.int8), np.ones(n_te, np.int8)]),
        outcome_values=values,
        outcome_probs=np.concatenate([p_tr, p_te], axis=1),
        cost_unit="paper cost units per completion",
        provenance={**provenance, "objective_ranges": range_note},
    )


_TIERS = ("easy", "medium", "hard")


def _convert_sb(env: InertObject, task: str, source: str, provenance: dict) -> OutcomeTable:
    parts, ids, split = [], [], []
    for key, label, s in (("success_probs", "train", 0), ("success_probs_test", "test", 1)):
        tiers = _get(env, key, source)
        if not isinstance(tiers, dict) or any(t not in tiers for t in _TIERS):
            raise TableImportError(f"{source}: {key} must map easy/medium/hard to (P, X_t) arrays")
        for t in _TIERS:
            arr = _array(tiers[t], f"{key}[{t!r}]", source, 2)
            parts.append(arr)
            ids += [f"{label}-{t}-{j}" for j in range(arr.shape[1])]
            split += [s] * arr.shape[1]
    p_right = np.concatenate(parts, axis=1)
    n_p = p_right.shape[0]
    cost_p = _array(_get(env, "cost_per_prompt", source), "cost_per_prompt", source, 1)
    coeffs = _get(env, "cost_coeffs", source)
    names = ("low", "mid", "high")
    dist = _array(_get(env, "context_distribution", source), "context_distribution", source, 1)
    tier_dist = env.pickled_state.get("tier_distribution")
    return OutcomeTable(
        task=task,
        strategy="mv",
        prompts=_prompt_ids(env, n_p),
        query_ids=tuple(ids),
        objectives=("correct",),
        objective_ranges=np.array([[0.0, 1.0]]),
        contexts=ContextSet(names, np.array([[1.0, abs(float(coeffs[n]))] for n in names]), dist),
        n_max=_n_max(env, source),
        cost=np.broadcast_to(cost_p[:, None], p_right.shape).copy(),
        split=np.asarray(split, np.int8),
        answer_probs=np.stack([1.0 - p_right, p_right], axis=-1),
        gold=np.ones(len(ids), np.int64),
        cost_unit="paper cost units per completion",
        provenance={
            **provenance,
            "tier_distribution": None if tier_dist is None else np.asarray(tier_dist, float).tolist(),
        },
    )


_CONVERTERS = {
    "CategoricalMVEnv": _convert_mv,
    "CategoricalBoNEnv": _convert_bon,
    "SyntheticBernoulliEnv": _convert_sb,
}


def _task_for(path: Path) -> str:
    return RELEASE_FILES.get(path.name, path.name.split("_final")[0].split(".")[0])


def import_released_all(
    path: str | Path, task: str | None = None, *, allow_modified: bool = False
) -> list[OutcomeTable]:
    """Import every env of a released pickle as an :class:`OutcomeTable` (order as released).

    Args:
        path: a released ``*_final.pkl`` file.
        task: the task name (default: from the file name, e.g. ``MATH_final.pkl`` -> ``"MATH"``).
        allow_modified: import a file that is not byte-identical to a pinned release file; its
            tables are marked ``provenance["modified"] = True``.

    Raises:
        ReleaseMismatchError: the file matches no pinned release file and ``allow_modified`` is false.
        TableImportError: a refused global (nothing was executed), an unknown layout or bad arrays.
    """
    path = Path(path)
    return import_released_bytes(path.read_bytes(), path.name, task=task, allow_modified=allow_modified)


class ReleaseMismatchError(TableImportError):
    """A file in the authors' format is not byte-identical to any pinned release file."""


def release_match(data: bytes) -> str | None:
    """The released file ``data`` is (by git blob id and, where pinned, sha256), else ``None``."""
    blob = git_blob_id(data)
    sha = hashlib.sha256(data).hexdigest()
    for name, pinned in RELEASE_BLOBS.items():
        if pinned == blob and RELEASE_SHA256.get(name, sha) == sha:
            return name
    return None


def is_modified(provenance: Any) -> bool:
    """Whether a table's provenance says it comes from a file that is not the pinned release."""
    if not isinstance(provenance, dict):
        return False
    return provenance.get("modified") is True or provenance.get("matches_release") is False


def release_arrays_match(provenance: Any, checksums: Any) -> bool | None:
    """Whether array ``checksums`` equal the pinned ones of the release table ``provenance`` claims.

    ``None`` when no claim is made or nothing is pinned for that file (only MATH is pinned so far).
    """
    if not isinstance(provenance, dict) or provenance.get("matches_release") is not True:
        return None
    pinned = RELEASE_TABLE_CHECKSUMS.get(str(provenance.get("release_file") or provenance.get("source_file")))
    if pinned is None or not isinstance(checksums, dict):
        return None
    index = provenance.get("source_index", 0)
    if not isinstance(index, int) or not 0 <= index < len(pinned):
        return False
    return all(checksums.get(name) == digest for name, digest in pinned[index].items())


def release_status(provenance: Any, checksums: Any = None) -> str:
    """``"release"`` (verified against the pinned release), ``"MODIFIED"`` or ``"-"`` (not imported).

    With the manifest's array ``checksums``, a table that claims to be a pinned release table but
    holds other arrays (an edited table directory) is ``"MODIFIED"`` too.
    """
    if is_modified(provenance) or release_arrays_match(provenance, checksums) is False:
        return "MODIFIED"
    if isinstance(provenance, dict) and provenance.get("matches_release") is True:
        return "release"
    return "-"


def _mismatch(name: str, data: bytes) -> ReleaseMismatchError:
    expected = f"; the released {name} has git blob {RELEASE_BLOBS[name]}" if name in RELEASE_BLOBS else ""
    return ReleaseMismatchError(
        f"{name}: not a file of the IAPO paper's release (git blob {git_blob_id(data)}, sha256 "
        f"{hashlib.sha256(data).hexdigest()} match none of the pinned files{expected}); it is corrupted or "
        "modified and was not read. Re-download it (`iapo-gym data pull TASK`), or import it anyway with "
        "allow_modified=True (CLI: --allow-modified): its tables are then named and marked as modified"
    )


def import_released_bytes(
    data: bytes, file_name: str, task: str | None = None, *, allow_modified: bool = False
) -> list[OutcomeTable]:
    """:func:`import_released_all` for the bytes of a file named ``file_name`` (e.g. a download).

    The bytes are compared with the pinned release files before anything is unpickled.
    """
    path = Path(file_name)
    match = release_match(data)
    if match is None and not allow_modified:
        raise _mismatch(path.name, data)
    obj = restricted_load(data)
    envs = list(obj) if isinstance(obj, list | tuple) else [obj]
    if not envs:
        raise TableImportError(f"{path.name}: the file holds an empty list, no tables to import")
    task = task or (RELEASE_FILES[match] if match else _task_for(path))
    base = {
        "source_file": path.name,
        "source_sha256": hashlib.sha256(data).hexdigest(),
        "source_git_blob": git_blob_id(data),
        "release": f"github.com/IAPO-AAAI25/IAPO-PSST@{RELEASE_COMMIT}",
        "matches_release": match is not None,
        "release_file": match,
        "modified": match is None,
        "importer": "iapo_gym.tables.importer",
    }
    tables = []
    for i, env in enumerate(envs):
        source = f"{path.name}[{i}]" if len(envs) > 1 else path.name
        cls = type(env).__name__
        if not isinstance(env, InertObject) or cls not in _CONVERTERS:
            raise TableImportError(
                f"{source}: expected one of the authors' envs {sorted(_CONVERTERS)}; got {type(env).__name__}"
            )
        prov = {**base, "source_class": type(env)._pickled_global, "source_index": i, "source_count": len(envs)}
        try:
            table = _CONVERTERS[cls](env, task, source, prov)
        except TableImportError:
            raise
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise TableImportError(f"{source}: {exc}") from exc
        _validate(table, source)
        tables.append(table)
    return tables


def import_released(
    path: str | Path, index: int | None = None, task: str | None = None, *, allow_modified: bool = False
) -> OutcomeTable:
    """Import one table from a released pickle.

    A one-env file (MATH, CQA) gives its table; a file with several envs (HH, SB) needs ``index``
    (or use :func:`import_released_all`).
    """
    tables = import_released_all(path, task=task, allow_modified=allow_modified)
    if index is None:
        if len(tables) > 1:
            raise TableImportError(
                f"{Path(path).name} holds {len(tables)} envs; pass index=0..{len(tables) - 1} "
                "or use import_released_all()"
            )
        return tables[0]
    if not -len(tables) <= index < len(tables):
        raise TableImportError(f"{Path(path).name} holds {len(tables)} envs; index {index} is out of range")
    return tables[index]


def _validate(table: OutcomeTable, source: str) -> None:
    try:
        validate_table(table)
    except ValueError as exc:
        raise TableImportError(f"{source}: the converted table is invalid: {exc}") from exc
