"""Deployment contexts: preference weights over the K objectives plus a cost weight.

A context is a vector ``c = (w_1..w_K, w_cost)`` with ``w_cost >= 0`` a *magnitude*: utilities
subtract ``w_cost * sum(cost)``. A task carries a finite :class:`ContextSet` (the paper's setting);
continuous context distributions live beside it (see ``iapo_gym.continuous``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, eq=False)
class ContextSet:
    """A finite set of contexts with a sampling distribution.

    Attributes:
        names: one label per context, e.g. ``"low"`` or ``"w0.3-0.7/high"``.
        weights: ``(C, K + 1)`` float64; columns ``0..K-1`` weight the objectives, the last
            column is the non-negative cost weight.
        probs: ``(C,)`` float64 context distribution (sums to 1).
    """

    names: tuple[str, ...]
    weights: NDArray[np.float64]
    probs: NDArray[np.float64] = field(default=None)  # type: ignore[arg-type]  # None: uniform, set in __post_init__

    def __post_init__(self) -> None:
        w = np.ascontiguousarray(self.weights, dtype=np.float64)
        if w.ndim != 2 or w.shape[0] != len(self.names) or w.shape[1] < 2:
            raise ValueError(
                f"context weights must have shape (C, K+1) with C={len(self.names)} names; got {w.shape}"
            )
        if not np.all(np.isfinite(w)):
            raise ValueError("context weights contain NaN or inf")
        if np.any(w[:, -1] < 0):
            raise ValueError("the cost weight (last column) is a magnitude and must be >= 0")
        p = np.full(len(self.names), 1.0 / len(self.names)) if self.probs is None else np.asarray(
            self.probs, dtype=np.float64
        )
        if p.shape != (len(self.names),) or np.any(p < 0) or not np.isclose(p.sum(), 1.0, atol=1e-9):
            raise ValueError(f"context probabilities must be {len(self.names)} non-negative numbers summing to 1")
        w.setflags(write=False)
        p = p.copy()
        p.setflags(write=False)
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "probs", p)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def n_objectives(self) -> int:
        """K, the number of task objectives (the cost weight excluded)."""
        return self.weights.shape[1] - 1

    def sample(self, rng: np.random.Generator, size: int | None = None) -> NDArray[np.int64] | int:
        """Draw context indices from :attr:`probs` with ``rng``."""
        if size is None:  # one context (an env's reset): the same comparisons on the cached CDF, without arrays
            return min(bisect.bisect_right(self._cdf_values(), rng.random()), len(self.names) - 1)
        u = rng.random(size)
        idx = np.minimum(np.searchsorted(np.cumsum(self.probs), u, side="right"), len(self.names) - 1)
        return idx.astype(np.int64)

    def _cdf_values(self) -> list[float]:
        """``np.cumsum(probs)`` as Python floats (the same float64 values), built once: ``probs`` is read-only."""
        cdf = self.__dict__.get("_cdf")
        if cdf is None:
            cdf = np.cumsum(self.probs).tolist()
            object.__setattr__(self, "_cdf", cdf)
        return cdf

    def index_of(self, weights: NDArray[np.floating]) -> NDArray[np.int64] | int:
        """Index of the context whose weight vector is nearest to ``weights`` (``(K+1,)`` or ``(B, K+1)``)."""
        w = np.asarray(weights, dtype=np.float64)
        if w.shape[-1:] != (self.weights.shape[1],) or not np.all(np.isfinite(w)):
            raise ValueError(
                f"weights must be finite vectors of {self.weights.shape[1]} numbers (K objective weights, then the "
                f"cost weight); got shape {w.shape}" + ("" if np.all(np.isfinite(w)) else " with NaN or inf")
            )
        d = np.abs(w[..., None, :] - self.weights).sum(-1)
        idx = d.argmin(-1)
        return int(idx) if idx.ndim == 0 else idx

    def to_json(self) -> dict:
        """Plain-JSON form used in table manifests."""
        return {"names": list(self.names), "weights": self.weights.tolist(), "probs": self.probs.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> ContextSet:
        """Inverse of :meth:`to_json`."""
        return cls(tuple(data["names"]), np.asarray(data["weights"], dtype=np.float64), np.asarray(data["probs"]))


def cost_contexts(coefficients: dict[str, float]) -> ContextSet:
    """MV-style contexts ``(1.0, coeff)``, one per budget level (the paper: low 0.0, mid 0.2, high 1.0)."""
    names = tuple(coefficients)
    weights = np.array([[1.0, float(coefficients[n])] for n in names])
    return ContextSet(names, weights)


def preference_contexts(
    objective_names: tuple[str, str],
    cost_levels: dict[str, float],
    steps: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
) -> ContextSet:
    """BoN contexts: weight pairs ``(w, 1 - w)`` for ``w`` in ``steps`` times cost levels (9 x 3 = 27)."""
    names, rows = [], []
    for level, coeff in cost_levels.items():
        for w in steps:
            names.append(f"{objective_names[0]}={w:.1f},{objective_names[1]}={1 - w:.1f},cost={level}")
            rows.append([w, 1.0 - w, float(coeff)])
    return ContextSet(tuple(names), np.array(rows))
