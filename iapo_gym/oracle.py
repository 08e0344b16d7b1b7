"""Exact Q-values, best arms, ACR and regret of an outcome table.

Everything here is computed in closed form from the table (no sampling):

* **Majority voting.** The expected tie-aware credit ``E[credit](p, q, N)`` (credit ``1/t`` when
  the gold answer is among the ``t`` most-voted answers) of every prompt, query and ``N`` at once.
  Conditioning on the gold count ``k``, the probability of counts ``(k, n_1..n_{A-1})`` is
  ``N!/(k! prod n_j!) p_g^k prod p_j^{n_j}``, and ``1/(1+t) = int_0^1 s^t ds`` with ``t`` the number
  of other answers that also reach ``k``. Hence::

      credit(N) = sum_k N! p_g^k / k! * int_0^1 [x^{N-k}] prod_{j != g} f_j(x, s) ds,
      f_j(x, s) = g_j(x) + s h_j x^k,  g_j = sum_{n<k} (p_j x)^n / n!,  h_j = p_j^k / k!.

  The integrand is a polynomial of degree ``<= A-1`` in ``s``; it is integrated exactly by
  expanding it as ``sum_t s^t x^{kt} e_t(x)`` (``e_t``: the other answers of which ``t`` tie with
  gold) and using ``int_0^1 s^t ds = 1/(t+1)``, keeping only the ``t <= (N_max - k) / k`` that fit
  under the degree cap (equivalent to, and about twice as cheap as, exact Gauss-Legendre
  quadrature with ``ceil(A/2)`` nodes). Truncated products in ``x`` are shifted multiply-adds over
  ``(degree, rows)`` arrays; Python loops run over ``k``, the categories, ``t`` and the degree only,
  never over rows. Identical (gold-first, sorted) probability rows are computed once (the released
  tables are multiples of 1/128: MATH's 7,900 rows hold 4,073 distinct ones). The credit does not
  depend on the context, so MV Q-values for any number of contexts cost one multiply-add.
* **Best-of-N.** With per-context scores ``s_m = w . v_m`` sorted ascending and cumulative
  probabilities ``F_j``, ``E[max of N] = s_(M) - sum_{j<M} (s_(j+1) - s_(j)) F_j^N`` (Abel summation
  of ``sum_j s_(j) (F_j^N - F_{j-1}^N)``), vectorised over rows and chunked over contexts.
* Utilities subtract ``w_cost * N * cost[p, q]`` (cost is linear, so the expected cost is exact).

Per-query values for the table's own contexts are cached in ``table.cache``; any split or policy is
then evaluated by averaging.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from math import lgamma
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from iapo_gym import _jit
from iapo_gym.arms import arm_from_index
from iapo_gym.tables.format import OutcomeTable
from iapo_gym.utility import as_weights

__all__ = [
    "mv_credit",
    "bon_expected_max",
    "per_query_values",
    "q_values",
    "best_arms",
    "arm_distribution",
    "context_values",
    "acr",
    "regret",
    "OracleReport",
    "ContextBest",
    "report",
]

_MV_CACHE_KEY = "oracle/mv_credit"
_BON_CACHE_KEY = "oracle/bon_per_query"
#: Largest ``n_max`` the MV recursion supports in float64 (``N!`` and ``p^n / n!`` stay representable).
MV_N_MAX_LIMIT = 150
#: Elements per working array of the MV recursion (row blocks; 8 bytes each).
_MV_BLOCK_ELEMENTS = 1 << 22
#: Elements per working array in the BoN path (bounds memory: 8 bytes each).
_BON_CHUNK_ELEMENTS = 1 << 22
#: Elements per row block of :func:`bon_expected_max` (kept small so the N loop stays in cache).
_BON_BLOCK_ELEMENTS = 1 << 18
#: Relative tolerance under which two Q-values count as tied in :func:`best_arms`.
TIE_RTOL = 1e-12


# --------------------------------------------------------------------------- majority voting
def _gold_first(probs: NDArray[np.float64], gold: NDArray[np.int64]) -> NDArray[np.float64]:
    """Rows ``(p_gold, others sorted descending)``: the credit is symmetric in the other answers."""
    rows, a = probs.shape
    is_gold = np.arange(a)[None, :] == gold[:, None]
    pg = probs[np.arange(rows), gold]
    others = probs[~is_gold].reshape(rows, a - 1)
    others = -np.sort(-others, axis=1)
    return np.concatenate([pg[:, None], others], axis=1)


@functools.lru_cache(maxsize=16)
def _factorials(n_max: int) -> NDArray[np.float64]:
    """``n!`` for ``n = 0..n_max`` as ``exp(lgamma(n + 1))`` (read-only; computed once per ``n_max``)."""
    fact = np.array([np.exp(lgamma(n + 1)) for n in range(n_max + 1)])
    fact.setflags(write=False)
    return fact


def _mv_credit_unique(rows: NDArray[np.float64], n_max: int) -> NDArray[np.float64]:
    """Exact expected credit of gold-first rows ``(U, A)`` for ``N = 1..n_max`` -> ``(U, n_max)``.

    For each gold count ``k`` the factors are ``f_j = g_j(x) + s h_j x^k`` with
    ``g_j = sum_{n<k} (p_j x)^n / n!`` and ``h_j = p_j^k / k!``. Their product is
    ``sum_t s^t x^{kt} e_t(x)`` (``e_t``: sum over ``t``-subsets of the other answers that tie with
    gold), and ``int_0^1 s^t ds = 1/(t+1)``; ``e_t`` is built by a DP over the answers that only
    keeps the ``t <= (n_max - k) // k`` that still fit under the degree cap.
    """
    u, a = rows.shape
    pg, others = rows[:, 0], rows[:, 1:]
    n_other = a - 1
    fact = _factorials(n_max)
    if _jit.enabled() and u > 0:  # the compiled twin: the same operations per row, in the same order
        out = np.empty((u, n_max))
        _mv_credit_rows(np.ascontiguousarray(rows, dtype=np.float64), fact, out)
        return np.clip(out, 0.0, 1.0)
    # pw[j, n, u] = p_j^n / n!  (the row axis last, so every degree slice is a contiguous block)
    pw = np.empty((n_other, n_max + 1, u))
    pw[:, 0] = 1.0
    pg_pw = np.empty((n_max + 1, u))
    pg_pw[0] = 1.0
    for n in range(1, n_max + 1):  # p^n / n! by recurrence (no pow calls)
        np.multiply(pw[:, n - 1], others.T / n, out=pw[:, n])
        np.multiply(pg_pw[n - 1], pg / n, out=pg_pw[n])
    credit = np.zeros((n_max + 1, u))
    buf = np.empty((n_max + 1, u))
    for k in range(1, n_max + 1):
        deg = n_max - k  # coefficients x^0..x^deg are needed (N = k..n_max)
        gd = min(k - 1, deg)  # degree of g_j under the cap
        t_max = min(n_other, deg // k)  # most other answers that can tie with gold at k votes
        if n_other == 0:
            credit[k] += pg_pw[k] * fact[k]  # N = k votes, all for gold
            continue
        if n_other == 1:  # a single other answer: g + h x^k / 2, no products needed
            part = pw[0, : gd + 1] * fact[k : k + gd + 1, None]
            part *= pg_pw[k]
            credit[k : k + gd + 1] += part
            if t_max:
                credit[2 * k] += (0.5 * fact[2 * k]) * pg_pw[k] * pw[0, k]
            continue
        scale = pg_pw[k][None, :] * fact[k:, None]  # (deg+1, U): N! p_g^k / k!
        e = np.zeros((t_max + 1, deg + 1, u))
        e[0, : gd + 1] = pw[0, : gd + 1]
        if t_max >= 1:
            e[1, k] = pw[0, k]
        for j in range(1, n_other):
            g = pw[j]
            new = np.zeros_like(e)
            for t in range(min(t_max, j + 1) + 1):
                lo = k * t  # e_t vanishes below degree k * t
                if t <= j:
                    for n in range(min(gd, deg - lo) + 1):
                        width = deg + 1 - lo - n
                        np.multiply(g[n], e[t, lo : lo + width], out=buf[:width])
                        new[t, lo + n :] += buf[:width]
                if t >= 1:
                    width = deg + 1 - lo
                    np.multiply(pw[j, k], e[t - 1, lo - k : lo - k + width], out=buf[:width])
                    new[t, lo:] += buf[:width]
            e = new
        coef = e[0]
        for t in range(1, t_max + 1):
            coef += e[t] / (t + 1)
        credit[k:] += scale * coef
    return np.clip(credit[1:].T, 0.0, 1.0)


#: Rows the compiled MV recursion runs side by side (:func:`_mv_credit_rows`): its innermost loops run over them.
_MV_LANES = 16
_MV_ULANES = np.uint64(_MV_LANES)


@_jit.kernel
def _mv_credit_rows(rows, fact, out):  # noqa: ANN001, ANN202, C901 (the recursion's loop nest, rows side by side)
    """Compiled twin of :func:`_mv_credit_unique` before its clip: row ``i``'s credit for ``N = 1..n_max`` into ``out[i]``.

    Every row runs the numpy code's recursion (the numpy code vectorises every step over the rows,
    and no step mixes rows): the same products and sums in the same order -- ``p^n / n!`` by the
    recurrence ``pw[n - 1] * (p / n)``, each truncated product's terms ``g_n e_t(x - n)`` in
    increasing ``n`` then the tie term, ``e_0 + e_t / (t + 1)`` over ``t``, and ``N! p_g^k / k!`` as
    ``p_g^k / k! * N!`` -- so every value has the numpy path's bits. :data:`_MV_LANES` rows run in
    lock-step, one lane each (the innermost loops run over the lanes, so they become SIMD
    instructions; each lane's operations are its row's, in its row's order, and plain IEEE ``*``
    and ``+`` are not fused). Each output coefficient is summed in a lane accumulator over the
    terms in order (output-stationary: no zero-filled temporaries, no copies); the indices are
    unsigned so that numba emits no negative-index wrap-around, which would block the SIMD loops.

    Two shortcuts, both exact: (1) an answer of probability 0 (the sorted others end with them)
    has ``g_j = 1`` and ``h_j = 0``, so its factor leaves every ``e_t`` as it was (``0.0 + 1.0 e +
    0.0`` has the bits of ``e``): rows are grouped by their number of positive answers (a counting
    sort), and a group of lanes stops its recursion at the last positive answer of any of its
    rows (later ones leave the others' bits as they are). (2) ``e_t`` is zero outside the degrees
    ``[k t, hi_t]`` that its factors can reach (tracked per ``k`` and answer), and adding the
    ``+0.0`` of a zero term leaves a non-negative sum's bits as they are, so those terms are
    skipped (about 40 % of the multiply-adds at ``n_max = 32``).
    """
    u, a = rows.shape
    n_max = out.shape[1]
    n_other = a - 1
    lanes, ul = _MV_LANES, _MV_ULANES
    # group the rows by their number of positive others (sorted descending: those come first)
    n_pos = np.empty(u, np.int64)
    for i in range(u):
        c = 0
        while c < n_other and rows[i, 1 + c] > 0.0:
            c += 1
        n_pos[i] = c
    start = np.zeros(n_other + 2, np.int64)
    for i in range(u):
        start[n_pos[i] + 1] += 1
    for c in range(n_other + 1):
        start[c + 1] += start[c]
    order = np.empty(u, np.int64)
    for i in range(u):
        order[start[n_pos[i]]] = i
        start[n_pos[i]] += 1
    # lane-major working arrays, flat: element [i, j, lane] at (i * dim_j + j) * lanes + lane
    d1 = n_max + 1
    p_lane = np.empty(max(n_other, 1) * lanes)
    pg_lane = np.empty(lanes)
    pw = np.empty(max(n_other, 1) * d1 * lanes)  # p_j^n / n!
    pg_pw = np.empty(d1 * lanes)
    credit = np.empty(d1 * lanes)
    e = np.empty((n_other + 1) * d1 * lanes)
    new = np.empty((n_other + 1) * d1 * lanes)
    acc = np.empty(lanes)
    hi = np.empty(n_other + 1, np.int64)  # e_t is zero above degree hi[t] (and below k t)
    new_hi = np.empty(n_other + 1, np.int64)
    row_of = np.empty(lanes, np.int64)
    for b0 in range(0, u, lanes):
        nb = min(lanes, u - b0)
        n_run = 0  # the answers this group's recursion runs over
        for r in range(lanes):
            i = order[b0 + min(r, nb - 1)]  # a short last group repeats its last row
            row_of[r] = i
            n_run = max(n_run, n_pos[i])
            pg_lane[r] = rows[i, 0]
            for j in range(n_other):
                p_lane[j * lanes + r] = rows[i, 1 + j]
        for r in range(ul):
            pg_pw[r] = 1.0
        for j in range(n_other):
            o = np.uint64(j * d1 * lanes)
            for r in range(ul):
                pw[o + r] = 1.0
        for n in range(1, n_max + 1):
            for j in range(n_other):
                o = np.uint64((j * d1 + n) * lanes)
                op = np.uint64(j * lanes)
                for r in range(ul):
                    pw[o + r] = pw[o - ul + r] * (p_lane[op + r] / n)
            o = np.uint64(n * lanes)
            for r in range(ul):
                pg_pw[o + r] = pg_pw[o - ul + r] * (pg_lane[r] / n)
        for r in range(np.uint64(d1 * lanes)):
            credit[r] = 0.0
        for k in range(1, n_max + 1):
            deg = n_max - k
            gd = min(k - 1, deg)
            t_max = min(n_other, deg // k)
            ok = np.uint64(k * lanes)
            if n_other == 0:
                f = fact[k]
                for r in range(ul):
                    credit[ok + r] += pg_pw[ok + r] * f
                continue
            if n_other == 1:
                for n in range(gd + 1):
                    o = np.uint64(n * lanes)
                    oc = np.uint64((k + n) * lanes)
                    f = fact[k + n]
                    for r in range(ul):
                        credit[oc + r] += (pw[o + r] * f) * pg_pw[ok + r]
                if t_max:
                    oc = np.uint64(2 * k * lanes)
                    f = 0.5 * fact[2 * k]
                    for r in range(ul):
                        credit[oc + r] += (f * pg_pw[ok + r]) * pw[ok + r]
                continue
            for r in range(np.uint64((gd + 1) * lanes)):
                e[r] = pw[r]
            hi[0] = gd
            if t_max >= 1:
                o = np.uint64((d1 + k) * lanes)
                for r in range(ul):
                    e[o + r] = pw[ok + r]
                hi[1] = k
            for j in range(1, n_run):
                oh = np.uint64((j * d1 + k) * lanes)
                for t in range(min(t_max, j + 1) + 1):
                    lo = k * t
                    top = -1
                    if t <= j:
                        top = min(deg, hi[t] + gd)
                    if t >= 1:
                        top = max(top, min(deg, hi[t - 1] + k))
                    new_hi[t] = top
                    for x in range(lo, top + 1):
                        for r in range(ul):
                            acc[r] = 0.0
                        if t <= j:
                            for n in range(max(0, x - hi[t]), min(gd, x - lo) + 1):
                                og = np.uint64((j * d1 + n) * lanes)
                                oe = np.uint64((t * d1 + x - n) * lanes)
                                for r in range(ul):
                                    acc[r] += pw[og + r] * e[oe + r]
                        if t >= 1 and x - k <= hi[t - 1]:
                            oe = np.uint64(((t - 1) * d1 + x - k) * lanes)
                            for r in range(ul):
                                acc[r] += pw[oh + r] * e[oe + r]
                        on = np.uint64((t * d1 + x) * lanes)
                        for r in range(ul):
                            new[on + r] = acc[r]
                for t in range(min(t_max, j + 1) + 1):
                    hi[t] = new_hi[t]
                e, new = new, e
            top0 = hi[0]
            for t in range(1, min(t_max, n_run) + 1):
                top0 = max(top0, hi[t])
            for r in range(np.uint64((hi[0] + 1) * lanes), np.uint64((top0 + 1) * lanes)):
                e[r] = 0.0  # e_0's zeros that the ties below reach
            for t in range(1, min(t_max, n_run) + 1):
                o = np.uint64(t * d1 * lanes)
                div = t + 1.0
                for d in range(k * t, hi[t] + 1):
                    od = np.uint64(d * lanes)
                    for r in range(ul):
                        e[od + r] += e[o + od + r] / div
            for d in range(top0 + 1):
                oc = np.uint64((k + d) * lanes)
                od = np.uint64(d * lanes)
                f = fact[k + d]
                for r in range(ul):
                    credit[oc + r] += (pg_pw[ok + r] * f) * e[od + r]
        for r in range(nb):
            i = row_of[r]
            for n in range(n_max):
                out[i, n] = credit[(n + 1) * lanes + r]


def _unique_rows(rows: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """``np.unique(rows, axis=0, return_inverse=True)`` through a lexicographic sort (much faster)."""
    order = np.lexsort(rows.T[::-1])
    srt = rows[order]
    new = np.empty(len(rows), dtype=bool)
    new[:1] = True
    np.any(srt[1:] != srt[:-1], axis=1, out=new[1:])
    group = np.cumsum(new) - 1
    inverse = np.empty(len(rows), dtype=np.int64)
    inverse[order] = group
    return srt[new], inverse


def mv_credit(probs: ArrayLike, gold: ArrayLike, n_max: int) -> NDArray[np.float64]:
    """Exact expected majority-vote credit for every row and ``N = 1..n_max``.

    Args:
        probs: ``(R, A)`` answer-category distributions (rows sum to 1).
        gold: ``(R,)`` gold category of each row.
        n_max: largest number of votes.

    Returns:
        ``(R, n_max)``: ``E[1/t * 1(gold among the t most-voted answers)]`` for ``N`` i.i.d. votes.
    """
    p = np.asarray(probs, dtype=np.float64)
    g = np.asarray(gold, dtype=np.int64)
    if p.ndim != 2 or g.shape != (p.shape[0],):
        raise ValueError(f"probs must be (R, A) and gold (R,); got {p.shape} and {g.shape}")
    if np.any(g < 0) or np.any(g >= p.shape[1]):
        raise ValueError(f"gold categories must lie in 0..{p.shape[1] - 1}")
    if not 1 <= int(n_max) <= MV_N_MAX_LIMIT:
        raise ValueError(f"the exact MV oracle supports n_max in 1..{MV_N_MAX_LIMIT}; got {n_max}")
    if p.shape[0] == 0:
        return np.zeros((0, int(n_max)))
    rows = _gold_first(p, g)
    unique, inverse = _unique_rows(rows)
    n_max = int(n_max)
    step = max(256, _MV_BLOCK_ELEMENTS // ((n_max + 1) * max(1, min(p.shape[1] - 1, 3))))
    credit = np.empty((unique.shape[0], n_max))
    for start in range(0, unique.shape[0], step):  # row blocks bound the working memory
        credit[start : start + step] = _mv_credit_unique(unique[start : start + step], n_max)
    return credit[inverse]


def _table_mv_credit(table: OutcomeTable) -> NDArray[np.float64]:
    """Cached ``(P, Q, n_max)`` exact MV credit of a table."""
    cached = table.cache.get(_MV_CACHE_KEY)
    if cached is None:
        answer_probs, gold_q = table.mv_arrays()
        p, q, a = answer_probs.shape
        gold = np.broadcast_to(gold_q[None, :], (p, q)).reshape(-1)
        cached = mv_credit(answer_probs.reshape(p * q, a), gold, table.n_max).reshape(p, q, table.n_max)
        cached.setflags(write=False)
        table.cache[_MV_CACHE_KEY] = cached
    return cached


# --------------------------------------------------------------------------- best-of-N
def _emax_block(s: NDArray[np.float64], p: NDArray[np.float64], n_max: int) -> NDArray[np.float64]:
    """:func:`bon_expected_max` of one cache-sized block of rows, in outcome-major layout."""
    if np.any(p <= 0):
        # An outcome of probability 0 never occurs: give it the row's lowest possible score so it
        # cannot be the maximum (it then contributes nothing, whatever its value).
        floor = np.where(p > 0, s, np.inf).min(axis=1, keepdims=True)
        s = np.where(p > 0, s, floor)
    order = np.argsort(s, axis=1, kind="stable")
    st = np.ascontiguousarray(np.take_along_axis(s, order, axis=1).T)  # (M, r), ascending
    pt = np.take_along_axis(p, order, axis=1).T
    cdf = np.cumsum(pt, axis=0)
    cdf = cdf[:-1] / cdf[-1]  # F_1..F_{M-1}, normalised against rounding
    ds = np.diff(st, axis=0)
    top = st[-1]
    res = np.empty((n_max, st.shape[1]))
    power = cdf.copy()
    for n in range(n_max):
        res[n] = top - np.einsum("mr,mr->r", ds, power)
        power *= cdf
    return res.T


def bon_expected_max(
    scores: ArrayLike, probs: ArrayLike, n_max: int, out: NDArray[np.float64] | None = None
) -> NDArray[np.float64]:
    """Exact ``E[max of N i.i.d. draws]`` of discrete distributions, ``N = 1..n_max``.

    Uses ``E[max] = s_(M) - sum_{j<M} (s_(j+1) - s_(j)) F_j^N`` over scores sorted ascending with
    cumulative probabilities ``F_j``; rows are processed in cache-sized blocks.

    Args:
        scores: ``(R, M)`` value of each outcome.
        probs: ``(R, M)`` outcome probabilities (rows sum to 1; zeros allowed).
        n_max: largest ``N``.
        out: optional ``(R, n_max)`` float64 array to write into.

    Returns:
        ``(R, n_max)`` (``out`` when given).
    """
    s = np.asarray(scores, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if s.shape != p.shape or s.ndim != 2:
        raise ValueError(f"scores and probs must both be (R, M); got {s.shape} and {p.shape}")
    rows, m = s.shape
    if out is None:
        out = np.empty((rows, int(n_max)))
    elif out.shape != (rows, int(n_max)):
        raise ValueError(f"out must have shape {(rows, int(n_max))}; got {out.shape}")
    step = max(1, _BON_BLOCK_ELEMENTS // max(m, 1))
    for start in range(0, rows, step):
        out[start : start + step] = _emax_block(s[start : start + step], p[start : start + step], int(n_max))
    return out


def _bon_per_query(table: OutcomeTable, w: NDArray[np.float64]) -> NDArray[np.float64]:
    """Exact BoN per-query utilities ``(C, P, Q, n_max)`` for weights ``(C, K+1)``, context-chunked."""
    vals, probs = table.bon_arrays()
    p, q, m, _ = vals.shape
    c, n_max = w.shape[0], table.n_max
    out = np.empty((c, p, q, n_max))
    cost_n = table.cost[:, :, None] * np.arange(1, n_max + 1)  # (P, Q, n_max)
    step = max(1, _BON_CHUNK_ELEMENTS // max(p * q * m, 1))
    for start in range(0, c, step):
        chunk = w[start : start + step]
        k = chunk.shape[0]
        scores = np.einsum("pqmk,ck->cpqm", vals, chunk[:, :-1], optimize=True).reshape(-1, m)
        chunk_probs = np.broadcast_to(probs, (k, p, q, m)).reshape(-1, m)
        view = out[start : start + k]
        bon_expected_max(scores, chunk_probs, n_max, out=view.reshape(-1, n_max))
        for i in range(k):  # in place: avoids a (k, P, Q, n_max) temporary
            view[i] -= chunk[i, -1] * cost_n
    return out


# --------------------------------------------------------------------------- public API
def _weights(table: OutcomeTable, weights: ArrayLike | None) -> NDArray[np.float64]:
    return table.contexts.weights if weights is None else as_weights(weights, table.n_objectives)


def per_query_values(table: OutcomeTable, weights: ArrayLike | None = None) -> NDArray[np.float64]:
    """Exact expected utility of every arm on every query, ``(C, P, Q, n_max)``.

    ``weights`` (``(C, K + 1)``, last column the cost magnitude) defaults to the table's contexts;
    those values are cached in ``table.cache`` (BoN returns the cached array itself, read-only).
    For many other contexts prefer :func:`q_values`, which never materialises the query axis for MV.
    """
    w = _weights(table, weights)
    n = np.arange(1, table.n_max + 1)
    if table.strategy == "mv":
        credit = _table_mv_credit(table)
        return w[:, 0, None, None, None] * credit[None] - w[:, -1, None, None, None] * (table.cost[None, :, :, None] * n)
    if table.strategy != "bon":
        raise ValueError(f"unknown strategy {table.strategy!r}")
    if weights is None:
        cached = table.cache.get(_BON_CACHE_KEY)
        if cached is None:
            cached = _bon_per_query(table, w)
            cached.setflags(write=False)
            table.cache[_BON_CACHE_KEY] = cached
        return cached
    return _bon_per_query(table, w)


def _query_index(table: OutcomeTable, queries: ArrayLike | None) -> NDArray[np.int64] | slice:
    if queries is None:
        return slice(None)
    idx = np.asarray(queries)
    if idx.dtype == bool:
        if idx.shape != (table.n_queries,):
            raise ValueError(f"a boolean query mask must have shape ({table.n_queries},); got {idx.shape}")
        idx = np.flatnonzero(idx)
    idx = idx.astype(np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("queries is empty; pass at least one query index (or None for all)")
    if idx.min() < 0 or idx.max() >= table.n_queries:
        raise ValueError(f"query indices must lie in 0..{table.n_queries - 1}")
    return idx


def q_values(
    table: OutcomeTable, queries: ArrayLike | None = None, weights: ArrayLike | None = None
) -> NDArray[np.float64]:
    """Exact ``Q(c, p, N)`` averaged over ``queries`` (index array or boolean mask; None = all).

    Returns ``(C, P, n_max)``. MV is a single multiply-add for any number of contexts (the credit is
    context-free); BoN per-query values are computed chunk by chunk over contexts and averaged.
    """
    idx = _query_index(table, queries)
    w = _weights(table, weights)
    n = np.arange(1, table.n_max + 1)
    if table.strategy == "mv":
        credit = _table_mv_credit(table)[:, idx].mean(axis=1)  # (P, n_max)
        cost = table.cost[:, idx].mean(axis=1)  # (P,)
        return w[:, 0, None, None] * credit[None] - w[:, -1, None, None] * (cost[:, None] * n)[None]
    if weights is None:
        return per_query_values(table)[:, :, idx].mean(axis=2)
    p, q, m, _ = table.bon_arrays()[0].shape
    step = max(1, _BON_CHUNK_ELEMENTS // max(p * q * m, 1))
    out = np.empty((w.shape[0], p, table.n_max))
    for start in range(0, w.shape[0], step):
        out[start : start + step] = _bon_per_query(table, w[start : start + step])[:, :, idx].mean(axis=2)
    return out


def best_arms(q: ArrayLike) -> NDArray[np.int64]:
    """Flat index of the best arm per context, ``(C,)``, from ``q`` of shape ``(C, P, n_max)``.

    Values within ``TIE_RTOL`` of the maximum count as tied; ties go to the lowest flat index
    (lowest prompt, then smallest N).
    """
    qa = np.asarray(q, dtype=np.float64)
    flat = qa.reshape(qa.shape[0], -1)
    top = flat.max(axis=1, keepdims=True)
    near = flat >= top - TIE_RTOL * np.maximum(1.0, np.abs(top))
    return np.argmax(near, axis=1).astype(np.int64)


def arm_distribution(policy: Any, weights: ArrayLike, n_arms: int) -> NDArray[np.float64]:
    """Deployment distribution ``(C, n_arms)`` of a policy object on the contexts ``weights (C, K+1)``.

    ``policy.arm_probs(weights, n_arms)`` when the policy has it (every
    :class:`iapo_gym.agents.Policy`: mass 1 on ``act`` for a deterministic one), else the one-hot
    of ``policy.act(weights)``. Raises ``ValueError`` unless every row is a distribution.
    """
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    n_arms = int(n_arms)
    if hasattr(policy, "arm_probs"):
        pi = np.asarray(policy.arm_probs(w, n_arms), dtype=np.float64)
    else:  # any object with act(weights) -> arms
        arms = np.asarray(policy.act(w), dtype=np.int64)
        if arms.shape != (w.shape[0],) or (arms.size and (arms.min() < 0 or arms.max() >= n_arms)):
            raise ValueError(f"policy.act gave arms of shape {arms.shape}; expected ({w.shape[0]},) in 0..{n_arms - 1}")
        pi = np.zeros((w.shape[0], n_arms))
        pi[np.arange(w.shape[0]), arms] = 1.0
    if pi.shape != (w.shape[0], n_arms):
        raise ValueError(f"policy gave arm probabilities of shape {pi.shape}; expected {(w.shape[0], n_arms)}")
    _check_distribution(pi)
    return pi


def _check_distribution(pi: NDArray[np.float64]) -> None:
    if np.any(pi < -1e-12) or not np.allclose(pi.sum(axis=1), 1.0, atol=1e-9):
        raise ValueError("a policy's arm probabilities must be non-negative and sum to 1 per context")


def context_values(q: ArrayLike, arms: Any, weights: ArrayLike | None = None) -> NDArray[np.float64]:
    """Expected Q of the deployed arm per context: ``sum_a pi(a | c) q[c, a]``.

    The one place where a policy's exact value is computed; :func:`acr` averages it over contexts,
    and the experiment runner's evaluator uses it for ACR and regret.

    Args:
        q: exact Q-values ``(C, P, n_max)`` or ``(C, n_arms)`` of the contexts.
        arms: what is deployed, one of

            * integer flat arm indices ``(C,)``, or ``(S, C)`` for ``S`` deterministic policies at once;
            * a floating ``(C, n_arms)`` arm distribution per context (rows sum to 1);
            * a policy object (``arm_probs(weights, n_arms)`` or ``act(weights)``, e.g. any
              :class:`iapo_gym.agents.Policy`), deployed on ``weights``.
        weights: ``(C, K + 1)`` weight vectors of the contexts; needed (only) for a policy object.

    Returns:
        ``(C,)``, or ``(S, C)`` for ``(S, C)`` arm indices.
    """
    qa = np.asarray(q, dtype=np.float64)
    flat = qa.reshape(qa.shape[0], -1)
    c, n_arms = flat.shape
    if hasattr(arms, "act") or hasattr(arms, "arm_probs"):
        if weights is None:
            raise ValueError("a policy object is deployed on contexts: pass weights= (e.g. contexts.weights)")
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        if w.shape[0] != c:
            raise ValueError(f"weights must hold one row per context of q ({c}); got {w.shape[0]}")
        return (arm_distribution(arms, w, n_arms) * flat).sum(axis=1)
    a = np.asarray(arms)
    if a.ndim == 2 and np.issubdtype(a.dtype, np.floating):  # a distribution over arms per context
        if a.shape != (c, n_arms):
            raise ValueError(f"an arm distribution must be (C, n_arms) = {(c, n_arms)}; got {a.shape}")
        _check_distribution(a)
        return (a * flat).sum(axis=1)
    a = a.astype(np.int64)
    if a.ndim not in (1, 2) or a.shape[-1] != c:
        raise ValueError(f"arms must be (C,) or (S, C) with C={c}; got {a.shape}")
    if a.min() < 0 or a.max() >= n_arms:
        raise ValueError(f"arm indices must lie in 0..{n_arms - 1}")
    return flat[np.arange(c), a]


def acr(q: ArrayLike, arms: Any, probs: ArrayLike, weights: ArrayLike | None = None) -> float | NDArray[np.float64]:
    """Exact average contextual return ``sum_c probs[c] * sum_a pi(a | c) * Q(c, a)``.

    The project's one exact-ACR function: the experiment runner, the scripts and the tests all
    score policies with it (through :func:`context_values`).

    Args:
        q: exact Q-values ``(C, P, n_max)`` (e.g. :func:`q_values` on a run's test queries) or ``(C, n_arms)``.
        arms: flat arm indices ``(C,)`` (returns a float) or ``(S, C)`` for ``S`` policies at once
            (returns ``(S,)``), a floating ``(C, n_arms)`` arm distribution, or a policy object
            (see :func:`context_values`; then pass ``weights``).
        probs: ``(C,)`` context probabilities.
        weights: ``(C, K + 1)`` context weight vectors on which a policy object is deployed.
    """
    pr = np.asarray(probs, dtype=np.float64)
    c = np.asarray(q).shape[0]
    if pr.shape != (c,):
        raise ValueError(f"probs must be (C,) with C={c}; got {pr.shape}")
    values = context_values(q, arms, weights)
    out = values @ pr
    return float(out) if values.ndim == 1 else out


def regret(q: ArrayLike, arms: Any, probs: ArrayLike, weights: ArrayLike | None = None) -> float | NDArray[np.float64]:
    """``acr(q, best_arms(q), probs) - acr(q, arms, probs, weights)`` (same arguments as :func:`acr`)."""
    return acr(q, best_arms(q), probs) - acr(q, arms, probs, weights)


# --------------------------------------------------------------------------- report
@dataclass(frozen=True)
class ContextBest:
    """The best arm of one context."""

    name: str
    weights: list[float]
    prob: float
    prompt: int
    n: int
    q: float


@dataclass(frozen=True)
class OracleReport:
    """Exact oracle summary of a table on a set of queries (see :func:`report`)."""

    task: str
    strategy: str
    n_prompts: int
    n_max: int
    n_queries: int
    contexts: list[ContextBest]
    acr: float
    best_single_sample: float

    def to_json(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)

    def format(self) -> str:
        """Human-readable table."""
        width = max([len("context")] + [len(c.name) for c in self.contexts])
        lines = [
            f"{self.task} ({self.strategy}): {self.n_prompts} prompts, N_max {self.n_max}, {self.n_queries} queries",
            f"{'context':<{width}} {'prob':>6} {'prompt':>6} {'N':>4} {'Q':>9}",
        ]
        for c in self.contexts:
            lines.append(f"{c.name:<{width}} {c.prob:>6.3f} {c.prompt:>6d} {c.n:>4d} {c.q:>9.4f}")
        lines.append(f"oracle ACR {self.acr:.4f}; best single-sample value (first context, N=1) {self.best_single_sample:.4f}")
        return "\n".join(lines)


def report(table: OutcomeTable, queries: ArrayLike | None = None) -> OracleReport:
    """Best arm and Q per context of the table's contexts, oracle ACR, on ``queries`` (None = all).

    ``best_single_sample`` is the best prompt's ``N = 1`` value under the first context ignoring
    cost (for MV: the best single-sample accuracy).
    """
    q = q_values(table, queries)
    best = best_arms(q)
    prompt, n = arm_from_index(best, table.n_max)
    flat = q.reshape(q.shape[0], -1)
    ctx = table.contexts
    rows = [
        ContextBest(
            ctx.names[c], ctx.weights[c].tolist(), float(ctx.probs[c]), int(prompt[c]), int(n[c]), float(flat[c, best[c]])
        )
        for c in range(len(ctx))
    ]
    w0 = ctx.weights[:1].copy()
    w0[:, -1] = 0.0
    single = float(q_values(table, queries, weights=w0)[0, :, 0].max())
    idx = _query_index(table, queries)
    n_q = table.n_queries if isinstance(idx, slice) else int(idx.size)
    return OracleReport(
        task=table.task,
        strategy=table.strategy,
        n_prompts=table.n_prompts,
        n_max=table.n_max,
        n_queries=n_q,
        contexts=rows,
        acr=float(acr(q, best, ctx.probs)),
        best_single_sample=single,
    )
