"""Helpers shared by the batch-capable agents: the batch base class, halving, final arm choice."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from iapo_gym import _jit
from iapo_gym.agents.base import BatchAgent, Policy, TablePolicy
from iapo_gym.runs import RunBatch

__all__ = [
    "BatchAgent",
    "active_index",
    "best_arms",
    "best_arms_of",
    "halve",
    "halve_compact",
    "ranking_key",
    "table_policies",
]

UNSEEN = -1e300  # rank of an active arm without data: below every seen arm, above inactive arms


def ranking_key(active: NDArray[np.bool_], mean: NDArray[np.float64]) -> NDArray[np.float64]:
    """Sort key over arms: the mean for seen active arms, ``UNSEEN`` for unseen active ones, -inf otherwise."""
    return np.where(active, np.where(np.isnan(mean), UNSEEN, mean), -np.inf)


def _top_k_mask(key: NDArray[np.float64], k: int) -> NDArray[np.bool_]:
    """Rows of ``key (R, A)``: True for the first ``k`` entries of a stable descending sort.

    No sort (``O(A)`` per row): the ``k``-th largest key comes from ``np.partition``; entries above
    it are kept, and entries equal to it are kept in index order until ``k`` are kept.
    """
    n = key.shape[-1]
    if _jit.enabled():
        return _top_k_mask_kernel(key, k)
    thr = np.partition(key, n - k, axis=-1)[:, n - k : n - k + 1]  # k-th largest = (n - k)-th smallest
    above = key > thr
    tied = key == thr
    room = k - np.count_nonzero(above, axis=-1, keepdims=True)
    if not np.any(np.count_nonzero(tied, axis=-1, keepdims=True) > room):
        return above | tied  # no row has more entries tied at its threshold than it may keep
    return above | (tied & (np.cumsum(tied, axis=-1) <= room))


@_jit.kernel
def _top_k_mask_kernel(key, k):  # noqa: ANN001, ANN202
    """Compiled twin of :func:`_top_k_mask`: the same mask (comparisons only).

    The threshold, the ``k``-th largest key of a row, comes from a quickselect (the value is unique
    whatever the algorithm); entries above it are kept, and entries equal to it in index order.
    """
    rows, n = key.shape
    out = np.zeros((rows, n), dtype=np.bool_)
    buf = np.empty(n)
    want = n - k  # the threshold is the want-th smallest (0-based)
    for r in range(rows):
        for i in range(n):
            buf[i] = key[r, i]
        lo, hi = 0, n - 1
        while lo < hi:  # Hoare quickselect with a median-of-three pivot
            mid = (lo + hi) >> 1
            a, b, c = buf[lo], buf[mid], buf[hi]
            pivot = max(min(a, b), min(max(a, b), c))
            i, j = lo, hi
            while i <= j:
                while buf[i] < pivot:
                    i += 1
                while buf[j] > pivot:
                    j -= 1
                if i <= j:
                    buf[i], buf[j] = buf[j], buf[i]
                    i += 1
                    j -= 1
            if want <= j:
                hi = j
            elif want >= i:
                lo = i
            else:
                break
        thr = buf[want]
        room = k
        for i in range(n):
            room -= key[r, i] > thr
        for i in range(n):
            v = key[r, i]
            if v > thr:
                out[r, i] = True
            elif v == thr and room > 0:
                out[r, i] = True
                room -= 1
    return out


def halve(active: NDArray[np.bool_], mean: NDArray[np.float64] | MeansAt, runs: NDArray[np.bool_]) -> None:
    """Per (run, context) remove the bottom ``ceil(n/2)`` of the ``n`` active arms, keeping at least one.

    ``active`` and ``mean`` are ``(S, C, A)``; only runs where ``runs`` is True are trimmed (in
    place). Ranking is by empirical mean, descending; ties keep the lower flat arm index (the
    authors' stable sort over the p-major, N-ascending arm list). ``mean`` may instead be
    statistics with ``means_at`` (:class:`MeansAt`): only the active arms' means are then computed.
    """
    idx = None if bool(np.all(runs)) else np.flatnonzero(runs)
    if idx is not None and idx.size == 0:
        return
    a = active if idx is None else active[idx]
    n_arms = a.shape[-1]
    flat_a = a.reshape(-1, n_arms)
    lazy = not isinstance(mean, np.ndarray)
    if isinstance(mean, np.ndarray):
        flat_m = (mean if idx is None else mean[idx]).reshape(-1, n_arms)
    else:
        c_n = a.shape[1]
        row_run = np.repeat(np.arange(active.shape[0]) if idx is None else idx, c_n)
        row_ctx = np.tile(np.arange(c_n), a.shape[0])
    n_active = flat_a.sum(axis=-1)
    new = np.zeros_like(flat_a)
    counts = np.unique(n_active)
    for n0 in counts.tolist():  # rows with the same number of active arms: rank only those arms
        if n0 == 0:
            continue
        k = max(1, n0 // 2)
        rows = None if counts.size == 1 else np.flatnonzero(n_active == n0)
        fa = flat_a if rows is None else flat_a[rows]
        if n0 == n_arms:
            arm_idx = np.broadcast_to(np.arange(n_arms), fa.shape)
        else:
            arm_idx = _row_indices(fa, n0)  # ascending arm order per row
        if lazy:
            r_run, r_ctx = (row_run, row_ctx) if rows is None else (row_run[rows], row_ctx[rows])
            if _jit.enabled() and hasattr(mean, "ranked_means"):  # compiled: the same means, UNSEEN for NaN
                key = mean.ranked_means(arm_idx, c_n, UNSEEN, r_run, r_ctx)
            else:
                sub = mean.means_at(r_run[:, None], r_ctx[:, None], arm_idx)  # type: ignore[union-attr]
                key = np.where(np.isnan(sub), UNSEEN, sub)
        else:
            fm = flat_m if rows is None else flat_m[rows]
            sub = fm if n0 == n_arms else np.take_along_axis(fm, arm_idx, axis=1)
            key = np.where(np.isnan(sub), UNSEEN, sub)
        winners = arm_idx[_top_k_mask(key, k)].reshape(-1, k)
        if rows is None:
            np.put_along_axis(new, winners, True, axis=1)
        else:
            new[rows[:, None], winners] = True
    if idx is None:
        active[...] = new.reshape(active.shape)
    else:
        active[idx] = new.reshape(a.shape)


class MeansAt(Protocol):
    """Statistics that give the means of chosen arms only (:meth:`iapo_gym.agents._engine.NestedStats.means_at`)."""

    def means_at(  # noqa: D102
        self, run: NDArray[np.int64], context: NDArray[np.int64], arm: NDArray[np.int64]
    ) -> NDArray[np.float64]: ...


def active_index(active: NDArray[np.bool_]) -> NDArray[np.int64] | None:
    """``(S * C, n)`` ascending indices of the active arms of each (run, context) row of ``active (S, C, A)``.

    None unless every row has the same number ``n >= 1`` of active arms (the elimination agents'
    usual state: every row starts with the same arms and halves in step).
    """
    flat = active.reshape(-1, active.shape[-1])
    n_active = np.count_nonzero(flat, axis=-1)
    if n_active.size == 0 or int(n_active[0]) == 0 or bool(np.any(n_active != n_active[0])):
        return None
    n = int(n_active[0])
    if n == flat.shape[1]:  # every arm active (before the first halving)
        return np.broadcast_to(np.arange(n), flat.shape)
    return _row_indices(flat, n)


def _row_indices(flat: NDArray[np.bool_], n: int) -> NDArray[np.int64]:
    """``np.nonzero(flat)[1].reshape(-1, n)`` for rows with ``n`` True each: flat positions minus row offsets (faster)."""
    rows, width = flat.shape
    return np.flatnonzero(flat).reshape(rows, n) - (np.arange(rows) * width)[:, None]


def _compact_means(stats: MeansAt, idx: NDArray[np.int64], n_contexts: int, n_arms: int) -> NDArray[np.float64]:
    """Means of the arms ``idx (S * C, n)`` of each (run, context) row, unseen arms ranked ``UNSEEN``."""
    if _jit.enabled() and hasattr(stats, "ranked_means"):
        return stats.ranked_means(idx, n_contexts, UNSEEN)
    if idx.shape[1] == n_arms and hasattr(stats, "means"):
        sub = stats.means().reshape(idx.shape)  # every arm active (idx is 0..A-1 in each row): dense means, no gather
    else:
        row = np.arange(idx.shape[0])[:, None]
        sub = stats.means_at(row // n_contexts, row % n_contexts, idx)
    np.copyto(sub, UNSEEN, where=np.isnan(sub))  # NestedStats' means are fresh arrays
    return sub


def halve_compact(active: NDArray[np.bool_], idx: NDArray[np.int64], stats: MeansAt) -> NDArray[np.int64]:
    """:func:`halve` of every run, given the rows' active arms ``idx`` (:func:`active_index`); returns the new ``idx``.

    The same decision as :func:`halve` (same ranking, same ties), computed from the means of the
    active arms only (``stats.means_at``) instead of every arm's: each halving costs the surviving
    arms, not the whole ``S x C x A`` grid. ``active`` is updated in place.
    """
    n0 = idx.shape[1]
    keep = _top_k_mask(_compact_means(stats, idx, active.shape[1], active.shape[2]), max(1, n0 // 2))
    new = idx[keep].reshape(idx.shape[0], -1)  # ascending within each row
    if active.flags.c_contiguous:  # one flat scatter into a view
        flat = active.reshape(-1)
        flat[...] = False
        flat[(new + (np.arange(new.shape[0]) * active.shape[-1])[:, None]).reshape(-1)] = True
    else:
        mask = np.zeros((new.shape[0], active.shape[-1]), dtype=bool)
        np.put_along_axis(mask, new, True, axis=1)
        active[...] = mask.reshape(active.shape)
    return new


def best_arms_of(active: NDArray[np.bool_], stats: Any) -> NDArray[np.int64]:
    """:func:`best_arms` of ``active`` on ``stats``' means, computed for the active arms only when it can be.

    ``stats`` has ``means()`` (``(S, C, P, N)``) and, for the fast path, ``means_at``; the result is
    the same either way.
    """
    idx = active_index(active) if hasattr(stats, "means_at") else None
    if idx is None and _jit.enabled() and hasattr(stats, "ranked_means"):
        return _best_arms_by_count(active, stats)
    if idx is None:
        return best_arms(active, stats.means().reshape(active.shape))
    best = np.argmax(_compact_means(stats, idx, active.shape[1], active.shape[2]), axis=-1)  # first maximum: lowest arm index
    return idx[np.arange(idx.shape[0]), best].reshape(active.shape[:2]).astype(np.int64)


def _best_arms_by_count(active: NDArray[np.bool_], stats: Any) -> NDArray[np.int64]:
    """:func:`best_arms` from the active arms' means only, rows grouped by their number of active arms (compiled means).

    The same arms: a row's first maximum of :func:`ranking_key` is an active arm (means are finite
    or NaN, ranked ``UNSEEN > -inf``), the first maximum among its active arms in ascending order;
    a row without active arms gets arm 0, as ``argmax`` over ``-inf`` does.
    """
    c_n, n_arms = active.shape[1], active.shape[2]
    flat = active.reshape(-1, n_arms)
    n_active = np.count_nonzero(flat, axis=-1)
    out = np.zeros(flat.shape[0], dtype=np.int64)
    for n0 in np.unique(n_active).tolist():
        if n0 == 0:
            continue
        rows = np.flatnonzero(n_active == n0)
        arm_idx = _row_indices(flat[rows], n0)
        key = stats.ranked_means(arm_idx, c_n, UNSEEN, rows // c_n, rows % c_n)
        out[rows] = arm_idx[np.arange(rows.size), np.argmax(key, axis=-1)]
    return out.reshape(active.shape[:2])


def best_arms(active: NDArray[np.bool_], mean: NDArray[np.float64]) -> NDArray[np.int64]:
    """``(S, C)`` the active arm with the highest mean (seen arms first; ties -> lowest index)."""
    return np.argmax(ranking_key(active, mean), axis=-1).astype(np.int64)


def table_policies(runs: RunBatch, arms: NDArray[np.int64], infos: list[dict[str, Any]]) -> list[Policy]:
    """One :class:`TablePolicy` per run from ``arms (S, C)``."""
    spent = runs.spent.tolist()
    return [
        TablePolicy(runs.contexts, arms[s], runs.n_max, budget_used=spent[s], info=infos[s]) for s in range(runs.n_runs)
    ]
