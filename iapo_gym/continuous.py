"""Continuous deployment contexts and their exact, vectorised oracle.

The paper restricts contexts to a finite set; here every task can also draw contexts from a
continuous distribution (:class:`ContinuousContexts`):

* **objective weights** ``(w_1..w_K) ~ Dirichlet(alpha)`` on the simplex (``alpha = 1``: uniform on
  the simplex). For MV tasks ``K = 1`` and the weight is always 1.
* **cost weight** ``w_cost`` (a magnitude, utilities subtract ``w_cost * cost``) uniform on
  ``[cost_low, cost_high]``, or log-uniform (``cost_scale="log"``, needs ``cost_low > 0``). The
  default range, :meth:`ContinuousContexts.for_table`, is ``[0, max cost level of the task's finite
  contexts]`` (MATH / CQA / Synth-Bernoulli: ``[0, 1.0]``), so the finite contexts lie inside it.

A fixed held-out sample (:meth:`ContinuousContexts.evaluation_sample`, 2,000 contexts from
``EVALUATION_SEED``) gives the exact continuous ACR ``mean_c Q(c, pi(c))``
(:func:`iapo_gym.oracle.acr` with equal context probabilities; the experiment runner's
``ExactEvaluator(env, "continuous")`` scores runs this way).

**Exact Q for thousands of contexts** (:func:`exact_q_values`). ``Q(c, p, N) = G(w, p, N) -
w_cost * N * cost(p)`` with ``G`` the expected aggregated objective (the cost term is linear in
``w_cost`` and exact with the mean cost per completion). ``G`` depends only on the objective
weights ``w``:

* MV: ``G = w_1 * credit(p, N)`` with a context-free credit (:func:`iapo_gym.oracle.q_values`, one
  multiply-add for any number of contexts).
* BoN with ``K = 2`` and non-negative weights (every Dirichlet draw): ``E[max of N]`` is positively
  homogeneous, ``G(w) = (w_1 + w_2) g(t)`` with ``t = w_1 / (w_1 + w_2)``, and for one
  (prompt, query) ``g(t)`` is **piecewise linear** in ``t``: the scores ``s_m(t) = t v_m1 + (1-t)
  v_m2`` keep their order between the breakpoints where two outcome lines cross, and with a fixed
  order ``E[max] = sum_j s_(j)(t) (F_j^N - F_{j-1}^N)`` is linear. So ``g`` is evaluated exactly
  (with :func:`iapo_gym.oracle.bon_expected_max`) at the ``<= M(M-1)/2 + 2`` breakpoints of each
  row once per table and query (cached), the rows' segments are pooled over the chosen queries as ramps
  ``sigma * (max(0, t - x) - max(0, t - x - d))``, and any number of contexts is read off sorted
  cumulative sums. Exact up to rounding (tests compare with the oracle to 1e-9).
* Anything else (``K > 2``, negative weights, or so many outcomes that the breakpoints outnumber
  the contexts) falls back to :func:`iapo_gym.oracle.q_values`, chunked over contexts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from iapo_gym import oracle
from iapo_gym.contexts import ContextSet
from iapo_gym.tables.format import OutcomeTable
from iapo_gym.utility import as_weights

__all__ = [
    "EVALUATION_SEED",
    "EVALUATION_SIZE",
    "ContinuousContexts",
    "exact_q_values",
    "ContinuousEvaluator",
    "distribution_of",
]

#: Seed of the held-out evaluation sample of contexts (fixed: every run is scored on the same sample).
EVALUATION_SEED = 20_250_810
#: Contexts in the held-out evaluation sample.
EVALUATION_SIZE = 2_000
_PL_CACHE_KEY = "continuous/bon_k2_breakpoints"
#: Rows x points x outcomes per working chunk of the breakpoint evaluation (bounds memory).
_PL_CHUNK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class ContinuousContexts:
    """A continuous distribution over contexts ``(w_1..w_K, w_cost)``.

    Attributes:
        n_objectives: ``K`` (MV tasks: 1, the weight is then always 1).
        alpha: Dirichlet concentration of the objective weights, one float per objective
            (a scalar is broadcast); ``1.0`` is uniform on the simplex.
        cost_low, cost_high: range of the cost weight ``w_cost`` (a magnitude, ``>= 0``).
        cost_scale: ``"uniform"`` on ``[cost_low, cost_high]`` or ``"log"`` (log-uniform,
            ``cost_low > 0``).
    """

    n_objectives: int
    alpha: tuple[float, ...] | float = 1.0
    cost_low: float = 0.0
    cost_high: float = 1.0
    cost_scale: Literal["uniform", "log"] = "uniform"

    def __post_init__(self) -> None:
        k = int(self.n_objectives)
        if k < 1:
            raise ValueError(f"n_objectives must be >= 1; got {k}")
        alpha = np.broadcast_to(np.asarray(self.alpha, dtype=np.float64), (k,))
        if np.any(alpha <= 0) or not np.all(np.isfinite(alpha)):
            raise ValueError(f"Dirichlet alpha must be positive and finite; got {self.alpha}")
        object.__setattr__(self, "n_objectives", k)
        object.__setattr__(self, "alpha", tuple(float(a) for a in alpha))
        lo, hi = float(self.cost_low), float(self.cost_high)
        if not (0.0 <= lo <= hi) or not np.isfinite(hi):
            raise ValueError(f"the cost range must satisfy 0 <= cost_low <= cost_high < inf; got [{lo}, {hi}]")
        if self.cost_scale not in ("uniform", "log"):
            raise ValueError(f"cost_scale must be 'uniform' or 'log'; got {self.cost_scale!r}")
        if self.cost_scale == "log" and lo <= 0.0:
            raise ValueError("a log-uniform cost weight needs cost_low > 0; raise cost_low or use cost_scale='uniform'")
        object.__setattr__(self, "cost_low", lo)
        object.__setattr__(self, "cost_high", hi)

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_table(
        cls,
        table: OutcomeTable,
        alpha: float | tuple[float, ...] = 1.0,
        cost_range: tuple[float, float] | None = None,
        cost_scale: Literal["uniform", "log"] = "uniform",
    ) -> ContinuousContexts:
        """The default distribution of a task: Dirichlet(alpha) weights, ``w_cost ~ U[0, max finite level]``."""
        if cost_range is None:
            cost_range = (0.0, float(np.max(table.contexts.weights[:, -1])))
        return cls(table.n_objectives, alpha, float(cost_range[0]), float(cost_range[1]), cost_scale)

    # ------------------------------------------------------------------ sampling
    @property
    def low(self) -> NDArray[np.float32]:
        """Lower bounds of a context vector (for a float32 ``Box`` observation space)."""
        return np.r_[np.zeros(self.n_objectives), self.cost_low].astype(np.float32)

    @property
    def high(self) -> NDArray[np.float32]:
        """Upper bounds of a context vector."""
        return np.r_[np.ones(self.n_objectives), self.cost_high].astype(np.float32)

    def sample(self, rng: np.random.Generator, size: int) -> NDArray[np.float64]:
        """``size`` contexts ``(size, K + 1)`` drawn with ``rng`` (float64; rows' weights sum to 1)."""
        size = int(size)
        if self.n_objectives == 1:
            w = np.ones((size, 1))
        else:
            w = rng.dirichlet(np.asarray(self.alpha), size=size)
        u = rng.random(size)
        if self.cost_scale == "log":
            cost = np.exp(np.log(self.cost_low) + u * (np.log(self.cost_high) - np.log(self.cost_low)))
        else:
            cost = self.cost_low + u * (self.cost_high - self.cost_low)
        return np.concatenate([w, cost[:, None]], axis=1)

    def evaluation_sample(self, size: int = EVALUATION_SIZE, seed: int = EVALUATION_SEED) -> NDArray[np.float64]:
        """The fixed held-out sample of contexts on which continuous ACR is measured, ``(size, K + 1)``."""
        return self.sample(np.random.default_rng(seed), size)

    def grid(self, n_weights: int = 9, n_costs: int = 3) -> ContextSet:
        """A finite grid over the support: evenly spaced interior simplex points x cost levels.

        ``K = 2``: ``w_1`` at the midpoints of ``n_weights`` equal cells of ``[0, 1]``; ``K = 1``: the
        weight 1; ``K > 2``: the ``n_weights`` points of a Dirichlet quasi-grid are not defined, so
        a ``ValueError`` names the fix. Cost levels sit at the midpoints of ``n_costs`` equal cells
        of the (log-)range, so nearest-grid-point deployment splits the support evenly.
        """
        if self.n_objectives == 1:
            obj = np.ones((1, 1))
        elif self.n_objectives == 2:
            t = (np.arange(int(n_weights)) + 0.5) / int(n_weights)
            obj = np.stack([t, 1.0 - t], axis=1)
        else:
            raise ValueError("grid() supports K <= 2 objectives; build a ContextSet by hand for K > 2")
        u = (np.arange(int(n_costs)) + 0.5) / int(n_costs)
        if self.cost_scale == "log":
            costs = np.exp(np.log(self.cost_low) + u * (np.log(self.cost_high) - np.log(self.cost_low)))
        else:
            costs = self.cost_low + u * (self.cost_high - self.cost_low)
        rows = np.array([[*o, c] for c in costs for o in obj])
        names = tuple("w=(" + ",".join(f"{x:.3g}" for x in r[:-1]) + f"),cost={r[-1]:.3g}" for r in rows)
        return ContextSet(names, rows)

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON description (for run records)."""
        return {
            "kind": "continuous",
            "n_objectives": self.n_objectives,
            "alpha": [float(a) for a in np.atleast_1d(self.alpha)],
            "cost_range": [self.cost_low, self.cost_high],
            "cost_scale": self.cost_scale,
        }


# --------------------------------------------------------------------------- exact oracle
def _breakpoint_rows(
    table: OutcomeTable, idx: NDArray[np.int64] | slice
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per (prompt, query) row of queries ``idx``: the breakpoints and the values at them.

    The breakpoints ``x (P, Qs, L)`` are sorted, in [0, 1]; the values are ``g(x) (P, Qs, L, n_max)``.

    Computed lazily per query and cached in ``table.cache`` (a later split reuses the queries it
    shares). Rows with fewer crossings are padded with the endpoint 1.0 (zero-length segments,
    which contribute nothing).
    """
    vals, probs = table.bon_arrays()
    p, q, m, _ = vals.shape
    n_pts = m * (m - 1) // 2 + 2
    cache = table.cache.get(_PL_CACHE_KEY)
    if cache is None:
        cache = {
            "done": np.zeros(q, dtype=bool),
            "pts": np.zeros((p, q, n_pts)),
            "vals": np.zeros((p, q, n_pts, table.n_max)),
        }
        table.cache[_PL_CACHE_KEY] = cache
    want = np.arange(q)[idx]
    todo = want[~cache["done"][want]]
    if todo.size:
        v = vals[:, todo]
        slope = v[..., 0] - v[..., 1]  # s_m(t) = v_m2 + t * slope_m
        icpt = v[..., 1]
        i, j = np.triu_indices(m, k=1)
        ds = slope[..., i] - slope[..., j]
        with np.errstate(divide="ignore", invalid="ignore"):
            cross = (icpt[..., j] - icpt[..., i]) / ds
        inside = (ds != 0) & (cross > 0) & (cross < 1)
        pts = np.concatenate([np.zeros((p, todo.size, 1)), np.where(inside, cross, 1.0), np.ones((p, todo.size, 1))], axis=-1)
        pts.sort(axis=-1)
        rows = p * todo.size
        flat_pts = pts.reshape(rows, n_pts)
        flat_slope, flat_icpt = slope.reshape(rows, m), icpt.reshape(rows, m)
        flat_probs = probs[:, todo].reshape(rows, m)
        out = np.empty((rows, n_pts, table.n_max))
        step = max(1, _PL_CHUNK_ELEMENTS // max(n_pts * m, 1))
        for start in range(0, rows, step):
            sl = slice(start, start + step)
            scores = flat_icpt[sl, None, :] + flat_pts[sl, :, None] * flat_slope[sl, None, :]  # (r, L, M)
            r = scores.shape[0]
            pr = np.broadcast_to(flat_probs[sl, None, :], scores.shape).reshape(r * n_pts, m)
            oracle.bon_expected_max(scores.reshape(r * n_pts, m), pr, table.n_max, out=out[sl].reshape(r * n_pts, -1))
        cache["pts"][:, todo] = pts
        cache["vals"][:, todo] = out.reshape(p, todo.size, n_pts, table.n_max)
        cache["done"][todo] = True
    return cache["pts"][:, want], cache["vals"][:, want]


def _pl_gain(table: OutcomeTable, idx: NDArray[np.int64] | slice, t: NDArray[np.float64]) -> NDArray[np.float64]:
    """``g(t)`` averaged over queries ``idx``: ``(T, P, n_max)`` for ``t (T,)`` in [0, 1]."""
    pts, vals = _breakpoint_rows(table, idx)  # (P, Qs, L), (P, Qs, L, N)
    p, qs, n_pts, n_max = vals.shape
    dx = np.diff(pts, axis=-1)  # (P, Qs, L-1)
    dy = np.diff(vals, axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.where(dx[..., None] > 0, dy / dx[..., None], 0.0)  # (P, Qs, L-1, N)
    base = vals[:, :, 0].mean(axis=1)  # (P, N): g(0)
    # ramp sigma * (max(0, t - x) - max(0, t - x - d)): a +sigma kink at x and a -sigma kink at x + d
    pos = np.concatenate([pts[..., :-1], pts[..., 1:]], axis=-1).reshape(p, -1)
    wgt = np.concatenate([sigma, -sigma], axis=2).reshape(p, -1, n_max) / qs
    order = np.argsort(pos, axis=1, kind="stable")
    pos = np.take_along_axis(pos, order, axis=1)
    wgt = np.take_along_axis(wgt, order[..., None], axis=1)
    csig = np.concatenate([np.zeros((p, 1, n_max)), np.cumsum(wgt, axis=1)], axis=1)
    csx = np.concatenate([np.zeros((p, 1, n_max)), np.cumsum(wgt * pos[..., None], axis=1)], axis=1)
    out = np.empty((t.size, p, n_max))
    for pi in range(p):  # loop over prompts only
        k = np.searchsorted(pos[pi], t, side="right")
        out[:, pi] = base[pi] + t[:, None] * csig[pi, k] - csx[pi, k]
    return out


def _use_breakpoints(table: OutcomeTable, w: NDArray[np.float64]) -> bool:
    if table.strategy != "bon" or table.n_objectives != 2 or np.any(w[:, :-1] < 0):
        return False
    m = table.n_outcomes
    return m * (m - 1) // 2 + 2 <= max(w.shape[0], 64)


def exact_q_values(
    table: OutcomeTable, weights: ArrayLike, queries: ArrayLike | None = None
) -> NDArray[np.float64]:
    """Exact ``Q(c, p, N)`` for many contexts at once, averaged over ``queries`` -> ``(C, P, n_max)``.

    Same values as :func:`iapo_gym.oracle.q_values` (see the module docstring for the BoN fast
    path); ``queries`` is an index array, a boolean mask, or None (all queries).
    """
    w = as_weights(weights, table.n_objectives)
    if not _use_breakpoints(table, w):
        return oracle.q_values(table, queries, weights=w)
    idx = oracle._query_index(table, queries)
    total = w[:, 0] + w[:, 1]
    t = np.divide(w[:, 0], total, out=np.zeros_like(total), where=total > 0)
    gain = _pl_gain(table, idx, t) * total[:, None, None]
    cost = table.cost[:, idx].mean(axis=1)  # (P,)
    n = np.arange(1, table.n_max + 1)
    return gain - w[:, -1, None, None] * (cost[:, None] * n)[None]


class ContinuousEvaluator:
    """Deprecated: score runs with ``iapo_gym.experiments.evaluate.ExactEvaluator(env, "continuous")``.

    For a table, queries and contexts of your own, compute ``q = exact_q_values(table, weights,
    queries)`` and score any policy with :func:`iapo_gym.oracle.acr` (``probs`` equal, ``weights``
    the contexts). This class is kept as a thin wrapper of exactly that.

    Args:
        table: the run's outcome table.
        queries: the run's test queries (index array / mask / None for all).
        weights: ``(C, K + 1)`` evaluation contexts (default: the held-out sample of
            :meth:`ContinuousContexts.for_table`).
    """

    def __init__(self, table: OutcomeTable, queries: ArrayLike | None = None, weights: ArrayLike | None = None) -> None:
        import warnings

        warnings.warn(
            "ContinuousEvaluator is deprecated; use iapo_gym.experiments.evaluate.ExactEvaluator(env, 'continuous'), "
            "or iapo_gym.oracle.acr(exact_q_values(table, weights, queries), policy, probs, weights)",
            DeprecationWarning,
            stacklevel=2,
        )
        if weights is None:
            weights = ContinuousContexts.for_table(table).evaluation_sample()
        self.weights = as_weights(weights, table.n_objectives)
        q = exact_q_values(table, self.weights, queries)
        self.q = q.reshape(q.shape[0], -1)
        self.probs = np.full(self.q.shape[0], 1.0 / self.q.shape[0])
        self.best_value = self.q.max(axis=1)
        self.oracle_acr = float(self.best_value @ self.probs)

    def values(self, arms: ArrayLike) -> NDArray[np.float64]:
        """``Q(c, arms[c])`` per evaluation context (``arms (C,)`` flat indices)."""
        return oracle.context_values(self.q, arms)

    def evaluate(self, policy: Any) -> dict[str, float]:
        """``{"acr", "oracle_acr", "regret"}`` of ``policy`` (:func:`iapo_gym.oracle.acr`, equal context weights)."""
        acr = float(oracle.acr(self.q, policy, self.probs, self.weights))
        return {"acr": acr, "oracle_acr": self.oracle_acr, "regret": self.oracle_acr - acr}


def distribution_of(env: Any) -> ContinuousContexts:
    """The continuous context distribution of an env.

    An env built with ``contexts="continuous"`` carries it as ``context_source``; any other
    env gets :meth:`ContinuousContexts.for_table` of its table (or, for a live env without a table,
    Dirichlet(1) weights and ``w_cost`` uniform on ``[0, max cost level]`` of its finite contexts).
    """
    base = getattr(env, "unwrapped", env)
    for attr in ("context_source", "context_distribution"):
        dist = getattr(base, attr, None)
        if isinstance(dist, ContinuousContexts):
            return dist
    table = getattr(base, "table", None)
    if table is not None:
        return ContinuousContexts.for_table(table)
    ctx = base.contexts
    return ContinuousContexts(ctx.n_objectives, 1.0, 0.0, float(ctx.weights[:, -1].max()))
