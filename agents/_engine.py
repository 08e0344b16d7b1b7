"""Vectorised statistics engine shared by the zoo: nested block sums and per-(seed, prompt, N) tallies.

Every structure-aware agent turns raw pulls into per-arm running sums with two kinds of reuse
(paper section 3.1):

* **nested reuse** -- a pull of ``(p, N)`` is split into ``N // k`` disjoint consecutive blocks
  ``[0:k], [k:2k], ...`` for every ``k = 1..N``; each block is an i.i.d. sample of ``(p, k)``;
* **cross-context reuse** -- every block is scored under every context.

Speed comes from three observations, all exact:

1. Utilities split into a *gain* that depends only on the objective weights and a *cost* term that
   is linear in the context's cost weight: ``u_c = gain_{u(c)} - w_cost(c) * cost``. Contexts that
   share objective weights (MV: every context; the BoN tasks' 27 contexts: 9 weight pairs) share
   one gain, so gains are computed for the ``U`` distinct objective-weight rows only and the cost
   sums once per arm.
2. The cost of all ``n // k`` blocks of size ``k`` together is the cost of the first
   ``(n // k) * k`` completions: one gather from a cumulative sum.
3. Every block of every size is handled in ONE pass over a precomputed block plan (all
   ``(k, start, end)`` triples of a width ``L``), with no per-block or per-size Python loop:

   * MV: cumulative one-hot vote counts along completions (categories re-labelled so that the gold
     answer is category 0) make each block's vote vector the difference of two cumulative rows;
     the credit is ``1/t`` when gold ties ``t - 1`` other answers at the top (paper Eq. 2).
   * BoN: a sparse table of running maxima (levels ``2^l``) gives each block's maximum as the
     larger of two overlapping power-of-two windows.

   Block results are summed per size with ``np.add.reduceat`` (blocks are ordered by size).
   With numba (``iapo_gym._jit``) the ``"block"`` tallies of both strategies run as compiled twins
   that give the same bits; best-of-N's (:func:`_bon_block_add_kernel`) does ``reduceat``'s additions
   in numpy's pairwise order.

:class:`NestedStats` keeps the tallies as arrays ``gain (S, P, U, n_max)``, ``cost (S, P, n_max)``
and ``count (S, P, n_max)`` for ``S`` runs (seeds) at once; :meth:`NestedStats.means` expands them
to ``(S, C, P, n_max)`` per-context means. ``tests/test_agents_engine.py`` checks the engine against
the reference :func:`iapo_gym.utility.nested_sums`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from iapo_gym import _jit
from iapo_gym.contexts import ContextSet
from iapo_gym.sampling import Pulls


# ----------------------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class BlockPlan:
    """All nested blocks of a pull of width ``L``: block ``i`` is ``[start[i], end[i])`` of size ``size[i]``.

    Blocks are ordered by size (``k = 1..L``) and, within a size, by position, so that
    ``np.add.reduceat(x, size_start, axis=-1)`` sums them per size. Tables indexed by a pull's
    completion count ``n = 0..L``: ``count[n]`` (``n // k`` per size), ``used[n]`` (``(n // k) * k``,
    the completions its blocks of size ``k`` cover) and ``real[n]`` (the blocks inside ``[0, n)``).
    """

    width: int
    size: NDArray[np.int64]
    start: NDArray[np.int64]
    end: NDArray[np.int64]
    size_start: NDArray[np.int64]
    level: NDArray[np.int64]  # floor(log2(size)): sparse-table level of the block
    n_levels: int
    count: NDArray[np.int64]  # (L + 1, L)
    used: NDArray[np.int64]  # (L + 1, L)
    real: NDArray[np.bool_]  # (L + 1, n_blocks)


@lru_cache(maxsize=256)
def block_plan(width: int) -> BlockPlan:
    """The (cached) :class:`BlockPlan` of width ``width``."""
    if width < 1:
        raise ValueError(f"block plans need width >= 1; got {width}")
    ks = np.arange(1, width + 1)
    per = width // ks
    size = np.repeat(ks, per)
    first = np.concatenate([[0], np.cumsum(per)[:-1]])
    j = np.arange(size.size) - np.repeat(first, per)
    start = j * size
    level = np.floor(np.log2(size)).astype(np.int64)
    n = np.arange(width + 1)
    count = n[:, None] // ks[None, :]
    used = count * ks[None, :]
    real = start[None, :] + size[None, :] <= n[:, None]
    arrays = [size, start, start + size, first, level, count, used, real]
    for a in arrays:
        a.setflags(write=False)
    return BlockPlan(width, size, start, start + size, first, level, int(level.max()) + 1, count, used, real)


# ------------------------------------------------------------------------------- block gains
def _mv_size_sums(pulls: Pulls, plan: BlockPlan, n: NDArray[np.int64]) -> NDArray[np.float64]:
    """MV credit summed over each pull's real blocks per size: ``(B, L)`` (size ``k`` in column ``k - 1``).

    Only blocks inside the first ``n[b]`` completions count (the ``n // k`` real blocks of each
    size); completions past ``n[b]`` may hold anything.

    * Sizes 1 and 2 need only the gold votes: a block's credit is ``gold / k`` (size 2 with one
      gold vote is a 1-1 tie, credit 1/2), so their sums come from the cumulative gold count.
    * Larger blocks compare gold with every other answer (paper Eq. 2): :func:`_mv_tail_sums`.

    Every credit is a float32 ``1 / t``, a multiple of ``2 ** -(26 + log2 A)``, so every partial
    sum is exact in float64: the sums do not depend on the order of addition.
    """
    a = int(pulls.n_categories)
    width = plan.width
    if _jit.enabled():
        return _mv_size_sums_compiled(pulls, n, width)
    if a == 1:  # one answer: every block is won
        return plan.count[n].astype(np.float64)
    out = np.empty((len(pulls), width))
    diff = pulls.outcome[:, :width] - pulls.gold[:, None]  # 0 <=> gold; entries past n: never read
    gold_cum = np.zeros((len(pulls), width + 1), dtype=np.int8 if width < 127 else np.int32)
    np.cumsum(diff == 0, axis=1, out=gold_cum[:, 1:])
    out[:, 0] = np.take_along_axis(gold_cum, n[:, None], axis=1)[:, 0]
    if width >= 2:
        out[:, 1] = np.take_along_axis(gold_cum, plan.used[n, 1:2], axis=1)[:, 0]
        out[:, 1] *= 0.5
    if width < 3:
        return out
    tail = int(plan.size_start[2])
    bits = width.bit_length() + 1  # a block's count of one answer (<= width) plus a guard bit
    if (a - 1) * bits > 62:
        gold = np.take(gold_cum, plan.end[tail:], axis=1)
        gold -= np.take(gold_cum, plan.start[tail:], axis=1)
        credit = _mv_tail_credit_by_answer(diff, gold, plan, a, tail)
        if int(n.min()) < width:  # rows of several sizes: no credit for blocks past a row's n
            credit *= plan.real[n, tail:]
        out[:, 2:] = np.add.reduceat(credit, plan.size_start[2:] - tail, axis=1)
        return out
    out[:, 2:] = _mv_tail_sums(diff, plan, n, a, tail).T
    return out


@lru_cache(maxsize=64)
def _vote_encoding(a: int, bits: int) -> tuple[NDArray[np.int64], int, int]:
    """The packed votes of :func:`_mv_tail_sums` for ``a`` answers in fields of ``bits``: ``(word, ones, guards)``.

    ``word[r]`` (read-only, int64) is what a completion of relabelled answer ``r`` adds (``-ones`` for
    gold, ``1 << (bits * (r - 1))`` otherwise); ``ones`` has a 1 in every field, ``guards`` every
    field's top bit. The numpy path and both compiled kernels take the encoding from here.
    """
    ones = sum(1 << (bits * c) for c in range(a - 1))
    word = np.array([-ones] + [1 << (bits * (r - 1)) for r in range(1, a)], dtype=np.int64)
    word.setflags(write=False)
    return word, ones, ones << (bits - 1)


def _mv_tail_sums(diff: NDArray[np.int64], plan: BlockPlan, n: NDArray[np.int64], a: int, tail: int) -> NDArray[np.float64]:
    """Credit of the blocks ``tail:`` (sizes >= 3) of every pull, summed per size: ``(L - 2, B)``.

    Packed votes (SIMD within a register): with ``r = (answer - gold) mod A``, a completion adds
    ``1 << (bits * (r - 1))`` for another answer and ``-ones`` (minus one in every field) for the
    gold one. A block's word, the difference of two cumulative words, is then
    ``sum_c (v_c - g) << (bits * c)``; adding a guard bit ``2 ** (bits - 1)`` to each field makes
    every field ``2 ** (bits - 1) + v_c - g``, in ``[0, 2 ** bits)`` since counts are at most the
    width, so no borrow crosses a field and the guard of field ``c`` is set iff ``v_c >= g``;
    subtracting ``ones`` once more tests ``v_c > g``. Gold wins iff no answer beats it and shares
    the win with the answers equal to it: credit ``1 / (1 + ties)`` (paper Eq. 2).

    The cumulative words are laid out completion-major (``(L + 1, B)``), so every block is a whole
    row: the blocks are row gathers, each step runs along all pulls at once, and the blocks of one
    size are summed by adding whole rows (exact: see :func:`_mv_size_sums`).
    """
    width, b = plan.width, diff.shape[0]
    bits = width.bit_length() + 1
    dtype = np.int32 if (a - 1) * bits <= 30 else np.int64
    word64, ones, guards64 = _vote_encoding(a, bits)
    guards, word = dtype(guards64), word64.astype(dtype)
    cum = np.zeros((b, width + 1), dtype=dtype)
    np.cumsum(np.take(word, diff, mode="wrap"), axis=1, out=cum[:, 1:])  # r = diff mod A
    cum = np.ascontiguousarray(cum.T)  # completion-major
    d = cum[plan.end[tail:]]
    d -= cum[plan.start[tail:]]
    d += guards  # guard of field c set iff v_c >= g
    ties = np.empty(d.shape, dtype=np.intp)  # intp: the credit lookup below needs no index conversion
    np.bitwise_count(d & guards, out=ties)
    d -= dtype(ones)  # guard of field c set iff v_c > g
    d &= guards
    won = d == 0  # no answer beats gold
    if int(n.min()) < width:  # rows of several sizes: no credit for blocks past a row's n
        won &= plan.end[tail:, None] <= n[None, :]
    credit = np.take(_credit_lut(a), ties)
    credit *= won
    first = plan.size_start[2:] - tail
    if b < 512:  # few pulls (a sequential agent's step): one call beats a loop over the sizes
        return np.add.reduceat(credit, first, axis=0)
    sums = np.empty((width - 2, b))
    bounds = first.tolist() + [credit.shape[0]]
    for i in range(width - 2):
        np.sum(credit[bounds[i] : bounds[i + 1]], axis=0, out=sums[i])
    return sums


@lru_cache(maxsize=64)
def _credit_lut(a: int) -> NDArray[np.float64]:
    """MV credit ``1 / (1 + ties)`` for ``ties = 0..a - 1``: float32 values (exact sums), as float64."""
    lut = (1.0 / np.arange(1, a + 1)).astype(np.float32).astype(np.float64)
    lut.setflags(write=False)
    return lut


def _mv_size_sums_compiled(pulls: Pulls, n: NDArray[np.int64], width: int) -> NDArray[np.float64]:
    """:func:`_mv_size_sums` by the compiled kernels: packed votes when they fit one 64-bit word, else counts."""
    a = int(pulls.n_categories)
    bits = width.bit_length() + 1  # as _mv_tail_sums: a count (<= width) plus a guard bit
    if (a - 1) * bits <= 62:
        word, ones, guards = _vote_encoding(a, bits)
        return _mv_size_sums_packed(pulls.outcome, pulls.gold, n, width, a, bits, word, ones, guards, _credit_lut(a))
    return _mv_size_sums_counts(pulls.outcome, pulls.gold, n, width, a, _credit_lut(a))


@_jit.kernel
def _mv_size_sums_packed(outcome, gold, n, width, a, bits, word, ones, guards, lut):  # noqa: ANN001, ANN202
    """Compiled twin of :func:`_mv_size_sums` with the packed votes of :func:`_mv_tail_sums`: ``(B, width)``.

    Answers are relabelled ``r = (answer - gold) mod A`` (gold is 0); a completion adds ``-ones``
    (gold) or ``1 << (bits * (r - 1))``, so a block's word, the difference of two cumulative words,
    plus the guard bits has the guard of field ``c`` set iff answer ``c`` has at least gold's votes.
    Gold wins iff no answer has more (``(d - ones) & guards == 0``) and shares the win with the
    ``ties`` answers that have as many (the guards' count, summed into the top field by one
    product): credit ``lut[ties]``, the numpy path's values, whose sums are exact in float64 (see
    :func:`_mv_size_sums`): the same bits whatever the order of addition.
    """
    b_n = outcome.shape[0]
    out = np.zeros((b_n, width))
    top = bits * (a - 2) if a >= 2 else 0
    field = (1 << bits) - 1
    cum = np.zeros(width + 1, dtype=np.int64)
    for b in range(b_n):
        nb = n[b]
        g0 = gold[b]
        for j in range(nb):
            cum[j + 1] = cum[j] + word[(outcome[b, j] - g0) % a]
        for k in range(1, nb + 1):
            total = 0.0
            for s in range(0, (nb // k) * k, k):
                d = cum[s + k] - cum[s] + guards  # guard of field c set iff v_c >= g
                ties = ((((d & guards) >> (bits - 1)) * ones) >> top) & field
                won = ((d - ones) & guards) == 0  # no answer beats gold: then v_c >= g means a tie
                total += lut[ties] * won
            out[b, k - 1] = total
    return out


@_jit.kernel
def _mv_size_sums_counts(outcome, gold, n, width, a, lut):  # noqa: ANN001, ANN202
    """:func:`_mv_size_sums_packed` for answers too many for one word: one cumulative count per answer."""
    b_n = outcome.shape[0]
    out = np.zeros((b_n, width))
    counts = np.zeros((width + 1, a), dtype=np.int32)
    for b in range(b_n):
        nb = n[b]
        g0 = gold[b]
        for j in range(nb):
            for c in range(a):
                counts[j + 1, c] = counts[j, c]
            counts[j + 1, (outcome[b, j] - g0) % a] += 1
        for k in range(1, nb + 1):
            total = 0.0
            for s in range(0, (nb // k) * k, k):
                g = counts[s + k, 0] - counts[s, 0]
                ties = 0
                won = True
                for c in range(1, a):
                    v = counts[s + k, c] - counts[s, c]
                    won &= v <= g
                    ties += v == g
                if won:
                    total += lut[ties]
            out[b, k - 1] = total
    return out


def _mv_tail_credit_by_answer(
    diff: NDArray[np.int64], gold: NDArray, plan: BlockPlan, a: int, tail: int
) -> NDArray[np.float64]:
    """Credit of blocks ``tail:`` for answers too many for one packed word: one cumulative count per answer."""
    width = plan.width
    dtype = np.int8 if width < 127 else np.int16 if width < 32_000 else np.int32
    cum = np.zeros((diff.shape[0], width + 1), dtype=dtype)
    rel = diff % a
    top_other = np.zeros_like(gold)
    ties = np.zeros(gold.shape, dtype=np.int8 if a < 127 else np.int32)
    for category in range(1, a):
        np.cumsum(rel == category, axis=1, dtype=dtype, out=cum[:, 1:])
        v = np.take(cum, plan.end[tail:], axis=1) - np.take(cum, plan.start[tail:], axis=1)
        np.maximum(top_other, v, out=top_other)
        ties += v == gold
    recip = (1.0 / np.arange(1, a + 1)).astype(np.float32)
    return np.where(gold >= top_other, recip[ties], np.float32(0.0)).astype(np.float64)


def _bon_block_max(pulls: Pulls, obj_weights: NDArray[np.float64], plan: BlockPlan) -> NDArray[np.float32]:
    """Best weighted score of every block, ``(U, B, n_blocks)``, via a sparse table of maxima."""
    width = plan.width
    vals = pulls.values[:, :width].astype(np.float32, copy=False)
    score = np.einsum("blk,uk->ubl", vals, obj_weights.astype(np.float32))  # (U, B, L)
    u, b = score.shape[:2]
    table = np.empty((u, b, plan.n_levels, width), dtype=np.float32)
    table[:, :, 0] = score
    for lev in range(1, plan.n_levels):
        half = 1 << (lev - 1)
        span = width - (1 << lev) + 1
        np.maximum(table[:, :, lev - 1, :span], table[:, :, lev - 1, half : half + span], out=table[:, :, lev, :span])
    flat = table.reshape(u, b, plan.n_levels * width)
    first = plan.level * width + plan.start
    second = plan.level * width + plan.end - (1 << plan.level)
    return np.maximum(np.take(flat, first, axis=2), np.take(flat, second, axis=2))


#: Nested blocks one pass of :func:`nested_gains` holds at once: its per-block temporaries stay
#: in cache (measured on MATH: calls of thousands of pulls ran about 1.5x slower per block).
CHUNK_BLOCKS = 1 << 19


def nested_gains(
    pulls: Pulls, obj_weights: NDArray[np.float64], n_max: int
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.float64]]:
    """Nested-reuse sums of a batch of pulls, split into gain and cost.

    Args:
        pulls: ``B`` raw pulls (any width; completions past ``n_max`` are ignored).
        obj_weights: ``(U, K)`` distinct objective-weight rows (MV: ``(U, 1)``).
        n_max: largest block size recorded.

    Returns:
        ``gain (U, B, L)``: for each block size ``k = 1..L`` the sum over the pull's ``n // k``
        blocks of the aggregated score (MV: ``w_1 * credit``; BoN: ``max_i w . o_i``);
        ``count (B, L)``: ``n // k``; ``cost (B, L)``: the total cost of those blocks.
        ``L = min(width, n_max)``. The utility sum under a context is ``gain[u(c)] - w_cost * cost``.

    Every row is computed on its own, so the pulls are processed in chunks of rows that keep the
    per-block temporaries near :data:`CHUNK_BLOCKS` (the same values, faster).
    """
    n = np.minimum(pulls.n.astype(np.int64), n_max)
    width = int(min(pulls.width, n_max, max(int(n.max(initial=0)), 1)))
    plan = block_plan(width)
    count = plan.count[n]
    cost = _block_costs(pulls, plan, n)
    per_row = plan.size.size * (1 if pulls.strategy == "mv" else obj_weights.shape[0] * (plan.n_levels + 2))
    rows = max(64, CHUNK_BLOCKS // per_row)
    if pulls.strategy not in ("mv", "bon"):
        raise ValueError(f"unknown strategy {pulls.strategy!r}; expected 'mv' or 'bon'")
    if len(pulls) <= rows:
        return _block_gains(pulls, obj_weights, plan, n), count, cost
    gain = np.empty((obj_weights.shape[0], len(pulls), width))
    for lo in range(0, len(pulls), rows):
        sl = slice(lo, lo + rows)
        gain[:, sl] = _block_gains(_rows(pulls, sl), obj_weights, plan, n[sl])
    return gain, count, cost


def _rows(pulls: Pulls, sl: slice) -> Pulls:
    """The pulls of rows ``sl`` (views; lazily built fields stay lazy)."""
    return Pulls(
        pulls.strategy,
        pulls.prompt[sl],
        pulls.n[sl],
        pulls.query[sl],
        pulls.outcome[sl],
        None if pulls._values is None else pulls._values[sl],
        None if pulls._cost is None else pulls._cost[sl],
        pulls.gold[sl],
        pulls.mask[sl],
        pulls.n_categories,
        unit_cost=None if pulls.unit_cost is None else pulls.unit_cost[sl],
    )


def _block_gains(
    pulls: Pulls, obj_weights: NDArray[np.float64], plan: BlockPlan, n: NDArray[np.int64]
) -> NDArray[np.float64]:
    """``gain (U, B, L)`` of :func:`nested_gains`."""
    if pulls.strategy == "mv":
        return obj_weights[:, :1, None] * _mv_size_sums(pulls, plan, n)[None]
    best = _bon_block_max(pulls, obj_weights, plan)
    if int(n.min(initial=0)) < plan.width:  # rows of several sizes: zero the blocks past each row's n
        best = np.where(plan.real[n][None], best, np.float32(0.0))
    return np.add.reduceat(best, plan.size_start, axis=2, dtype=np.float64)


def _block_costs(pulls: Pulls, plan: BlockPlan, n: NDArray[np.int64]) -> NDArray[np.float64]:
    """``cost (B, L)``: the cost of each pull's ``n // k`` blocks of size ``k``, its first ``(n // k) * k`` completions.

    Summed in sequence along the pull (the running cost), never as ``m * c``: a pull with one cost
    per completion (table draws, ``unit_cost``) has the running sum of that constant, the same bits
    as summing its completions' costs. Such pulls share few distinct costs (one per prompt on the
    released tables), so the running sums are built once per distinct cost and gathered.
    """
    width, b = plan.width, len(pulls)
    used = plan.used[n]
    if pulls.unit_cost is not None:
        if width > 8 and b >= 1024:  # fewer or narrower pulls: the per-row running sum is cheaper than sorting
            unique, inverse = np.unique(pulls.unit_cost, return_inverse=True)
            if unique.size * 4 <= b:
                run = np.zeros((unique.size, width + 1))
                np.cumsum(np.broadcast_to(unique[:, None], (unique.size, width)), axis=1, out=run[:, 1:])
                return np.take(run.reshape(-1), used + (inverse.reshape(-1) * (width + 1))[:, None])
        csum = np.zeros((b, width + 1))
        np.cumsum(np.broadcast_to(pulls.unit_cost[:, None], (b, width)), axis=1, out=csum[:, 1:])
    else:
        csum = np.zeros((b, width + 1))
        np.cumsum(np.where(pulls.mask[:, :width], pulls.cost[:, :width], 0.0), axis=1, out=csum[:, 1:])
    return np.take(csum.reshape(-1), used + (np.arange(b) * (width + 1))[:, None])


def row_utility(pulls: Pulls, weights: NDArray[np.float64]) -> NDArray[np.float64]:
    """Utility of each whole pull under its OWN context: ``weights (B, K + 1)`` -> ``(B,)``.

    Used by agents without nested or cross-context reuse (naive Sequential Halving).
    """
    if pulls.strategy == "mv" and pulls.unit_cost is not None and _jit.enabled():
        draw = pulls.pending_draw
        u, start, cdf, cdf_p, cdf_q = draw if draw is not None else (_NO_U, _NO_START, _NO_CDF, _NO_START, _NO_START)
        return _row_utility_mv_kernel(
            _NO_OUTCOME if draw is not None else pulls.outcome, u, start, cdf, cdf_p, cdf_q,
            pulls.n.astype(np.int64, copy=False),
            pulls.gold, pulls.unit_cost, int(pulls.n_categories), np.ascontiguousarray(weights[:, 0]),
            np.ascontiguousarray(weights[:, -1]),
        )
    mask = pulls.mask
    # a sequential sum (cumsum), not numpy's pairwise sum: the result must not depend on the padding width
    cost = np.cumsum(np.where(mask, pulls.cost, 0.0), axis=1)[:, -1]
    if pulls.strategy == "mv":
        a = int(pulls.n_categories)
        rel = np.where(mask, (pulls.outcome - pulls.gold[:, None]) % a, a)
        votes = (rel[:, :, None] == np.arange(a)).sum(axis=1)
        gold, others = votes[:, 0], votes[:, 1:]
        top = others.max(axis=1, initial=0)
        ties = (others == gold[:, None]).sum(axis=1)
        credit = np.where((gold >= top) & (gold > 0), 1.0 / (1 + ties), 0.0)
        return weights[:, 0] * credit - weights[:, -1] * cost
    score = np.einsum("blk,bk->bl", pulls.values, weights[:, :-1])
    best = np.where(mask, score, -np.inf).max(axis=1, initial=-np.inf)
    return np.where(np.isfinite(best), best, 0.0) - weights[:, -1] * cost


@_jit.kernel
def _row_utility_mv_kernel(outcome, u, start, cdf, cdf_p, cdf_q, n, gold, unit_cost, a, w_gain, w_cost):  # noqa: ANN001, ANN202
    """Compiled twin of :func:`row_utility` for MV pulls with one cost per pull: the same bits.

    Row ``b``'s answers are ``outcome[b, :n[b]]``, or (``outcome`` empty) drawn here by inverse
    CDF from ``u[start[b] + j]`` under ``cdf[cdf_p[b], cdf_q[b]]`` (:attr:`Pulls.pending_draw`); its
    cost is the running sum of ``n[b]`` copies of ``unit_cost[b]`` (numpy's cumsum, in order).
    """
    b_n = n.shape[0]
    drawn = outcome.shape[0] == 0
    a1 = a - 1
    votes = np.zeros(a, dtype=np.int64)
    out = np.empty(b_n)
    for b in range(b_n):
        votes[:] = 0
        cost = 0.0
        g = gold[b]
        for j in range(n[b]):
            if drawn:
                x = u[start[b] + j]
                o = 0
                for c in range(a1):
                    o += x >= cdf[cdf_p[b], cdf_q[b], c]
            else:
                o = outcome[b, j]
            votes[(o - g) % a] += 1
            cost += unit_cost[b]
        top = 0
        for c in range(1, a):
            top = max(top, votes[c])
        ties = 0
        for c in range(1, a):
            ties += votes[c] == votes[0]
        credit = 1.0 / (1 + ties) if votes[0] >= top and votes[0] > 0 else 0.0
        out[b] = w_gain[b] * credit - w_cost[b] * cost
    return out


@_jit.kernel
def _query_terms_kernel(  # noqa: C901
    order, cell, n_cells, n, outcome, uniforms, start, cdf, cdf_p, cdf_q, gold, unit, w, width, a, bits, word, ones,  # noqa: ANN001
    guards, lut,  # noqa: ANN001
):  # noqa: ANN202
    """Per pull, the per-size block means of :meth:`NestedStats._add_per_query`, in cell order: ``(gain, cost, count)``.

    Row ``i`` of ``gain`` and ``cost`` is pull ``order[i]`` (of cell ``cell[i]``): ``gain (U, B, width)`` =
    ``(w[u] * credit_k) * inv``, ``cost (B, width)`` = ``cost_k * inv``; ``count (n_cells, width)`` counts
    each cell's pulls with a block of size ``k`` (integers: any order gives the same sum), with
    ``inv = 1 / (n // k)`` (0 without a block), ``credit_k`` the MV credit summed over
    the pull's ``n // k`` blocks (packed votes, exact in float64, as :func:`_mv_size_sums_packed`)
    and ``cost_k`` the running sum of its first ``(n // k) * k`` unit costs (as
    :func:`_block_costs`): the numpy path's operations, element by element. Answers come from
    ``outcome`` or, when it is empty, from the pending draw (as :func:`_block_add_kernel`).
    """
    b_n = order.shape[0]
    u_n = w.shape[0]
    from_draw = outcome.shape[0] == 0
    a1 = cdf.shape[2] - 1
    top = bits * (a - 2) if a >= 2 else 0
    field = (1 << bits) - 1
    gain = np.zeros((u_n, b_n, width))
    cost = np.zeros((b_n, width))
    count = np.zeros((n_cells, width), dtype=np.int64)
    cum = np.zeros(width + 1, dtype=np.int64)
    run_cost = np.zeros(width + 1)
    relative = np.empty(max(a, a1 + 1), dtype=np.int64)  # every answer a draw can give
    for i in range(b_n):
        b = order[i]
        nb = n[b]
        g0 = gold[b]
        c0 = unit[b]
        for c in range(relative.shape[0]):  # each drawn answer's packed vote, relative to this pull's gold answer
            relative[c] = word[(c - g0) % a]
        # The inline draw of _block_add_kernel (and _row_utility_mv_kernel), copied on purpose: one
        # shared numba function for the three measured 0.91-0.93x on PSST at T = 50,000 (quiet
        # machine, interleaved, best of 5): it slows _block_add_kernel's hot loop. Here the draw's
        # CDF row and the answers' votes are read once per pull (1.2x this kernel on PSST-Paired).
        if from_draw:
            row = cdf[cdf_p[b], cdf_q[b]]
            s0 = start[b]
            for j in range(nb):
                x = uniforms[s0 + j]
                o = 0
                for c in range(a1):
                    o += x >= row[c]
                cum[j + 1] = cum[j] + relative[o]
                run_cost[j + 1] = run_cost[j] + c0
        else:
            for j in range(nb):
                cum[j + 1] = cum[j] + word[(outcome[b, j] - g0) % a]
                run_cost[j + 1] = run_cost[j] + c0
        for k in range(1, nb + 1):
            blocks = nb // k
            total = 0.0
            for s in range(0, blocks * k, k):
                d = cum[s + k] - cum[s] + guards  # guard of field c set iff v_c >= g
                ties = ((((d & guards) >> (bits - 1)) * ones) >> top) & field
                won = ((d - ones) & guards) == 0
                total += lut[ties] * won
            inv = 1.0 / blocks
            for u in range(u_n):
                gain[u, i, k - 1] = (w[u] * total) * inv
            cost[i, k - 1] = run_cost[blocks * k] * inv
            count[cell[i], k - 1] += 1
        for k in range(nb + 1, width + 1):  # no block of this size: numpy's (w * 0) * 0 (a signed zero)
            for u in range(u_n):
                gain[u, i, k - 1] = (w[u] * 0.0) * 0.0
    return gain, cost, count


@_jit.kernel
def _add_cells(gain, cost, count, cell_run, cell_prompt, cell_gain, cell_cost, cell_count):  # noqa: ANN001, ANN202
    """``gain[r, :, p, :W] += cell_gain[:, g]`` (and cost, count) for each distinct cell ``g = (r, p)``: one add each."""
    u_n, g_n, width = cell_gain.shape
    for g in range(g_n):
        r, p = cell_run[g], cell_prompt[g]
        for k in range(width):
            for u in range(u_n):
                gain[r, u, p, k] += cell_gain[u, g, k]
            cost[r, p, k] += cell_cost[g, k]
            count[r, p, k] += cell_count[g, k]
    return None


@_jit.kernel
def add_per_cell(sums, counts, scratch, cell, value):  # noqa: ANN001, ANN202
    """``sums += bincount(cell, value)`` and ``counts += bincount(cell)``, touching only the cells in ``cell``.

    The same bits as the bincounts: each cell's values are first summed from 0.0 in row order
    (in ``scratch``, all zeros on entry and on return), then added to ``sums`` once; cells not in
    ``cell`` are left alone, where the bincount adds them an exact 0.0.
    """
    for i in range(cell.shape[0]):
        scratch[cell[i]] += value[i]
    for i in range(cell.shape[0]):  # a repeated cell adds its total once, then 0.0 (no change)
        c = cell[i]
        counts[c] += 1
        sums[c] += scratch[c]
        scratch[c] = 0.0
    return None


def stable_order(key: NDArray[np.int64]) -> NDArray[np.int64]:
    """``np.argsort(key, kind="stable")`` for non-negative integer keys, by radix sort when they fit 16 bits.

    numpy sorts 16-bit integers stably by radix sort (linear) and wider ones by timsort; a stable
    order is unique, so narrowing the keys changes nothing but the time (2-3x on a round's rows).
    """
    if key.size and int(key.min()) >= 0 and int(key.max()) < 1 << 16:
        return np.argsort(key.astype(np.uint16), kind="stable")
    return np.argsort(key, kind="stable")


# ------------------------------------------------------------------------------------- stats
class ContextSplit:
    """A context set factored into distinct objective-weight rows and cost weights.

    Attributes:
        obj_weights: ``(U, K)`` distinct rows of ``weights[:, :K]``.
        group: ``(C,)`` row of ``obj_weights`` used by each context.
        cost_weight: ``(C,)`` cost magnitudes.
    """

    def __init__(self, contexts: ContextSet) -> None:
        w = contexts.weights
        self.obj_weights, self.group = np.unique(w[:, :-1], axis=0, return_inverse=True)
        self.group = self.group.reshape(-1).astype(np.int64)
        self.cost_weight = w[:, -1].copy()
        self.n_contexts = int(w.shape[0])


class NestedStats:
    """Running nested-reuse tallies of ``S`` runs: per (run, prompt, N) gain, cost and count.

    Arrays: ``gain (S, U, P, n_max)`` (one slice per distinct objective-weight row), ``cost`` and
    ``count`` ``(S, P, n_max)`` (context-free). ``add(pulls, run)`` records a batch of pulls
    (``run (B,)`` says which run each pull belongs to); ``means()`` returns ``(S, C, P, n_max)``
    per-context empirical means (NaN where unseen).

    Two weightings (the zoo's one tally mechanism for both):

    * ``"block"`` (PSST): every nested block is one sample: a pull of ``(p, N)`` adds, for each
      ``k <= N``, the sums over its ``floor(N / k)`` blocks and a count of ``floor(N / k)``.
    * ``"query"`` (paired agents): every pull is one sample: it adds the MEAN of its blocks of each
      size and a count of 1, so an arm's mean weights each query it was pulled on equally.

    Within one ``add``, the pulls of a (run, prompt) cell are summed in row order (``"block"``) or
    by ``np.add.reduceat`` over the rows sorted by cell (``"query"``); both orders are part of the
    agents' pinned decisions (``tests/test_policy_pins.py``).
    """

    def __init__(
        self, n_runs: int, n_prompts: int, n_max: int, contexts: ContextSet, weighting: str = "block"
    ) -> None:
        if weighting not in ("block", "query"):
            raise ValueError(f"weighting must be 'block' or 'query'; got {weighting!r}")
        self.weighting = weighting
        self.split = ContextSplit(contexts)
        self.n_runs, self.n_prompts, self.n_max = int(n_runs), int(n_prompts), int(n_max)
        u = self.split.obj_weights.shape[0]
        self.gain = np.zeros((n_runs, u, n_prompts, n_max))
        self.cost = np.zeros((n_runs, n_prompts, n_max))
        self.count = np.zeros((n_runs, n_prompts, n_max), dtype=np.int64)

    def add(self, pulls: Pulls, run: NDArray[np.int64], live: NDArray[np.bool_] | None = None) -> None:
        """Record every nested block of ``pulls`` under every context.

        ``live (S, P, n_max)`` (``"block"`` weighting only), when given, says which arms are still
        read: blocks of a size ``k`` whose arm ``(p, k)`` is not live in the pull's run are not
        scored, and those arms' tallies stay as they are (an elimination agent passes the arms
        still active in some context: the others' tallies are never read again). Every other
        tally gets the same bits as without ``live``.
        """
        if len(pulls) == 0:
            return
        if live is not None and self.weighting != "block":
            raise ValueError("live arms apply to the 'block' weighting only")
        if self.weighting == "block" and pulls.strategy == "mv" and _jit.enabled():
            self._add_blocks_compiled(pulls, run, live)
            return
        if (
            self.weighting == "block" and pulls.strategy == "bon" and _jit.enabled()
            and self.split.obj_weights.shape[1] <= BON_KERNEL_MAX_OBJECTIVES
        ):
            self._add_bon_blocks_compiled(pulls, run, live)
            return
        if self.weighting == "query" and pulls.strategy == "mv" and pulls.unit_cost is not None and _jit.enabled():
            if self._add_per_query_compiled(pulls, run):
                return
        gain, count, cost = nested_gains(pulls, self.split.obj_weights, self.n_max)
        if self.weighting == "query":
            self._add_per_query(gain, count, cost, pulls, run)
            return
        width = gain.shape[-1]
        # Pulls -> dense ids of the (run, prompt) cells they touch (no sort: a mark array over all
        # S * P cells), then one bincount per tally over (cell id, k) and one scatter-add. Arms
        # not live get 0.0 / 0 added (the same bits as adding nothing), decided per cell.
        run = np.asarray(run, dtype=np.int64)
        cell = run * self.n_prompts + pulls.prompt
        mark = np.zeros(self.n_runs * self.n_prompts, dtype=np.int64)
        mark[cell] = 1
        present = np.flatnonzero(mark)
        if present.size == cell.size:  # one pull per cell: the tallies are the pulls' own sums
            keep = _kept(live, run, pulls.prompt, width)
            for u in range(gain.shape[0]):
                self.gain[run, u, pulls.prompt, :width] += _masked(gain[u], keep)
            self.cost[run, pulls.prompt, :width] += _masked(cost, keep)
            self.count[run, pulls.prompt, :width] += _masked(count, keep)
            return
        mark[present] = np.arange(present.size)
        flat = (mark[cell][:, None] * width + np.arange(width)[None, :]).reshape(-1)
        size = present.size * width
        cell_run, cell_prompt = np.divmod(present, self.n_prompts)
        keep = _kept(live, cell_run, cell_prompt, width)

        def tally(x: NDArray) -> NDArray[np.float64]:
            sums = np.bincount(flat, weights=x.reshape(-1), minlength=size)  # float64: weighted counts
            return _masked(sums.astype(np.float64, copy=False).reshape(present.size, width), keep)

        for u in range(gain.shape[0]):
            self.gain[cell_run, u, cell_prompt, :width] += tally(gain[u])
        self.cost[cell_run, cell_prompt, :width] += tally(cost)
        self.count[cell_run, cell_prompt, :width] += tally(count).astype(np.int64)

    def _add_blocks_compiled(self, pulls: Pulls, run: NDArray[np.int64], live: NDArray[np.bool_] | None) -> None:
        """``"block"`` weighting of MV pulls by the compiled kernels (the same bits as the numpy path of :meth:`add`).

        One kernel scores the blocks of each pull and adds them to the tallies at once (no
        ``(B, L)`` sums array); answers too many for one packed word go through the per-answer
        counts kernel first.
        """
        n = np.minimum(pulls.n.astype(np.int64), self.n_max)
        width = int(min(pulls.width, self.n_max, max(int(n.max(initial=0)), 1)))
        a = int(pulls.n_categories)
        bits = width.bit_length() + 1  # as _mv_tail_sums: a count (<= width) plus a guard bit
        lut = _credit_lut(a)
        draw = pulls.pending_draw
        outcome, u, start, cdf, cdf_p, cdf_q = _NO_OUTCOME, _NO_U, _NO_START, _NO_CDF, _NO_START, _NO_START
        encoding: tuple[NDArray[np.int64], int, int] = (np.zeros(a, dtype=np.int64), 0, 0)  # unread with sums
        if (a - 1) * bits <= 62:
            encoding = _vote_encoding(a, bits)
            sums = _NO_SUMS
            if draw is not None:  # the kernel draws the outcomes from the uniforms itself
                u, start, cdf, cdf_p, cdf_q = draw
            else:
                outcome = pulls.outcome
        else:
            sums = _mv_size_sums_counts(pulls.outcome, pulls.gold, n, width, a, lut)
        unit = pulls.unit_cost[:, None] if pulls.unit_cost is not None else pulls.cost  # (B, 1): one cost per pull
        if width == 1 and sums is _NO_SUMS:  # one completion per pull (TRIPLE's rounds): no vote words, one size
            _one_completion_add_kernel(
                self.gain, self.cost, self.count, np.asarray(run, dtype=np.int64), pulls.prompt.astype(np.int64, copy=False),
                n, outcome, u, start, cdf, cdf_p, cdf_q, pulls.gold, np.ascontiguousarray(self.split.obj_weights[:, 0]),
                np.asarray(unit, dtype=np.float64), a, _NO_LIVE if live is None else live,
            )  # fmt: skip
            return
        _block_add_kernel(
            self.gain, self.cost, self.count, np.asarray(run, dtype=np.int64), pulls.prompt.astype(np.int64, copy=False),
            n, outcome, u, start, cdf, cdf_p, cdf_q, pulls.gold, sums, np.ascontiguousarray(self.split.obj_weights[:, 0]),
            np.asarray(unit, dtype=np.float64), width, a, bits, *encoding, lut,
            _NO_LIVE if live is None else live, ROLLING_MIN_VALUES,
        )

    def _add_bon_blocks_compiled(self, pulls: Pulls, run: NDArray[np.int64], live: NDArray[np.bool_] | None) -> None:
        """``"block"`` weighting of best-of-N pulls by :func:`_bon_block_add_kernel` (the numpy path's bits)."""
        n = np.minimum(pulls.n.astype(np.int64), self.n_max)
        width = int(min(pulls.width, self.n_max, max(int(n.max(initial=0)), 1)))
        unit = pulls.unit_cost[:, None] if pulls.unit_cost is not None else pulls.cost  # (B, 1): one cost per pull
        _bon_block_add_kernel(
            self.gain, self.cost, self.count, np.asarray(run, dtype=np.int64), pulls.prompt.astype(np.int64, copy=False),
            n, pulls.values, self.split.obj_weights.astype(np.float32), np.asarray(unit, dtype=np.float64), width,
            _NO_LIVE if live is None else live, ROLLING_MIN_VALUES,
        )

    def _cells_of(self, pulls: Pulls, run: NDArray) -> tuple[NDArray[np.int64], ...]:
        """The pulls grouped by (run, prompt) cell: ``(order, first, starts, cell_run, cell_prompt)``.

        ``order`` sorts the pulls by cell, stably (request order within a cell); ``first`` marks
        each cell's first pull in that order and ``starts`` its position; ``cell_run`` and
        ``cell_prompt`` name the cells.
        """
        key = np.asarray(run, dtype=np.int64) * self.n_prompts + pulls.prompt
        order = stable_order(key)
        key = key[order]
        first = np.r_[True, key[1:] != key[:-1]]
        starts = np.flatnonzero(first)
        cell_run, cell_prompt = np.divmod(key[starts], self.n_prompts)
        return order, first, starts, cell_run, cell_prompt

    def _add_per_query_compiled(self, pulls: Pulls, run: NDArray[np.int64]) -> bool:
        """``"query"`` weighting of MV table pulls by a kernel; False (nothing done) when answers overflow a packed word.

        The kernel scores each pull's blocks and writes its per-size means in cell order
        (:func:`_query_terms_kernel`); the float per-cell sums stay numpy's ``reduceat`` (its
        pairwise summation is part of the pinned bits). The same tallies as :meth:`_add_per_query`
        on :func:`nested_gains`.
        """
        n = np.minimum(pulls.n.astype(np.int64), self.n_max)
        width = int(min(pulls.width, self.n_max, max(int(n.max(initial=0)), 1)))
        a = int(pulls.n_categories)
        bits = width.bit_length() + 1
        if (a - 1) * bits > 62:
            return False
        order, first, starts, cell_run, cell_prompt = self._cells_of(pulls, run)
        draw = pulls.pending_draw
        u, start, cdf, cdf_p, cdf_q = draw if draw is not None else (_NO_U, _NO_START, _NO_CDF, _NO_START, _NO_START)
        gain, cost, count = _query_terms_kernel(
            order, np.cumsum(first) - 1, starts.size, n, _NO_OUTCOME if draw is not None else pulls.outcome, u, start,
            cdf, cdf_p, cdf_q, pulls.gold,
            np.asarray(pulls.unit_cost, dtype=np.float64), np.ascontiguousarray(self.split.obj_weights[:, 0]), width, a,
            bits, *_vote_encoding(a, bits), _credit_lut(a),
        )
        if starts.size < order.size:  # some cell holds several pulls: their per-cell sums
            gain, cost = np.add.reduceat(gain, starts, axis=1), np.add.reduceat(cost, starts, axis=0)
        # else one pull per cell (a round of one common query): reduceat over one row is that row, bit for bit
        _add_cells(  # one += per (cell, k): the fancy-indexed += of the numpy path, without its gathers
            self.gain, self.cost, self.count, cell_run, cell_prompt, gain, cost, count,
        )  # fmt: skip
        return True

    def _add_per_query(
        self, gain: NDArray[np.float64], count: NDArray[np.int64], cost: NDArray[np.float64], pulls: Pulls, run: NDArray
    ) -> None:
        """``"query"`` weighting: each pull adds its per-size block means and a count of 1."""
        width = gain.shape[-1]
        inv = np.where(count > 0, 1.0 / np.maximum(count, 1), 0.0)  # (B, L)
        gain = gain * inv[None]
        cost = cost * inv
        count = (count > 0).astype(np.int64)
        order, _, starts, cell_run, cell_prompt = self._cells_of(pulls, run)
        g = np.add.reduceat(gain[:, order], starts, axis=1)  # (U, G, L)
        self.gain[cell_run, :, cell_prompt, :width] += g.transpose(1, 0, 2)
        self.cost[cell_run, cell_prompt, :width] += np.add.reduceat(cost[order], starts, axis=0)
        self.count[cell_run, cell_prompt, :width] += np.add.reduceat(count[order], starts, axis=0)

    def means(self, runs: NDArray[np.int64] | None = None) -> NDArray[np.float64]:
        """Per-context means ``(S', C, P, n_max)`` for ``runs`` (default all); NaN where unseen."""
        if runs is None:
            gain, cost, count = self.gain, self.cost, self.count
        else:
            gain, cost, count = self.gain[runs], self.cost[runs], self.count[runs]
        w = self.split.cost_weight[None, :, None, None]
        total = np.multiply(w, cost[:, None])  # (S, C, P, N): one buffer, every step in place
        np.subtract(gain if gain.shape[1] == 1 else gain[:, self.split.group], total, out=total)
        with np.errstate(invalid="ignore", divide="ignore"):
            total /= count[:, None]
        return total

    def means_at(
        self, run: NDArray[np.int64], context: NDArray[np.int64], arm: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        """Means of chosen arms: ``arm`` (flat ``p * n_max + N - 1``) of run ``run`` under context ``context``.

        The three index arrays broadcast together; the result has their shape (NaN where unseen).
        Each value is computed by the same float operations as :meth:`means` (bit for bit), for
        the chosen arms only.
        """
        n_arms = self.n_prompts * self.n_max
        u = self.gain.shape[1]
        cell = run * n_arms + arm
        total = np.multiply(self.split.cost_weight[context], np.take(self.cost.reshape(-1), cell))
        gain = np.take(self.gain.reshape(-1), (run * u + self.split.group[context]) * n_arms + arm)
        np.subtract(gain, total, out=total)
        with np.errstate(invalid="ignore", divide="ignore"):
            total /= np.take(self.count.reshape(-1), cell)
        return total

    def ranked_means(
        self,
        idx: NDArray[np.int64],
        n_contexts: int,
        unseen: float,
        row_run: NDArray[np.int64] | None = None,
        row_ctx: NDArray[np.int64] | None = None,
    ) -> NDArray[np.float64]:
        """Means of arms ``idx (R, n)`` of each (run, context) row, ``unseen`` where an arm has no data.

        Rows are every (run, context) in order (``R = S * C``), or those named by ``row_run`` and
        ``row_ctx (R,)``. The compiled twin of :meth:`means_at` on those rows (the same float
        operations, bit for bit), with NaN replaced by ``unseen``; used by halving when the
        kernels are on.
        """
        u_n, n_arms = self.gain.shape[1], self.n_prompts * self.n_max
        return _ranked_means_kernel(
            self.gain.reshape(-1), self.cost.reshape(-1), self.count.reshape(-1), self.split.cost_weight,
            self.split.group, idx, int(n_contexts), u_n, n_arms, float(unseen),
            _NO_START if row_run is None else row_run, _NO_START if row_ctx is None else row_ctx,
        )

    def means_in(self, runs: NDArray[np.int64], context: NDArray[np.int64]) -> NDArray[np.float64]:
        """Means of each run under ONE context each: ``runs (B,)``, ``context (B,)`` -> ``(B, P, n_max)``."""
        gain = self.gain[runs, self.split.group[context]]  # (B, P, N)
        total = gain - self.split.cost_weight[context][:, None, None] * self.cost[runs]
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / self.count[runs]


@_jit.kernel
def _ranked_means_kernel(gain, cost, count, cost_weight, group, idx, n_contexts, u_n, n_arms, unseen, row_run, row_ctx):  # noqa: ANN001, ANN202, E501
    """Compiled twin of :meth:`NestedStats.means_at` for rows ``(run, context)`` of ``idx``: ``(gain - w * cost) / count``.

    Row ``r`` is (run, context) ``divmod(r, n_contexts)``, or ``(row_run[r], row_ctx[r])`` when those are not empty.
    """
    rows, n = idx.shape
    named = row_run.shape[0] > 0
    out = np.empty((rows, n))
    for row in range(rows):
        if named:
            run, ctx = row_run[row], row_ctx[row]
        else:
            run, ctx = row // n_contexts, row % n_contexts
        w = cost_weight[ctx]
        g0 = (run * u_n + group[ctx]) * n_arms
        c0 = run * n_arms
        for i in range(n):
            a = idx[row, i]
            v = (gain[g0 + a] - w * cost[c0 + a]) / count[c0 + a]
            out[row, i] = unseen if np.isnan(v) else v
    return out


def _kept(
    live: NDArray[np.bool_] | None, run: NDArray[np.int64], prompt: NDArray[np.int64], width: int
) -> NDArray[np.bool_] | None:
    """``(B, width)`` which sizes of each (run, prompt) are live, or None when all are (or no ``live`` was given)."""
    if live is None:
        return None
    keep = live[run, prompt, :width]
    return None if bool(keep.all()) else keep


def _masked(x: NDArray, keep: NDArray[np.bool_] | None) -> NDArray:
    """``x`` with 0 where ``keep`` is False (adding 0.0 or 0 leaves a tally's bits as they are)."""
    return x if keep is None else np.where(keep, x, x.dtype.type(0))


_NO_SUMS = np.zeros((0, 0))
_NO_OUTCOME = np.zeros((0, 0), dtype=np.int64)
_NO_START = np.zeros(0, dtype=np.int64)
_NO_U = np.zeros(0)
_NO_LIVE = np.zeros((0, 0, 0), dtype=np.bool_)
_NO_CDF = np.zeros((0, 0, 1))


@_jit.helper
def _running_cost(unit, b, nb, per_comp, csum):  # noqa: ANN001, ANN202
    """``csum[j + 1]``: the running sum of pull ``b``'s first ``j + 1`` completion costs (``unit``: per pull or completion)."""
    run_sum = 0.0
    for j in range(nb):
        x = unit[b, j if per_comp else 0]
        run_sum = x if j == 0 else run_sum + x
        csum[j + 1] = run_sum


@_jit.helper
def _cell_slots(run, prompt, n_runs, n_prompts):  # noqa: ANN001, ANN202
    """Each ``(run, prompt)`` cell's accumulator row, numbered in order of first appearance: ``(slot, cells, grouped)``.

    ``slot[run * n_prompts + prompt]`` is the row (-1: no pull of that cell); ``grouped``: every
    cell's pulls are consecutive rows (then one accumulator row, flushed when the cell changes,
    does what a row per cell does: :func:`_flush_row`). Shared by the block-add kernels.
    """
    slot = np.full(n_runs * n_prompts, -1, dtype=np.int64)
    present = 0
    grouped = True
    prev = -1
    for b in range(run.shape[0]):
        c = run[b] * n_prompts + prompt[b]
        if slot[c] < 0:
            slot[c] = present
            present += 1
        elif c != prev:  # the cell comes back after another one
            grouped = False
        prev = c
    return slot, present, grouped


@_jit.helper
def _flush_row(r, p, top, acc_g, acc_c, acc_n, gain, cost, count, live):  # noqa: ANN001, ANN202
    """Add accumulator row 0 (cell ``(r, p)``'s sums, sizes below ``top``) to the tallies and clear it for the next cell.

    What :func:`_flush_cells` does for one cell when the cells' pulls are consecutive: the same
    additions (each cell's sum from 0.0 in row order, then added once), so the same bits, from
    one accumulator row that stays in cache instead of one row per cell. Sizes not live are skipped.
    """
    has_live = live.shape[0] > 0
    for k in range(top):
        if not has_live or live[r, p, k]:
            for u in range(acc_g.shape[1]):
                gain[r, u, p, k] += acc_g[0, u, k]
            cost[r, p, k] += acc_c[0, k]
            count[r, p, k] += acc_n[0, k]
        for u in range(acc_g.shape[1]):
            acc_g[0, u, k] = 0.0
        acc_c[0, k] = 0.0
        acc_n[0, k] = 0


_flush_row_last = _jit.twin(_flush_row, "_flush_row_last")  # its second call site in a kernel (after the loop)


@_jit.helper
def _flush_cells(run, prompt, n, n_prompts, slot, acc_g, acc_c, acc_n, gain, cost, count, live, width):  # noqa: ANN001, ANN202
    """Add each cell's accumulated sums to the tallies once, cells in order of their first pull.

    Only the sizes up to the cell's largest pull (``n``, at most ``width``) are added: the larger
    ones hold 0.0 and 0, and adding +0.0 leaves a tally's bits as they are (a tally starts at +0.0,
    and a sum is -0.0 only when both terms are). Sizes whose arm is not live (``live`` non-empty)
    are skipped too; ``slot`` is spent (set to -1). Shared by the block-add kernels.
    """
    has_live = live.shape[0] > 0
    top = np.zeros(acc_n.shape[0], dtype=np.int64)
    for b in range(run.shape[0]):
        i = slot[run[b] * n_prompts + prompt[b]]
        top[i] = max(top[i], min(n[b], width))
    for b in range(run.shape[0]):
        r, p = run[b], prompt[b]
        c = r * n_prompts + p
        i = slot[c]
        if i < 0:  # cell already written
            continue
        slot[c] = -1
        for k in range(top[i]):
            if has_live and not live[r, p, k]:
                continue
            for u in range(acc_g.shape[1]):
                gain[r, u, p, k] += acc_g[i, u, k]
            cost[r, p, k] += acc_c[i, k]
            count[r, p, k] += acc_n[i, k]


#: Values (cells x width x (objective rows + 2)) from which the block kernels sum each cell in one
#: accumulator row, flushed when the cell changes, instead of a row per cell (when every cell's pulls
#: are consecutive: PSST's, Top-K's and TRIPLE's rounds): a scratch that large leaves the cache
#: (PSST on MATH: 5,000 cells, 3.8 MB a call; Synth-Categorical: 9 MB) and pushes the tallies out
#: with it. A smaller one stays in cache, where the row per cell is a little faster (Uniform's calls:
#: 175 cells). Passed to the kernels at each call (``rolling_min``), so a test can lower it.
ROLLING_MIN_VALUES = 1 << 15


@_jit.kernel
def _one_completion_add_kernel(  # noqa: C901
    gain, cost, count, run, prompt, n, outcome, uniforms, start, cdf, cdf_p, cdf_q, gold, w, unit, a, live,  # noqa: ANN001
):  # noqa: ANN202
    """:func:`_block_add_kernel` for calls whose pulls hold one completion each (TRIPLE's rounds): the same additions.

    Such a pull has one block, of size 1: its credit is 1.0 when the answer is gold (by the
    general kernel's rule, answers out of range included), its cost the completion's, its count 1;
    a pull of no completion adds nothing. Tallies as the general kernel's: one pull per cell adds
    straight away, otherwise each cell sums its pulls from 0.0 in row order and adds that once;
    cells whose size-1 arm is not live (``live`` non-empty) add nothing. The answer comes from
    ``outcome[b, 0]`` or, with ``outcome`` empty, from the pending draw (the same comparisons).
    """
    b_n = run.shape[0]
    u_n = w.shape[0]
    n_prompts = cost.shape[1]
    has_live = live.shape[0] > 0
    from_draw = outcome.shape[0] == 0
    a1 = cdf.shape[2] - 1  # u < 1 = cdf[..., -1] always
    slot, present, _ = _cell_slots(run, prompt, cost.shape[0], n_prompts)
    direct = present == b_n
    acc_g = np.zeros((1 if direct else present, u_n))
    acc_c = np.zeros(1 if direct else present)
    acc_n = np.zeros(1 if direct else present, dtype=np.int64)
    for b in range(b_n):
        r, p = run[b], prompt[b]
        if n[b] == 0 or (has_live and not live[r, p, 0]):
            continue
        if from_draw:
            x = uniforms[start[b]]
            cp, cq = cdf_p[b], cdf_q[b]
            o = 0
            for c in range(a1):
                o += x >= cdf[cp, cq, c]
        else:
            o = outcome[b, 0]
        diff = o - gold[b]
        if diff <= -a or diff >= a:  # not two answer indices: the general rule
            diff = diff % a
        credit = np.float64(diff == 0)
        if direct:
            for u in range(u_n):
                gain[r, u, p, 0] += w[u] * credit
            cost[r, p, 0] += unit[b, 0]
            count[r, p, 0] += 1
        else:
            i = slot[r * n_prompts + p]
            for u in range(u_n):
                acc_g[i, u] += w[u] * credit
            acc_c[i] += unit[b, 0]
            acc_n[i] += 1
    if direct:
        return
    for b in range(b_n):  # each cell once, in order of its first pull
        r, p = run[b], prompt[b]
        c = r * n_prompts + p
        i = slot[c]
        if i < 0 or acc_n[i] == 0:  # already added, or nothing to add (+0.0 and 0)
            continue
        slot[c] = -1
        for u in range(u_n):
            gain[r, u, p, 0] += acc_g[i, u]
        cost[r, p, 0] += acc_c[i]
        count[r, p, 0] += acc_n[i]


@_jit.kernel
def _block_add_kernel(  # noqa: C901, PLR0912, PLR0915
    gain, cost, count, run, prompt, n, outcome, uniforms, start, cdf, cdf_p, cdf_q, gold, sums, w, unit,  # noqa: ANN001
    width, a, bits, word, ones, guards, lut, live, rolling_min,
):  # noqa: ANN202
    """Compiled twin of :meth:`NestedStats.add` (``"block"``, MV), updating ``gain``, ``cost``, ``count`` in place.

    **Credits.** With ``sums`` empty the kernel scores each pull's blocks itself from packed votes
    (:func:`_mv_size_sums_packed`): sizes 1 and 2 from the running gold count (credit ``gold / k``,
    as the numpy path), larger blocks by the packed word, counting the won blocks per number of
    ties in integer fields of one word and multiplying each count by its credit ``lut[t]`` at
    the end. Every credit is a float32 ``1 / t``, so these per-size sums are exact in float64: the
    numpy path's bits whatever the order. Otherwise ``sums (B, width)`` holds them already. The
    answers come from ``outcome (B, L)``, or, when ``outcome`` is empty, from the inverse-CDF draw
    itself (:attr:`Pulls.pending_draw`: uniform ``uniforms[start[b] + j]`` under ``cdf[cdf_p[b], cdf_q[b]]``, the same
    comparisons as :func:`iapo_gym.sampling._outcomes`).

    **Tallies.** The numpy path's float operations in its order: a pull's gain under weight row
    ``u`` is ``w[u] * sum``; its cost of size ``k`` the running sum (left to right, as ``cumsum``)
    of its completions' costs up to ``(n // k) * k``. When every pull has its own (run, prompt)
    cell the values are added to the tallies directly; otherwise each cell sums its pulls in row
    order starting from 0.0 (as ``np.bincount`` does) and then adds that sum to the tally: in a
    row per cell, or, when every cell's pulls are consecutive and that scratch would hold more
    than ``rolling_min`` values (:data:`ROLLING_MIN_VALUES`), in one row added when the cell
    changes (:func:`_flush_row`). ``unit (B, 1)`` is one cost per completion of each pull, or
    ``(B, L)`` the completions' own.

    **Live arms.** With ``live (S, P, n_max)`` non-empty, sizes whose arm is not live in the
    pull's run are neither scored nor added (adding 0.0 would leave the same bits).

    Calls whose pulls are all of one completion go to :func:`_one_completion_add_kernel`.
    """
    b_n = n.shape[0]
    u_n = w.shape[0]
    n_prompts = cost.shape[1]
    has_live = live.shape[0] > 0
    packed = sums.shape[0] == 0
    from_draw = outcome.shape[0] == 0 and packed
    a1 = cdf.shape[2] - 1  # u < 1 = cdf[..., -1] always
    # packed votes (see _mv_size_sums_packed; word, ones, guards from _vote_encoding)
    top = bits * (a - 2) if a >= 2 else 0
    field = (1 << bits) - 1
    shifted = np.empty(2 * a - 1, dtype=np.int64)  # shifted[d + a - 1] = word[d mod a] for d in -(a-1)..a-1
    for d in range(-(a - 1), a):
        shifted[d + a - 1] = word[d % a]
    # won blocks per number of ties: one counter field of fb bits per tie count (a size has < 2^fb blocks)
    fb = 1
    while (1 << fb) <= width:
        fb += 1
    counters = a * fb <= 62
    cmask = (1 << fb) - 1
    cum = np.zeros(width + 1, dtype=np.int64)
    quo = np.zeros((width + 1, width + 1), dtype=np.int64)  # quo[n, k] = n // k: no division per size
    for x in range(width + 1):
        for y in range(1, width + 1):
            quo[x, y] = x // y
    drawn = np.empty(width, dtype=np.int64)  # a pull's answers drawn from its uniforms
    slot, present, grouped = _cell_slots(run, prompt, cost.shape[0], n_prompts)
    per_comp = unit.shape[1] > 1
    csum = np.zeros(width + 1)
    direct = present == b_n  # one pull per cell
    rolling = grouped and not direct and present * width * (u_n + 2) > rolling_min  # ROLLING_MIN_VALUES
    acc_g = np.zeros((1 if direct or rolling else present, u_n, width))
    acc_c = np.zeros((1 if direct or rolling else present, width))
    acc_n = np.zeros((1 if rolling else present, width), dtype=np.int64)
    top_n = 0  # the rolling cell's largest pull
    for b in range(b_n):
        nb = n[b]
        r, p = run[b], prompt[b]
        if rolling:  # the previous cell is complete when this pull opens another
            if b > 0 and (r != run[b - 1] or p != prompt[b - 1]):
                _flush_row(run[b - 1], prompt[b - 1], top_n, acc_g, acc_c, acc_n, gain, cost, count, live)
                top_n = 0
            top_n = max(top_n, min(nb, width))
            i = 0
        else:
            i = slot[r * n_prompts + p]
        _running_cost(unit, b, nb, per_comp, csum)
        gc = 0  # gold answers among the pull's completions, and among its first even number of them
        g_even = 0
        if packed:
            g0 = gold[b]
            s0 = start[b] if from_draw else 0
            even = (nb // 2) * 2
            cw = 0  # running word and gold count in registers
            if from_draw:
                cp, cq = cdf_p[b], cdf_q[b]
                if nb >= 8:  # threshold by threshold: SIMD comparisons over the pull (a loss on a few completions)
                    for j in range(nb):
                        drawn[j] = 0
                    for c in range(a1):
                        t = cdf[cp, cq, c]
                        for j in range(nb):
                            drawn[j] += uniforms[s0 + j] >= t
                else:
                    for j in range(nb):
                        x = uniforms[s0 + j]
                        o = 0
                        for c in range(a1):
                            o += x >= cdf[cp, cq, c]
                        drawn[j] = o
            for j in range(nb):
                if from_draw:
                    o = drawn[j]
                else:
                    o = outcome[b, j]
                diff = o - g0
                if diff <= -a or diff >= a:  # not two answer indices: the general rule (never on table pulls)
                    diff = (o - g0) % a
                cw += shifted[diff + a - 1]  # word[(answer - gold) mod a] without a division or a branch
                gc += diff == 0
                cum[j + 1] = cw
                if j + 1 == even:
                    g_even = gc
        # one pass over the sizes: each live size's credit, then its tallies (larger sizes add nothing: 0.0 and 0)
        for k in range(1, min(nb, width) + 1):
            if has_live and not live[r, p, k - 1]:
                continue
            m = quo[nb, k]  # blocks of size k
            if not packed:
                sk = sums[b, k - 1]
            elif k == 1:
                sk = np.float64(gc)
            elif k == 2:
                sk = g_even * 0.5
            elif counters:
                tally = 0
                for s in range(0, m * k, k):
                    d = cum[s + k] - cum[s] + guards  # guard of field c set iff v_c >= g
                    ties = ((((d & guards) >> (bits - 1)) * ones) >> top) & field
                    won = ((d - ones) & guards) == 0  # no answer beats gold: then v_c >= g means a tie
                    tally += np.int64(won) << (fb * ties)
                if tally <= cmask:  # no tie in any won block: credit lut[0] = 1.0 each, the same sum
                    sk = np.float64(tally)
                else:
                    sk = 0.0
                    for t in range(a):
                        sk += ((tally >> (fb * t)) & cmask) * lut[t]
            else:
                sk = 0.0
                for s in range(0, m * k, k):
                    d = cum[s + k] - cum[s] + guards
                    ties = ((((d & guards) >> (bits - 1)) * ones) >> top) & field
                    won = ((d - ones) & guards) == 0
                    sk += lut[ties] * won
            if direct:
                for u in range(u_n):
                    gain[r, u, p, k - 1] += w[u] * sk
                cost[r, p, k - 1] += csum[m * k]
                count[r, p, k - 1] += m
            else:
                for u in range(u_n):
                    acc_g[i, u, k - 1] += w[u] * sk
                acc_c[i, k - 1] += csum[m * k]
                acc_n[i, k - 1] += m
    if rolling:  # the last cell
        _flush_row_last(run[b_n - 1], prompt[b_n - 1], top_n, acc_g, acc_c, acc_n, gain, cost, count, live)
    if direct or rolling:
        return
    _flush_cells(run, prompt, n, n_prompts, slot, acc_g, acc_c, acc_n, gain, cost, count, live, width)


#: Objective weights up to which a score ``sum_k w_k o_k`` in float32 is summed left to right by
#: ``np.einsum`` (measured: with 4 or more it groups its partial sums otherwise); the compiled
#: best-of-N tallies reproduce that order, so wider weights stay on the numpy path.
BON_KERNEL_MAX_OBJECTIVES = 3


@_jit.kernel
def _bon_block_add_kernel(  # noqa: C901, PLR0912, PLR0915
    gain, cost, count, run, prompt, n, values, w, unit, width, live, rolling_min,  # noqa: ANN001
):  # noqa: ANN202
    """Compiled twin of :meth:`NestedStats.add` (``"block"``, best-of-N), updating ``gain``, ``cost``, ``count`` in place.

    **Scores.** Completion ``j``'s score under objective row ``u`` is the float32 sum, left to
    right, of ``float32(values[b, j, k]) * w[u, k]`` (``w`` float32): ``np.einsum``'s bits for up to
    :data:`BON_KERNEL_MAX_OBJECTIVES` objectives. A block's best is the larger of two overlapping
    power-of-two windows of the same sparse table of maxima as :func:`_bon_block_max` (the same
    pairs compared, ``a if a > b or a != a else b`` as ``np.maximum``: signed zeros and NaN alike).

    **Per-size sums.** The numpy path sums each size's ``width // k`` blocks (real ones, then 0.0
    past the pull's ``n // k``) by ``np.add.reduceat(..., dtype=float64)`` along a contiguous
    axis, which takes the first block and adds numpy's pairwise sum of the rest
    (``numpy/_core/src/umath/loops_utils.h.src``: below 8 terms a running sum from 0.0; up to 128
    eight interleaved accumulators combined as ``((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))``,
    then the remainder in sequence; above 128 split at half rounded down to a multiple of 8,
    each half summed so). The kernel does the same additions in the same order, padding included
    (an explicit stack stands for the recursion).

    **Tallies.** As :func:`_block_add_kernel`: one pull per cell adds its sums directly, otherwise
    each cell sums its pulls in row order from 0.0 (``np.bincount``) and adds that (a row per cell
    or one rolling row, by ``rolling_min``); costs are the
    running sum of the completions' costs. Sizes whose arm is not live in the pull's run are
    neither scored nor added (the numpy path scores them and adds 0.0: the same bits).
    """
    b_n = n.shape[0]
    u_n, k_n = w.shape
    n_prompts = cost.shape[1]
    has_live = live.shape[0] > 0
    levels = 1
    while (1 << levels) <= width:
        levels += 1
    # Objective rows are the innermost axis of every scratch array: each row's arithmetic is the
    # scalar order described above, and the rows run side by side in SIMD lanes.
    wt = np.empty((k_n, u_n), dtype=np.float32)
    for u in range(u_n):
        for x in range(k_n):
            wt[x, u] = w[u, x]
    score = np.empty((levels, width, u_n), dtype=np.float32)
    v32 = np.empty((width, k_n), dtype=np.float32)
    buf = np.zeros((width, u_n))  # one size's block bests (float64), 0.0 past the real ones
    sums = np.zeros((width, u_n))
    total = np.empty(u_n)
    res = np.empty(u_n)
    s_lo = np.empty(64, dtype=np.int64)  # the pairwise recursion's pending halves
    s_n = np.empty(64, dtype=np.int64)
    s_left = np.empty((64, u_n))
    s_state = np.empty(64, dtype=np.int64)
    slot, present, grouped = _cell_slots(run, prompt, cost.shape[0], n_prompts)
    per_comp = unit.shape[1] > 1
    csum = np.zeros(width + 1)
    direct = present == b_n
    rolling = grouped and not direct and present * width * (u_n + 2) > rolling_min  # ROLLING_MIN_VALUES
    acc_g = np.zeros((1 if direct or rolling else present, u_n, width))
    acc_c = np.zeros((1 if direct or rolling else present, width))
    acc_n = np.zeros((1 if rolling else present, width), dtype=np.int64)
    top_n = 0  # the rolling cell's largest pull
    for b in range(b_n):
        nb = n[b]
        r, p = run[b], prompt[b]
        if rolling:  # the previous cell is complete when this pull opens another
            if b > 0 and (r != run[b - 1] or p != prompt[b - 1]):
                _flush_row(run[b - 1], prompt[b - 1], top_n, acc_g, acc_c, acc_n, gain, cost, count, live)
                top_n = 0
            top_n = max(top_n, min(nb, width))
        any_live = not has_live
        if has_live:
            for k in range(nb):
                if live[r, p, k]:
                    any_live = True
                    break
        if not any_live:
            continue
        for j in range(nb):
            for x in range(k_n):
                v32[j, x] = np.float32(values[b, j, x])
        for j in range(nb):
            v0 = v32[j, 0]
            for u in range(u_n):
                score[0, j, u] = v0 * wt[0, u]
            for x in range(1, k_n):
                vx = v32[j, x]
                for u in range(u_n):
                    score[0, j, u] += vx * wt[x, u]
        lev = 1
        while (1 << lev) <= nb:
            half = 1 << (lev - 1)
            for j in range(nb - (1 << lev) + 1):
                for u in range(u_n):
                    a0, a1 = score[lev - 1, j, u], score[lev - 1, j + half, u]
                    score[lev, j, u] = a0 if a0 > a1 or a0 != a0 else a1
            lev += 1
        lk = 0
        for k in range(1, nb + 1):
            if (2 << lk) <= k:
                lk += 1
            if has_live and not live[r, p, k - 1]:
                continue
            m = nb // k
            span = width // k
            off = k - (1 << lk)
            if span <= 8:  # reduceat: the first block plus a running sum from 0.0 of the others
                for u in range(u_n):
                    a0, a1 = score[lk, 0, u], score[lk, off, u]
                    total[u] = np.float64(a0 if a0 > a1 or a0 != a0 else a1)
                if span > 1:
                    for u in range(u_n):
                        res[u] = 0.0  # never -0.0: adding the padding's 0.0 would change nothing
                    for i in range(1, m):
                        for u in range(u_n):
                            a0, a1 = score[lk, i * k, u], score[lk, i * k + off, u]
                            res[u] += np.float64(a0 if a0 > a1 or a0 != a0 else a1)
                    for u in range(u_n):
                        total[u] += res[u]
                for u in range(u_n):
                    sums[k - 1, u] = total[u]
                continue
            for i in range(m):
                for u in range(u_n):
                    a0, a1 = score[lk, i * k, u], score[lk, i * k + off, u]
                    buf[i, u] = np.float64(a0 if a0 > a1 or a0 != a0 else a1)
            for i in range(m, span):
                for u in range(u_n):
                    buf[i, u] = 0.0
            # reduceat: the first block, plus the pairwise sum of the other span - 1
            for u in range(u_n):
                total[u] = buf[0, u]
            if span > 1:
                s_lo[0], s_n[0], s_state[0] = 1, span - 1, 0
                sp = 1
                while sp > 0:
                    top = sp - 1  # a node not started yet (state 0)
                    lo, cnt = s_lo[top], s_n[top]
                    if cnt > 128:  # split: the left half first
                        h = cnt // 2
                        h -= h % 8
                        s_state[top] = 1
                        s_lo[sp], s_n[sp], s_state[sp] = lo, h, 0
                        sp += 1
                        continue
                    if cnt < 8:  # a leaf
                        for u in range(u_n):
                            res[u] = 0.0
                        for i in range(lo, lo + cnt):
                            for u in range(u_n):
                                res[u] += buf[i, u]
                    else:
                        full = cnt - cnt % 8
                        for u in range(u_n):
                            r0, r1, r2, r3 = buf[lo, u], buf[lo + 1, u], buf[lo + 2, u], buf[lo + 3, u]
                            r4, r5, r6, r7 = buf[lo + 4, u], buf[lo + 5, u], buf[lo + 6, u], buf[lo + 7, u]
                            for i in range(lo + 8, lo + full, 8):
                                r0 += buf[i, u]
                                r1 += buf[i + 1, u]
                                r2 += buf[i + 2, u]
                                r3 += buf[i + 3, u]
                                r4 += buf[i + 4, u]
                                r5 += buf[i + 5, u]
                                r6 += buf[i + 6, u]
                                r7 += buf[i + 7, u]
                            res[u] = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
                        for i in range(lo + full, lo + cnt):
                            for u in range(u_n):
                                res[u] += buf[i, u]
                    sp -= 1
                    while sp > 0:  # hand the result to the parent
                        par = sp - 1
                        if s_state[par] == 1:  # its left half: now the right one
                            for u in range(u_n):
                                s_left[par, u] = res[u]
                            s_state[par] = 2
                            h = s_n[par] // 2
                            h -= h % 8
                            s_lo[sp], s_n[sp], s_state[sp] = s_lo[par] + h, s_n[par] - h, 0
                            sp += 1
                            break
                        for u in range(u_n):  # its right half: the parent is done
                            res[u] = s_left[par, u] + res[u]
                        sp -= 1
                for u in range(u_n):
                    total[u] += res[u]
            for u in range(u_n):
                sums[k - 1, u] = total[u]
        _running_cost(unit, b, nb, per_comp, csum)
        i = 0 if rolling else slot[r * n_prompts + p]
        for k in range(1, nb + 1):
            if has_live and not live[r, p, k - 1]:
                continue
            m = nb // k
            if direct:
                for u in range(u_n):
                    gain[r, u, p, k - 1] += sums[k - 1, u]
                cost[r, p, k - 1] += csum[m * k]
                count[r, p, k - 1] += m
            else:
                for u in range(u_n):
                    acc_g[i, u, k - 1] += sums[k - 1, u]
                acc_c[i, k - 1] += csum[m * k]
                acc_n[i, k - 1] += m
    if rolling:  # the last cell
        _flush_row_last(run[b_n - 1], prompt[b_n - 1], top_n, acc_g, acc_c, acc_n, gain, cost, count, live)
    if direct or rolling:
        return
    _flush_cells(run, prompt, n, n_prompts, slot, acc_g, acc_c, acc_n, gain, cost, count, live, width)


def _equal_groups(group: NDArray[np.int64]) -> int:
    """The common size when ``group`` is contiguous runs of one size in non-decreasing order, else 0."""
    bounds = np.flatnonzero(group[1:] != group[:-1]) + 1
    size = int(bounds[0]) if bounds.size else group.size
    if bounds.size != group.size // size - 1 or group.size % size or not bool(np.all(group[1:] >= group[:-1])):
        return 0
    return size if bool(np.all(bounds % size == 0)) else 0


def _row_key_order(keys: NDArray[np.float64]) -> NDArray[np.int64]:
    """Per row of ``keys (G, size)``, the positions by key, ties in position order (a stable argsort).

    The plain row sort (several times faster than a stable one) is not stable, so a row with two
    equal keys (a repeated uniform: probability about ``size^2 / 2^54``) is sorted again stably.
    """
    within = np.argsort(keys, axis=1)
    ranked = np.take_along_axis(keys, within, axis=1)
    tied = np.flatnonzero((ranked[:, 1:] == ranked[:, :-1]).any(axis=1))
    if tied.size:
        within[tied] = np.argsort(keys[tied], axis=1, kind="stable")
    return within


@_jit.helper
def _bucket(key, lo, scale, m):  # noqa: ANN001, ANN202
    """Bucket ``0..m-1`` of ``key``: ``(key - lo) * scale`` truncated and clamped (NaN -> 0); never decreasing in ``key``."""
    x = (key - lo) * scale
    if not x >= 1.0:
        return 0
    if x >= m - 1:
        return m - 1
    return np.int64(x)


@_jit.kernel
def _random_fit_rows(keys, cost, allowance):  # noqa: ANN001, ANN202, C901
    """Compiled twin of :func:`random_fit`'s row path (costs ``>= 0``): the same picks without sorting whole rows.

    A row's picks are the longest prefix of its items in (key, position) order whose running cost
    fits; with costs ``>= 0`` the running cost never decreases, so only the items up to the first
    that does not fit matter. Those are among the items whose key lies below a threshold ``t``
    (every other key is ``>= t``, so they come later in that order). The kernel orders only those:
    a counting sort into buckets by key (bucket = a monotone function of the key; items enter in
    position order), each bucket then sorted by key by insertion (stable: ties keep position
    order), walked bucket after bucket until an item does not fit. If all of them fit, ``t``
    doubles; once ``t >= 1`` every item is a candidate.
    """
    g_n, size = keys.shape
    picked = np.zeros((g_n, size), dtype=np.bool_)
    cand = np.empty(size, dtype=np.int64)
    ranked = np.empty(size, dtype=np.int64)
    start = np.empty(size + 1, dtype=np.int64)
    bucket = np.empty(size, dtype=np.int64)
    for g in range(g_n):
        allow = allowance[g]
        total = 0
        for i in range(size):
            total += cost[g, i]
        if total <= allow:  # the whole row fits
            for i in range(size):
                picked[g, i] = True
            continue
        t = 2.0 * allow / total + 4.0 / size  # about twice the share of the items that fit
        while True:
            every = t >= 1.0
            m = 0
            lo = np.inf
            hi = -np.inf
            for i in range(size):
                k = keys[g, i]
                if every or k < t:
                    cand[m] = i
                    m += 1
                    lo = min(lo, k)
                    hi = max(hi, k)
            scale = m / (hi - lo) if hi > lo else 0.0
            for b in range(m + 1):
                start[b] = 0
            for j in range(m):  # bucket sizes
                b = _bucket(keys[g, cand[j]], lo, scale, m)
                bucket[j] = b
                start[b + 1] += 1
            for b in range(m):
                start[b + 1] += start[b]
            for j in range(m):  # items into their buckets, in position order
                b = bucket[j]
                ranked[start[b]] = cand[j]
                start[b] += 1
            # start[b] is now the end of bucket b (and the start of b + 1)
            spent = 0
            stop = -1  # items of ranked[:stop] fit; -1: all candidates fit
            first = 0
            for b in range(m):
                last = start[b]
                for j in range(first + 1, last):  # insertion sort of the bucket by key (stable)
                    item = ranked[j]
                    k = keys[g, item]
                    q = j
                    while q > first and keys[g, ranked[q - 1]] > k:
                        ranked[q] = ranked[q - 1]
                        q -= 1
                    ranked[q] = item
                for j in range(first, last):
                    spent += cost[g, ranked[j]]
                    if spent > allow:
                        stop = j
                        break
                if stop >= 0:
                    break
                first = last
            if stop >= 0 or every:
                for j in range(m if stop < 0 else stop):
                    picked[g, ranked[j]] = True
                break
            t *= 2.0
    return picked


def random_fit(
    group: NDArray[np.int64], cost: NDArray[np.int64], allowance: NDArray[np.int64], keys: NDArray[np.float64]
) -> NDArray[np.bool_]:
    """Pick, per group, a uniformly random subset of items whose total cost fits the group's allowance.

    Items of each group are visited in the order of their random ``keys`` (one uniform per item,
    drawn by the caller from the item's run stream; ties in item order) and the longest prefix that
    fits is taken (``group (I,)`` item -> group id, ``cost (I,)``, ``allowance (G,)``). Returns the
    ``(I,)`` mask. When the groups are contiguous runs of one size (every caller's usual case: cells
    are run-major, every run holds as many) the items are handled as the rows of a ``(G, size)``
    view, sorted row by row (about 10x faster than one lexsort over all items; the same subset).
    """
    if group.size == 0:
        return np.zeros(0, dtype=bool)
    size = _equal_groups(group)
    integral = np.issubdtype(cost.dtype, np.integer) and np.issubdtype(np.asarray(allowance).dtype, np.integer)
    if size and integral and _jit.enabled() and int(cost.min()) >= 0:  # compiled: each row's prefix, no full sort
        rows = np.ascontiguousarray(keys.reshape(-1, size), dtype=np.float64)
        costs = np.ascontiguousarray(cost.reshape(-1, size), dtype=np.int64)
        return _random_fit_rows(rows, costs, np.ascontiguousarray(allowance[group[::size]], dtype=np.int64)).reshape(-1)
    if size:
        within = _row_key_order(keys.reshape(-1, size))
        spent = np.cumsum(np.take_along_axis(cost.reshape(-1, size), within, axis=1), axis=1)
        picked = np.empty(within.shape, dtype=bool)
        np.put_along_axis(picked, within, spent <= allowance[group[::size]][:, None], axis=1)
        return picked.reshape(-1)
    order = np.lexsort((keys, group))
    g, c = group[order], cost[order]
    csum = np.cumsum(c)
    first = np.r_[True, g[1:] != g[:-1]]
    base = np.maximum.accumulate(np.where(first, csum - c, 0))
    take = (csum - base) <= allowance[g]
    out = np.zeros(group.size, dtype=bool)
    out[order] = take
    return out
