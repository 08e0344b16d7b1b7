"""Strict argument checks shared by the env, the ledger and the agents.

Every check raises ONE clear error that names the argument and says what to pass instead. Numbers
are never silently truncated: ``2.9`` completions, ``"5"`` or ``True`` are refused, not turned
into ``2``, ``5`` or ``1``. Whole floats (``12.0``) and numpy integers are accepted.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from numpy.typing import NDArray


def whole_number(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` if it is a whole number (not a bool, string or fraction) in range.

    Raises:
        TypeError: not a number (strings, bools, arrays, None).
        ValueError: a fraction, NaN/inf, or outside ``[minimum, maximum]``.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a whole number; got {value!r} ({type(value).__name__})")
    if isinstance(value, numbers.Integral):
        out = int(value)
    else:
        f = float(value)
        if not (np.isfinite(f) and f.is_integer()):
            raise ValueError(f"{name} must be a whole number; got {value!r} (round it yourself if you meant that)")
        out = int(f)
    if (minimum is not None and out < minimum) or (maximum is not None and out > maximum):
        if minimum is not None and maximum is not None:
            raise ValueError(f"{name} must lie in {minimum}..{maximum}; got {out}")
        if minimum is not None:
            raise ValueError(f"{name} must be >= {minimum}; got {out}")
        raise ValueError(f"{name} must be <= {maximum}; got {out}")
    return out


def finite_real(value: Any, name: str, *, minimum: float | None = None, strict: bool = False) -> float:
    """``value`` as a finite ``float`` (not a bool or string), ``>= minimum`` (``> minimum`` if ``strict``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number; got {value!r} ({type(value).__name__})")
    f = float(value)
    if not np.isfinite(f):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    if minimum is not None and (f <= minimum if strict else f < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g}; got {value!r}")
    return f


def whole_array(value: Any, name: str) -> NDArray[np.int64]:
    """``value`` as an int64 array if every entry is a whole number (integer dtype or whole floats).

    Bool, string, object and fractional inputs are refused instead of being cast.
    """
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    kind = arr.dtype.kind
    if kind in "iu":
        if kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{name} holds values beyond int64")
        return arr.astype(np.int64, copy=False)
    if kind == "f":
        if arr.size and not (np.all(np.isfinite(arr)) and np.all(arr == np.floor(arr))):
            raise ValueError(f"{name} must hold whole numbers; got fractional or non-finite values")
        if arr.size and np.abs(arr).max() >= 2.0**63:
            raise ValueError(f"{name} holds values beyond int64")
        return arr.astype(np.int64)
    if arr.dtype == object and arr.size:
        # python ints too large for int64, Fractions, Decimals...: check one by one, then cast
        flat = [whole_number(v, name) for v in arr.reshape(-1)]
        try:
            return np.asarray(flat, dtype=np.int64).reshape(arr.shape)
        except OverflowError:
            raise ValueError(f"{name} holds values beyond int64") from None
    if arr.size == 0 and kind not in "bUSO":
        return arr.astype(np.int64)
    raise TypeError(f"{name} must hold whole numbers (an int array); got dtype {arr.dtype}")


def finite_weights(weights: Any, n_objectives: int, name: str = "weights") -> NDArray[np.float64]:
    """Context weights as a ``(C, K + 1)`` float64 array: finite, the last column (cost) ``>= 0``."""
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be numbers of shape (C, {n_objectives + 1}); got {type(weights).__name__}") from None
    if w.ndim == 1:
        w = w[None, :]
    if w.ndim != 2 or w.shape[1] != n_objectives + 1:
        raise ValueError(
            f"{name} must have shape (C, {n_objectives + 1}) (K={n_objectives} objective weights, then the "
            f"cost magnitude); got {np.shape(weights)}"
        )
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name} must be finite; got NaN or inf (drop or replace those contexts)")
    from iapo_gym.tables.validation import LIMITS

    if w.size and np.abs(w).max() > LIMITS["weight"]:
        raise ValueError(f"{name} must have magnitude <= {LIMITS['weight']:g}; got {np.abs(w).max():g} (rescale the weights)")
    if np.any(w[:, -1] < 0):
        raise ValueError(f"the cost weight (last column of {name}) is a magnitude and must be >= 0; pass -w_cost")
    return w
