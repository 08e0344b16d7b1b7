"""Arms ``(prompt, N)`` and their flat indices.

An arm is a prompt ``p`` (0-based) and a number of samples ``N`` in ``1..n_max``. Every array in
the project that is indexed by arm uses the flat index ``a = p * n_max + (N - 1)`` (prompt-major,
``N`` ascending), so ``Discrete(n_prompts * n_max)`` actions and ``(P, n_max)`` tables agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray


class Arm(NamedTuple):
    """One arm: ``prompt`` index and number of completions ``n`` (1-based)."""

    prompt: int
    n: int


def arm_index(prompt: ArrayLike, n: ArrayLike, n_max: int) -> NDArray[np.int64] | int:
    """Flat arm index ``prompt * n_max + (n - 1)``; works elementwise on arrays."""
    p = np.asarray(prompt, dtype=np.int64)
    k = np.asarray(n, dtype=np.int64)
    if np.any(k < 1) or np.any(k > n_max):
        raise ValueError(f"N must lie in 1..{n_max}; got {k.min()}..{k.max()}")
    out = p * n_max + (k - 1)
    return int(out) if out.ndim == 0 else out


@overload
def arm_from_index(index: int | np.integer, n_max: int) -> Arm: ...
@overload
def arm_from_index(index: NDArray[np.integer] | Sequence[int], n_max: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]: ...
@overload
def arm_from_index(index: ArrayLike, n_max: int) -> Arm | tuple[NDArray[np.int64], NDArray[np.int64]]: ...
def arm_from_index(index: ArrayLike, n_max: int) -> Arm | tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Inverse of :func:`arm_index`: ``(prompt, n)``; an :class:`Arm` for a scalar index."""
    a = np.asarray(index, dtype=np.int64)
    prompt, n = np.divmod(a, n_max)
    if a.ndim == 0:
        return Arm(int(prompt), int(n) + 1)
    return prompt, n + 1
