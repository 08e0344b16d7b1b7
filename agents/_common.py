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
        thr = _kth_smallest(buf, n, want)  # Hoare quickselect with a median-of-three pivot
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


# --------------------------------------------------------------------------- compact halving
@_jit.helper
def _kth_smallest(buf, n, want):  # noqa: ANN001, ANN202
    """The ``want``-th smallest (0-based) of ``buf[:n]`` (reordered in place): a quickselect, median-of-three pivots."""
    lo, hi = 0, n - 1
    while lo < hi:
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
    return buf[want]


@_jit.helper
def _kth_key(key, n, want, buf, bucket, hist):  # noqa: ANN001, ANN202
    """``(x, above, equal)``: the ``want``-th smallest (0-based) ``x`` of ``key[:n]`` and how many keys lie above and at it.

    ``key`` holds no NaN and is left as it is.

    A bucket pass first (the value is unique whatever the algorithm): keys map to ``m = n // 2 + 1``
    buckets by ``(key - lo) * m / (hi - lo)`` truncated and clamped to ``[0, m - 1]`` -- a
    non-decreasing function of the key, so a bucket's keys all lie below the next bucket's, whatever
    ``lo`` and ``hi`` are (taken from a sample of the keys, ``UNSEEN`` left out: they only decide
    how evenly the keys spread). Counting the buckets finds the one that holds the wanted key; a
    quickselect (:func:`_kth_smallest`) among its keys gives it. Keys whose sample spans no positive
    finite range go to the quickselect directly. Scratch: ``buf`` and ``bucket`` of ``n`` entries,
    ``hist`` of ``n // 2 + 1``.
    """
    lo = np.inf
    hi = -np.inf
    for i in range(0, n, max(1, n >> 6)):  # about 64 keys
        v = key[i]
        lo = min(lo, v if v > UNSEEN else np.inf)
        hi = max(hi, v)
    m = (n >> 1) + 1
    d = hi - lo
    j, below = n, 0
    scale = m / d if d > 0.0 else 0.0
    if d < np.inf and scale < np.inf and scale > 0.0:
        top = m - 1.0
        for b in range(m):
            hist[b] = 0
        for i in range(n):
            bucket[i] = np.int32(min(max((key[i] - lo) * scale, 0.0), top))
        for i in range(n):
            hist[bucket[i]] += 1
        t = 0
        while below + hist[t] <= want:
            below += hist[t]
            t += 1
        j = 0
        for i in range(n):  # the wanted bucket's keys, without branches
            buf[j] = key[i]
            j += bucket[i] == t
    else:
        for i in range(n):
            buf[i] = key[i]
    x = _kth_smallest(buf, j, want - below)
    above = n - below - j  # the keys of the buckets above
    equal = 0
    for i in range(j):
        above += buf[i] > x
        equal += buf[i] == x
    return x, above, equal


@_jit.helper
def _row_keys(gain, cost, count, cf, cost_weight, group, u_n, run, ctx, active, idx, n_row, row, cap, key, arm):  # noqa: ANN001, ANN202
    """Ranking keys of row ``(run, ctx)``'s active arms into ``key`` and ``arm`` (ascending arms); returns their number.

    The arms come from ``active[run, ctx]`` until the row's first halving (``n_row[row] < 0``), then
    from its compact list ``idx[row * cap : row * cap + n_row[row]]``. A key is
    :meth:`~iapo_gym.agents._engine.NestedStats.means_at`'s ``(gain - w * cost) / count``
    (``cf``: the run's counts as floats, as numpy converts them, filled when the run's rows were
    never halved), ``UNSEEN`` for NaN.
    """
    n_arms = active.shape[2]
    w = cost_weight[ctx]
    g0 = (run * u_n + group[ctx]) * n_arms
    c0 = run * n_arms
    n = n_row[row]
    if n < 0:
        n = 0
        for a in range(n_arms):
            n += active[run, ctx, a]
        if n == n_arms:  # every arm (before the first halving): contiguous
            for a in range(n_arms):
                arm[a] = a
                v = (gain[g0 + a] - w * cost[c0 + a]) / cf[a]
                key[a] = UNSEEN if np.isnan(v) else v
            return n
        n = 0
        for a in range(n_arms):
            if active[run, ctx, a]:
                arm[n] = a
                n += 1
    else:
        base = row * cap
        for i in range(n):
            arm[i] = idx[base + i]
    for i in range(n):
        a = arm[i]
        v = (gain[g0 + a] - w * cost[c0 + a]) / count[c0 + a]
        key[i] = UNSEEN if np.isnan(v) else v
    return n


@_jit.kernel
def _halve_compact_kernel(gain, cost, count, cost_weight, group, u_n, trim, active, idx, n_row, cap, live, noise, noise_row, scale):  # noqa: ANN001, ANN202, C901, E501
    """:func:`halve` of the runs where ``trim`` is True, on the compact state of :class:`CompactHalving`, in place.

    Per (run, context) row: the active arms' keys (:func:`_row_keys`), each plus ``scale *
    noise[noise_row[run], context, arm]`` when ``noise`` is not empty (a seeded jitter that breaks
    ties, as PSST-Paired's :class:`~iapo_gym.agents.psst_paired.JitteredMeans` adds it); the ``k = max(1, n // 2)``
    kept by :func:`_top_k_mask_kernel`'s rule (keys above the ``k``-th largest, then keys equal to
    it in arm order) written to the row's compact list; then the run's union over contexts
    ``live (S, A)``. ``active`` is read (a row's arms before its first halving), never written: a
    halved row's active arms are its list until :func:`_sync_active_kernel` writes them back.
    """
    s_n, c_n, n_arms = active.shape
    key = np.empty(n_arms)
    cf = np.empty(n_arms)
    buf = np.empty(n_arms)
    bucket = np.empty(n_arms, dtype=np.int32)
    hist = np.empty(n_arms // 2 + 1, dtype=np.int64)
    arm = np.empty(n_arms, dtype=np.int64)
    kept = np.empty(n_arms, dtype=np.bool_)
    for s in range(s_n):
        if not trim[s]:
            continue
        listed = n_row[s * c_n]  # a run's rows halve together: all listed or none
        if listed < 0:  # rows never halved: every arm's key may be needed
            for a in range(n_arms):
                cf[a] = count[s * n_arms + a]
        clear_all = listed < 0 or c_n * listed >= n_arms  # the run's union: cleared at once or arm by arm
        if clear_all:
            for a in range(n_arms):
                live[s, a] = False
        for c in range(c_n):
            row = s * c_n + c
            n = _row_keys(gain, cost, count, cf, cost_weight, group, u_n, s, c, active, idx, n_row, row, cap, key, arm)
            if noise.shape[0] > 0:  # the key plus its jitter: JitteredMeans' product and sum
                nr = noise_row[s]
                for i in range(n):
                    key[i] += scale * noise[nr, c, arm[i]]
            base = row * cap
            k = max(1, n // 2)
            if not clear_all:  # the run's union is its rows' arms: cleared, then set again from the kept ones
                for i in range(n):
                    live[s, arm[i]] = False
            if n <= 1:  # nothing to trim
                if n == 1:
                    idx[base] = arm[0]
                n_row[row] = n
                continue
            thr, above, equal = _kth_key(key, n, n - k, buf, bucket, hist)
            cut = n  # keys equal to thr are kept at positions below cut: the first k - above of them
            room = k - above
            if room < equal:
                for i in range(n):
                    if key[i] == thr:
                        room -= 1
                        if room < 0:
                            cut = i
                            break
            for i in range(n):
                v = key[i]
                kept[i] = (v > thr) | ((v == thr) & (i < cut))
            out = 0
            for i in range(n):  # without branches: every arm written, the kept ones advance
                idx[base + out] = arm[i]
                out += kept[i]
            n_row[row] = k
        for c in range(c_n):
            row = s * c_n + c
            base = row * cap
            for i in range(n_row[row]):
                live[s, idx[base + i]] = True


@_jit.kernel
def _sync_active_kernel(active, idx, n_row, cap):  # noqa: ANN001, ANN202
    """Write every halved (run, context) row's compact list into ``active (S, C, A)``: its listed arms only."""
    s_n, c_n, n_arms = active.shape
    for s in range(s_n):
        for c in range(c_n):
            row = s * c_n + c
            n = n_row[row]
            if n < 0:  # never halved: active holds the row
                continue
            for a in range(n_arms):
                active[s, c, a] = False
            base = row * cap
            for i in range(n):
                active[s, c, idx[base + i]] = True


@_jit.kernel
def _best_compact_kernel(gain, cost, count, cost_weight, group, u_n, active, idx, n_row, cap):  # noqa: ANN001, ANN202
    """:func:`best_arms` on the compact state of :class:`CompactHalving`: each row's first maximum among its active arms.

    Returns ``(best (S, C), n_active (S, C))``; a row without active arms gets arm 0 (``argmax`` over ``-inf``).
    """
    s_n, c_n, n_arms = active.shape
    key = np.empty(n_arms)
    cf = np.empty(n_arms)
    arm = np.empty(n_arms, dtype=np.int64)
    best = np.zeros((s_n, c_n), dtype=np.int64)
    n_active = np.zeros((s_n, c_n), dtype=np.int64)
    for s in range(s_n):
        if n_row[s * c_n] < 0:
            for a in range(n_arms):
                cf[a] = count[s * n_arms + a]
        for c in range(c_n):
            row = s * c_n + c
            n = _row_keys(gain, cost, count, cf, cost_weight, group, u_n, s, c, active, idx, n_row, row, cap, key, arm)
            n_active[s, c] = n
            if n == 0:
                continue
            top = key[0]
            b = arm[0]
            for i in range(1, n):
                if key[i] > top:
                    top = key[i]
                    b = arm[i]
            best[s, c] = b
    return best, n_active


_NO_NOISE = np.zeros((0, 1, 1))  # CompactHalving.halve without a jitter
_NO_ROWS = np.zeros(0, dtype=np.int64)


class CompactHalving:
    """Per-(run, context) active arm lists of an elimination ranked on :class:`~iapo_gym.agents._engine.NestedStats`.

    The compiled twin of :func:`halve` / :func:`halve_compact` plus :func:`best_arms_of` for
    statistics with ``gain``, ``cost``, ``count`` and ``split`` (one pass per halving: each row's
    keys, its threshold and its compacted list, with no ``(S, C, A)`` temporaries), keeping each
    run's union over contexts (:attr:`live`, ``(S, A)``) for the allocation. A halved row's active
    arms live in its list: ``active`` is brought up to date by :meth:`sync` (once, when the
    elimination ends; halving only reads it). The same decisions bit for bit (same keys, same rule
    for ties). Use only when :func:`iapo_gym._jit.enabled` and ``active`` is C-contiguous.
    """

    def __init__(self, active: NDArray[np.bool_], stats: Any) -> None:
        s_n, c_n, n_arms = active.shape
        self.active, self.stats = active, stats
        # a halved row keeps at most half of its arms; one slot more for the branchless compaction's last write
        self.cap = max(1, n_arms // 2) + 1
        self.idx = np.empty(s_n * c_n * self.cap, dtype=np.int32)  # untouched until a row's first halving
        self.n_row = np.full(s_n * c_n, -1, dtype=np.int64)  # -1: the row's arms are still read from ``active``
        self.live = active.any(axis=1)

    def halve(
        self, runs: NDArray[np.bool_], noise: NDArray[np.float64] | None = None, scale: float = 0.0
    ) -> None:
        """Halve every (run, context) of the runs where ``runs (S,)`` is True (:func:`halve`'s decision).

        ``noise (R, C, A)``, when given, holds a jitter for each trimmed run (in run order; ``R``
        = the number of trimmed runs): arm ``a``'s key in context ``c`` of the ``i``-th trimmed run
        is its mean plus ``scale * noise[i, c, a]`` (:class:`~iapo_gym.agents.psst_paired.JitteredMeans`).
        """
        st = self.stats
        trim = np.ascontiguousarray(runs, dtype=np.bool_)
        noise_row = _NO_ROWS
        if noise is None:
            noise = _NO_NOISE
        else:
            noise_row = np.cumsum(trim) - 1  # each trimmed run's row of ``noise``
            if noise.shape != (int(noise_row[-1]) + 1, *self.active.shape[1:]):
                raise ValueError(f"noise must hold one (C, A) jitter per trimmed run; got shape {noise.shape}")
        _halve_compact_kernel(
            st.gain.reshape(-1), st.cost.reshape(-1), st.count.reshape(-1), st.split.cost_weight, st.split.group,
            int(st.gain.shape[1]), trim, self.active, self.idx, self.n_row, self.cap, self.live,
            np.ascontiguousarray(noise, dtype=np.float64), noise_row, float(scale),
        )  # fmt: skip

    def sync(self) -> None:
        """Bring ``active`` up to date: each halved row's active arms are its listed ones."""
        _sync_active_kernel(self.active, self.idx, self.n_row, self.cap)

    def best_arms(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """``(best (S, C), n_active (S, C))``: :func:`best_arms_of`'s arms and each row's number of active arms."""
        st = self.stats
        return _best_compact_kernel(
            st.gain.reshape(-1), st.cost.reshape(-1), st.count.reshape(-1), st.split.cost_weight, st.split.group,
            int(st.gain.shape[1]), self.active, self.idx, self.n_row, self.cap,
        )  # fmt: skip
