"""Utilities of raw pulls: Best-of-N, Majority Voting, inference-agnostic, nested blocks.

Every function scores a batch of ``B`` pulls (:class:`iapo_gym.sampling.Pulls`, padded to width
``L``) under ``C`` contexts at once. ``weights`` is ``(C, K + 1)``: columns ``0..K-1`` weight the
objectives and the LAST column is the non-negative cost magnitude (utilities subtract
``w_cost * cost``). A single ``(K + 1,)`` context is accepted and treated as ``C = 1``.

* Best-of-N (paper Eq. 1): ``max_i sum_k w_k o_ik - w_cost * sum_i cost_i``.
* Majority voting (paper Eq. 2): ``w_1 * credit - w_cost * sum_i cost_i``; ``credit = 1/t`` when
  the gold category is among the ``t`` most-voted categories of the real completions (the
  expectation of a uniform tie-break, so no random draw), else 0.
* Inference-agnostic (paper Eq. 5): mean over real completions of ``sum_k w_k o_ik - w_cost cost_i``.
* Nested blocks (paper section 3.1 item 3): a pull of ``(p, N_i)`` splits into ``N_i // N_j``
  disjoint consecutive blocks, each an i.i.d. sample of ``(p, N_j)``.

Vectorised over pulls and contexts; the only Python loop is over block sizes in
:func:`nested_sums`. A pull with ``n = 0`` has utility 0.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from iapo_gym.sampling import Pulls

__all__ = ["utility", "ia_utility", "block_utilities", "nested_sums", "as_weights"]


def as_weights(weights: ArrayLike, n_objectives: int) -> NDArray[np.float64]:
    """Validate context weights and return them as a ``(C, K + 1)`` float64 array."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = w[None, :]
    if w.ndim != 2 or w.shape[1] != n_objectives + 1:
        raise ValueError(
            f"weights must have shape (C, {n_objectives + 1}) (K={n_objectives} objective weights, then the "
            f"cost magnitude); got {np.shape(weights)}"
        )
    if np.any(w[:, -1] < 0):
        raise ValueError("the cost weight (last column of weights) is a magnitude and must be >= 0; pass -w_cost")
    return w


def _mv_credit(
    outcome: NDArray[np.int64], mask: NDArray[np.bool_], gold: NDArray[np.int64], n_categories: int
) -> NDArray[np.float64]:
    """Expected MV credit ``1/t`` per row of ``outcome (R, L)`` (0 when gold is not a top answer)."""
    rows, width = outcome.shape
    if rows == 0:
        return np.zeros(0)
    a = max(int(n_categories), 1)
    valid = mask & (outcome >= 0) & (outcome < a)
    row_idx = np.broadcast_to(np.arange(rows)[:, None], (rows, width))
    flat = row_idx[valid] * a + outcome[valid]
    votes = np.bincount(flat, minlength=rows * a).reshape(rows, a)
    top = votes.max(axis=1)
    ties = (votes == top[:, None]).sum(axis=1)
    g = np.clip(gold, 0, a - 1)
    gold_votes = votes[np.arange(rows), g]
    hit = (gold >= 0) & (gold < a) & (top > 0) & (gold_votes == top)
    return np.where(hit, 1.0 / ties, 0.0)


def _scores(
    values: NDArray[np.float64], weights: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Per-completion weighted objective ``sum_k w_k o_ik`` as ``(C, R, L)``."""
    return np.moveaxis(values @ weights[:, :-1].T, -1, 0)


def _utility_arrays(
    strategy: str,
    outcome: NDArray[np.int64],
    values: NDArray[np.float64],
    cost: NDArray[np.float64],
    mask: NDArray[np.bool_],
    gold: NDArray[np.int64],
    n_categories: int,
    w: NDArray[np.float64],
) -> NDArray[np.float64]:
    """BoN / MV utility of rows of raw outcomes ``(R, L)`` under weights ``(C, K+1)`` -> ``(C, R)``."""
    total_cost = np.where(mask, cost, 0.0).sum(axis=1)  # (R,)
    cost_term = w[:, -1:] * total_cost[None, :]
    if strategy == "mv":
        credit = _mv_credit(outcome, mask, gold, n_categories)
        return w[:, :1] * credit[None, :] - cost_term
    if strategy == "bon":
        scores = _scores(values, w)
        best = np.where(mask[None], scores, -np.inf).max(axis=2, initial=-np.inf)
        best = np.where(np.isfinite(best), best, 0.0)  # empty pulls score 0
        return best - cost_term
    raise ValueError(f"unknown strategy {strategy!r}; expected 'mv' or 'bon'")


def utility(pulls: Pulls, weights: ArrayLike) -> NDArray[np.float64]:
    """Utility of each pull under each context, ``(C, B)``.

    BoN: ``max_i sum_k w_k o_ik - w_cost * sum_i cost_i`` over the real completions.
    MV: ``w_1 * credit - w_cost * sum_i cost_i`` with ``credit = 1/t`` when the gold category is
    among the ``t`` most-voted answers (expected uniform tie-break), else 0.
    """
    w = as_weights(weights, pulls.values.shape[2])
    return _utility_arrays(
        pulls.strategy, pulls.outcome, pulls.values, pulls.cost, pulls.mask, pulls.gold, pulls.n_categories, w
    )


def ia_utility(pulls: Pulls, weights: ArrayLike) -> NDArray[np.float64]:
    """Inference-agnostic utility (paper Eq. 5), ``(C, B)``.

    The mean over real completions of ``sum_k w_k o_ik - w_cost * cost_i`` (for MV the single
    objective is correctness, ``values[..., 0]``). Pulls with ``n = 0`` score 0.
    """
    w = as_weights(weights, pulls.values.shape[2])
    per = _scores(pulls.values, w) - w[:, -1][:, None, None] * pulls.cost[None]
    per = np.where(pulls.mask[None], per, 0.0)
    count = pulls.mask.sum(axis=1)
    return per.sum(axis=2) / np.maximum(count, 1)[None, :]


def block_utilities(
    pulls: Pulls, weights: ArrayLike, k: int
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Utilities of the consecutive blocks ``[0:k], [k:2k], ...`` of every pull.

    Returns ``values (C, B, J)`` with ``J = L // k`` and ``mask (B, J)``: block ``j`` of pull ``b``
    is real when ``(j + 1) * k <= n[b]``. Unreal blocks hold 0.
    """
    if int(k) < 1:
        raise ValueError(f"block size k must be >= 1; got {k}")
    k = int(k)
    w = as_weights(weights, pulls.values.shape[2])
    b, width = pulls.mask.shape
    j = width // k
    real = (np.arange(1, j + 1)[None, :] * k) <= pulls.n[:, None]  # (B, J)
    if j == 0:
        return np.zeros((w.shape[0], b, 0)), real
    span = j * k
    n_obj = pulls.values.shape[2]
    outcome = pulls.outcome[:, :span].reshape(b * j, k)
    values = pulls.values[:, :span].reshape(b * j, k, n_obj)
    cost = pulls.cost[:, :span].reshape(b * j, k)
    mask = np.repeat(real.reshape(-1), k).reshape(b * j, k)
    gold = np.repeat(pulls.gold, j)
    out = _utility_arrays(pulls.strategy, outcome, values, cost, mask, gold, pulls.n_categories, w)
    out = out.reshape(w.shape[0], b, j)
    return np.where(real[None], out, 0.0), real


def nested_sums(
    pulls: Pulls, weights: ArrayLike, n_max: int
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Nested reuse of every pull at every scale ``k = 1..n_max``.

    Returns ``sums (C, B, n_max)``, the total utility of the ``n[b] // k`` disjoint blocks of size
    ``k`` of pull ``b``, and ``counts (B, n_max)`` with ``counts[b, k-1] = n[b] // k``. The mean
    ``sums / counts`` is an unbiased estimate of ``Q(c, (p, k))`` for the pull's query.
    """
    w = as_weights(weights, pulls.values.shape[2])
    n_max = int(n_max)
    b = len(pulls)
    sums = np.zeros((w.shape[0], b, n_max))
    ks = np.arange(1, n_max + 1)
    counts = (pulls.n[:, None] // ks[None, :]).astype(np.int64)
    for k in range(1, min(n_max, pulls.width) + 1):
        vals, _ = block_utilities(pulls, w, k)
        sums[:, :, k - 1] = vals.sum(axis=2)
    return sums, counts
