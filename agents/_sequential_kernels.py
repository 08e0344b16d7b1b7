"""Compiled kernels of the sequential agents (UCB, epsilon-greedy, Softmax): the same bits as numpy.

Each kernel does, row by row, what :mod:`iapo_gym.agents._sequential` does with ``(B, |P| N_max)``
numpy passes, reading and updating the runs' state (:class:`Online`) in place:

* :func:`run_steps` -- UCB's, epsilon-greedy's or Softmax's whole loop on a majority-voting table
  shared by the runs: many steps per run in one call (the context, the arm, the query and the
  completions drawn from the run's own stream: :func:`stream_take`, which steps the run's PCG64
  generator in the kernel, bit for bit as numpy does), so a step costs no Python at all;
* :func:`step_mv` -- one step's pulls on a shared majority-voting table: drawn, scored and recorded;
* :func:`record` -- add one pull's nested sums per live run (pulled by the engine) and refresh;
* :func:`best_arm` -- one step's arms of UCB or of epsilon-greedy's greedy rows;
* :func:`softmax_candidates` -- Softmax: the unseen-first rule, and for the other rows the few arms
  that can hold the Gumbel-max (bounds from a table of Gumbel values); numpy then computes those
  arms' logits exactly (its ``log``) and :func:`first_max` picks the winner.

Their bodies are shared helpers, one per job: :func:`pull_mv_row` (draw and score a pull),
:func:`refresh_row` (a pulled prompt's means and bounds) and :func:`choose_row` (an arm), inlined
by numba into each kernel that calls them.

Why the results are the same bits (the contract of :mod:`iapo_gym._jit`):

* element-wise ``+ - * /`` and ``sqrt`` are correctly rounded in both numba and numpy, and each
  kernel applies them to the same operands in the same order as the numpy code (no fused
  multiply-add: numba does not contract without ``fastmath``);
* MV credits are float32 ``1 / t`` values, so their sums are exact in float64 in any order;
* the argmax is exact: arms are ranked by cheap *bounds* of the score first (every arm's, and whole
  prompts' at once), and the exact score is computed for every arm within a tolerance of the best
  bound -- far wider than the bounds' error -- so every arm whose exact score ties the maximum is
  among them, and among those the rule of ``argmax_tiebreak`` is applied (highest score, then
  highest priority, then lowest index);
* transcendental functions stay in numpy: ``ln t`` is numpy's (per row, or a table of it), and
  Softmax's Gumbel noise ``-log(-log1p(-u))`` is computed by numpy for the candidate arms only (an
  element-wise function: the same bits whatever array the value sits in).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from iapo_gym import _pcg
from iapo_gym._jit import helper, kernel, twin
from iapo_gym._pcg import (  # noqa: F401 (pcg_jump, pcg_jumps: this module's API for its callers)
    PCG_LANES,
    PCG_MULT_HI,
    PCG_MULT_LO,
    pcg_advance,
    pcg_fill,
    pcg_jump,
    pcg_jumps,
    pcg_uniform,
)
from iapo_gym.agents._engine import _credit_lut, _vote_encoding

#: Softmax's Gumbel table: ``u`` in ``[b / GUMBEL_BUCKETS, (b + 1) / GUMBEL_BUCKETS)`` bounds the
#: noise ``g(u) = -log(-log1p(-u))`` (decreasing in ``u``) by its values at the bucket's edges.
GUMBEL_BUCKETS = 4096


class Online(NamedTuple):
    """The runs' statistics that the kernels read and update in place (row ``s``: run ``s``).

    ``A = |P| N_max`` arms, flat index ``p * N_max + N - 1``; ``C`` contexts; ``U`` objective rows.
    """

    gain: NDArray[np.float64]  #: ``(S, U, P, N_max)`` nested tallies (:class:`~iapo_gym.agents._engine.NestedStats`)
    cost: NDArray[np.float64]  #: ``(S, P, N_max)``
    n_blocks: NDArray[np.int64]  #: ``(S, P, N_max)`` nested blocks per arm (``NestedStats.count``)
    countf: NDArray[np.float64]  #: ``(S, A)`` the counts as floats
    total: NDArray[np.int64]  #: ``(S,)`` blocks recorded (UCB's ``t``)
    n_unseen: NDArray[np.int64]  #: ``(S,)`` arms with no block yet
    mean: NDArray[np.float64]  #: ``(S, C, A)`` empirical means, NaN where unseen
    group: NDArray[np.int64]  #: ``(C,)`` each context's objective row
    cost_weight: NDArray[np.float64]  #: ``(C,)``
    priority: NDArray[np.float64]  #: ``(S, A)`` tie-break priorities
    unseen_best: NDArray[np.int64]  #: ``(S, P)`` each prompt's unseen arm of highest priority (-1: none)
    pmax: NDArray[np.float64]  #: ``(S, C, P)`` each prompt's largest mean (-inf until seen)
    invsqrt: NDArray[np.float64]  #: ``(S, A)`` ``1 / sqrt(count)`` (UCB; else ``(0, 0)``)
    pinv: NDArray[np.float64]  #: ``(S, P)`` each prompt's largest ``invsqrt`` (UCB; else ``(0, 0)``)
    last: NDArray[np.float64]  #: ``(S, C, P, 2)`` UCB: a prompt's best bound and ``beta`` at its last scan


class MVTable(NamedTuple):
    """A majority-voting table as :func:`pull_mv_row` reads it."""

    probs: NDArray[np.float64]  #: ``(P, Q, A)`` answer probabilities
    gold: NDArray[np.int64]  #: ``(Q,)`` gold answer
    unit_cost: NDArray[np.float64]  #: ``(P, Q)`` cost per completion
    weight: NDArray[np.float64]  #: ``(U,)`` objective weight of each objective row
    lut: NDArray[np.float64]  #: MV credit ``1 / (1 + ties)``
    word: NDArray[np.int64]  #: packed votes: what each relabelled answer adds (empty: counts per answer)
    pack: NDArray[np.int64]  #: ``(ones, guards, bits)`` of the packed votes


def mv_table(table: object, weight: NDArray[np.float64], n_max: int) -> MVTable:
    """:class:`MVTable` of an outcome table (``mv_arrays``, ``cost``, ``n_outcomes``) for pulls of up to ``n_max``."""
    probs, gold = table.mv_arrays()  # type: ignore[attr-defined]
    a = int(table.n_outcomes)  # type: ignore[attr-defined]
    bits = int(n_max).bit_length() + 1  # a block's count of one answer (<= n_max) plus a guard bit
    if (a - 1) * bits <= 62:  # the engine's packed votes fit one 64-bit word
        word, ones, guards = _vote_encoding(a, bits)
        pack = np.array([ones, guards, bits], dtype=np.int64)
    else:
        word, pack = np.empty(0, dtype=np.int64), np.zeros(3, dtype=np.int64)
    return MVTable(probs, gold, table.cost, np.ascontiguousarray(weight), _credit_lut(a), word, pack)  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=1)
def gumbel_table() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(upper, lower)`` bounds of the Gumbel noise per bucket of ``u`` (numpy's own ``g`` at the edges; built once)."""
    edges = np.arange(GUMBEL_BUCKETS + 1) / GUMBEL_BUCKETS
    with np.errstate(divide="ignore"):
        g = -np.log(-np.log1p(-edges))  # g(0) = +inf, g(1) = -inf
    return g[:-1].copy(), g[1:].copy()


@kernel
def record(st, run, prompt, gain, count, cost):
    """Add pull ``i``'s sums (``gain (U, B, L)``, ``count``, ``cost (B, L)``) to cell ``(run[i], prompt[i])`` and refresh it.

    One pull per run (so per cell): the tallies take ``+=`` of the pull's own sums, then
    :func:`refresh_row` (with the counts).
    """
    gain_tab, cost_tab = st.gain, st.cost  # arrays bound once: no reference counting inside the loops
    n_u = gain.shape[0]
    width = gain.shape[2]
    for i in range(run.shape[0]):
        r = run[i]
        p = prompt[i]
        for k in range(width):
            for w in range(n_u):
                gain_tab[r, w, p, k] += gain[w, i, k]
            cost_tab[r, p, k] += cost[i, k]
        refresh_row(st, r, p, count[i], width)


@kernel
def step_mv(st, tab, run, prompt, query, n, u, start):
    """One pull per run on a shared majority-voting table: :meth:`pull` + :func:`record` in one pass.

    Pull ``i`` (run ``run[i]``, ``n[i]`` completions of ``prompt[i]`` on ``query[i]``, uniforms
    ``u[start[i]:]``) is :func:`pull_mv_row`.
    """
    n_max = st.n_blocks.shape[2]
    a_n = tab.probs.shape[2]
    cdf = np.empty(a_n)
    votes = np.zeros((n_max + 1, a_n), dtype=np.int64)
    csum = np.zeros(n_max + 1)
    blocks = np.empty(n_max, dtype=np.int64)
    for i in range(run.shape[0]):
        pull_mv_row(st, tab, run[i], prompt[i], query[i], n[i], u, start[i], cdf, votes, csum, blocks)


@helper
def pull_mv_row(st, tab, r, p, q, nb, u, first, cdf, votes, csum, blocks):  # noqa: C901 (one fused pass)
    """Run ``r``'s pull of ``nb`` completions of prompt ``p`` on query ``q``: drawn, scored and recorded.

    The completions come by inverse CDF of ``u[first:first + nb]`` (the running sum of the answer
    probabilities, as the sampler's, the last set to 1: comparisons only). The nested sums per
    block size ``k`` are those of the engine: the MV credit ``lut[ties]`` of every block gold wins
    (no answer has more votes; ``ties`` answers have as many) summed over the ``nb // k`` blocks,
    times each objective weight; the cost of the first ``(nb // k) k`` completions as a running
    sum of the unit cost; the count ``nb // k``. Then :func:`refresh_row`.

    A block is scored from packed votes when ``tab.word`` is not empty (the engine's encoding,
    :func:`iapo_gym.agents._engine._mv_tail_sums`: one subtraction and a few bit operations per
    block), else from one cumulative count per answer. Scratch: ``cdf`` ``(A,)``, ``votes``
    ``(N_max + 1, A)`` (the cumulative words in column 0 when packed) with a zero first row,
    ``csum`` ``(N_max + 1,)`` with a zero first entry, ``blocks`` ``(N_max,)`` integers.
    """
    # every array is read as ``st.x[...]`` / ``tab.x[...]`` where it is used, never bound to a
    # name: a name that lives across loops costs an (atomic) incref and decref per inlined call,
    # which numba's pruning of reference counts removes only within one basic block
    a_n = tab.probs.shape[2]
    packed = tab.word.shape[0] > 0
    g0 = tab.gold[q]
    acc = 0.0
    for c in range(a_n):
        acc += tab.probs[p, q, c]
        cdf[c] = acc
    c0 = tab.unit_cost[p, q]
    for j in range(nb):
        x = u[first + j]
        o = 0
        for c in range(a_n - 1):  # the last cdf entry is 1.0: never passed
            o += x >= cdf[c]
        rel = o - g0  # the answer relabelled (answer - gold) mod A: 0 is gold
        if rel < 0:
            rel += a_n
        if packed:
            votes[j + 1, 0] = votes[j, 0] + tab.word[rel]
        else:
            for c in range(a_n):
                votes[j + 1, c] = votes[j, c]
            votes[j + 1, rel] += 1
        csum[j + 1] = csum[j] + c0
    ones, guards, bits = tab.pack[0], tab.pack[1], tab.pack[2]
    top = bits * (a_n - 2) if a_n >= 2 else 0
    field = (1 << bits) - 1
    for k in range(1, nb + 1):
        m = nb // k
        blocks[k - 1] = m
        credit = 0.0
        if packed:
            for s in range(0, m * k, k):
                d = votes[s + k, 0] - votes[s, 0] + guards  # guard of field c set iff v_c >= g
                ties = ((((d & guards) >> (bits - 1)) * ones) >> top) & field
                won = ((d - ones) & guards) == 0  # no answer beats gold: then v_c >= g means a tie
                credit += tab.lut[ties] * won
        else:
            for s in range(0, m * k, k):  # no branch per answer: a block's outcome is a coin flip for the predictor
                g = votes[s + k, 0] - votes[s, 0]
                ties = 0
                beaten = False
                for c in range(1, a_n):
                    v = votes[s + k, c] - votes[s, c]
                    beaten |= v > g
                    ties += v == g
                if not beaten:
                    credit += tab.lut[ties]
        for w in range(tab.weight.shape[0]):
            st.gain[r, w, p, k - 1] += tab.weight[w] * credit
        st.cost[r, p, k - 1] += csum[m * k]
    refresh_row(st, r, p, blocks, nb)


@helper
def refresh_row(st, r, p, blocks, width):
    """After a pull of prompt ``p`` (arms ``N <= width`` changed): run ``r``'s counts, means and bounds of that prompt.

    First ``blocks[k]`` blocks are added to arm ``(p, k + 1)`` for ``k < width``: counts, total,
    unseen arms (one helper for both: every helper call inlined per step binds ``st`` anew, an
    incref and a decref of each of its arrays).

    The means under every context are ``(gain[group[c]] - cost_weight[c] * cost) / count``, as the
    numpy refresh computes them; then ``invsqrt`` (kept for UCB), the prompt's bounds ``pmax`` and
    ``pinv`` (largest mean per context, largest ``invsqrt``; unseen arms passed over: they are read
    only once every arm is seen), its bounds from the last scan marked stale, and its unseen arm of
    highest priority.
    """
    n_max = st.n_blocks.shape[2]
    base = p * n_max
    added = 0
    seen = 0
    for k in range(width):
        old = st.n_blocks[r, p, k]
        new = old + blocks[k]
        st.n_blocks[r, p, k] = new
        added += blocks[k]
        seen += old == 0 and new > 0
        st.countf[r, base + k] = np.float64(new)
    st.total[r] += added
    st.n_unseen[r] -= seen
    for c in range(st.group.shape[0]):  # arrays read where used, never named (see pull_mv_row)
        g = st.group[c]
        w = st.cost_weight[c]
        top = -np.inf
        for k in range(width):  # the changed means, then the others: the largest, the first on a tie
            v = (st.gain[r, g, p, k] - w * st.cost[r, p, k]) / st.countf[r, base + k]
            st.mean[r, c, base + k] = v
            if v > top:  # NaN (unseen) never is
                top = v
        for k in range(width, n_max):
            v = st.mean[r, c, base + k]
            if v > top:
                top = v
        st.pmax[r, c, p] = top
    if st.invsqrt.shape[0] > 0:
        top = 0.0
        for k in range(width):
            v = 1.0 / np.sqrt(st.countf[r, base + k])
            st.invsqrt[r, base + k] = v
            top = max(top, v)
        for k in range(width, n_max):
            top = max(top, st.invsqrt[r, base + k])
        st.pinv[r, p] = top
        for c in range(st.last.shape[1]):
            st.last[r, c, p, 1] = -1.0
    if st.unseen_best[r, p] >= 0:
        best = -1
        for k in range(n_max):
            a = base + k
            if st.countf[r, a] == 0.0 and (best < 0 or st.priority[r, a] > st.priority[r, best]):
                best = a
        st.unseen_best[r, p] = best


@kernel
def best_arm(st, live, ctx, limit, logt, c, ucb, skip, out):
    """Per live run ``i`` (run ``live[i]``, context ``ctx[i]``): UCB's arm (``ucb``) or the greedy one, into ``out[i]``.

    Rows with ``skip[i]`` are left alone; the others are :func:`choose_row` (``logt[i]``: numpy's
    ``ln t`` of the row; read only if ``ucb``).
    """
    n_arms = st.countf.shape[1]
    n_prompts = st.n_blocks.shape[1]
    scratch = np.empty(n_arms)
    ub = np.empty(n_prompts)
    scanned = np.empty(n_prompts, dtype=np.bool_)
    for i in range(live.shape[0]):
        if not skip[i]:
            lt = logt[i] if ucb else 0.0
            out[i] = choose_row(st, live[i], ctx[i], limit[i], lt, c, ucb, scratch, ub, scanned)


@helper
def first_unseen(st, r, m):
    """Run ``r``'s feasible (``N <= m``) unseen arm of highest priority (the first in index order on a tie), or -1."""
    n_max = st.n_blocks.shape[2]
    best = -1
    for p in range(st.n_blocks.shape[1]):
        if m == n_max:  # every arm feasible: the prompt's own best
            a = st.unseen_best[r, p]
            if a >= 0 and (best < 0 or st.priority[r, a] > st.priority[r, best]):
                best = a
        else:  # the endgame: the feasible arms only
            for k in range(m):
                a = p * n_max + k
                if st.countf[r, a] == 0.0 and (best < 0 or st.priority[r, a] > st.priority[r, best]):
                    best = a
    return best


@helper
def choose_row(st, r, x, m, lt, c, ucb, scratch, ub, scanned):
    """Run ``r``'s arm under context ``x`` with feasible ``N <= m``: UCB's (``ucb``) or the greedy one.

    Unseen feasible arms come first (:func:`first_unseen`). Otherwise the feasible argmax of the
    score -- UCB: ``mean + sqrt(lt / count) * c``; greedy: ``mean`` -- ties going to the highest
    priority, then the lowest index: :func:`endgame_arm` when some arms are infeasible, else
    :func:`bounded_arm`. (Every helper has one exit: numba inlines them into the kernels.)
    """
    best = -1
    if st.n_unseen[r] > 0:
        best = first_unseen(st, r, m)
    if best < 0:
        best = seen_arm(st, r, x, m, lt, c, ucb, scratch, ub, scanned)
    return best


@helper
def seen_arm(st, r, x, m, lt, c, ucb, scratch, ub, scanned):
    """:func:`choose_row` past the unseen arms: :func:`endgame_arm` when some arms are infeasible, else :func:`bounded_arm`."""
    best = -1
    if m < st.n_blocks.shape[2]:
        best = endgame_arm(st, r, x, m, lt, c, ucb)
    else:
        best = bounded_arm(st, r, x, lt, c, ucb, scratch, ub, scanned)
    return best


@helper
def endgame_arm(st, r, x, m, lt, c, ucb):
    """:func:`choose_row` when only ``N <= m < N_max`` is feasible (every feasible arm seen): exact scores of all."""
    n_max = st.n_blocks.shape[2]
    best = -1
    best_s = -np.inf
    best_p = -1.0
    for p in range(st.n_blocks.shape[1]):
        for k in range(m):
            a = p * n_max + k
            s = st.mean[r, x, a]
            if ucb:
                s = s + np.sqrt(lt / st.countf[r, a]) * c
            if best < 0 or s > best_s or (s == best_s and st.priority[r, a] > best_p):
                best, best_s, best_p = a, s, st.priority[r, a]
    return best


@helper
def bounded_arm(st, r, x, lt, c, ucb, scratch, ub, scanned):  # noqa: C901 (one fused pass)
    """:func:`choose_row` when every arm is feasible and seen (all but the first sweep and the endgame).

    Arms are ranked by a *bound* first: greedy's is the mean itself; UCB's is ``mean + beta *
    invsqrt`` with ``beta = c sqrt(lt)`` (one product per arm, no division or root), and only arms
    within ``1e-12 (|best| + beta)`` of the best bound -- a thousand times the bound's error -- get
    their exact score. A prompt's arms are bounded at once, and a prompt whose bound is below the
    threshold is never scanned:

    * by ``pmax + beta pinv``: rounding is monotone, so no arm's computed bound exceeds it
      (greedy: ``pmax``, the largest mean itself);
    * UCB: by its best arm bound ``v`` at its last scan under ``x``, at ``beta0`` (``last[r, x, p] =
      (v, beta0)``; ``beta0 < 0``: not scanned since its last pull), plus ``(beta - beta0) pinv``
      (``beta`` never falls: ``t`` only grows) and a margin of ``1e-9 (1 + |v| + beta)``, millions
      of times the rounding of either side. ``beta`` creeps up with ``sqrt(ln t)``, so this bound
      is tight: a step scans the prompt it last pulled and few others.

    The prompt with the highest bound is scanned first, then the others that can still reach the
    threshold; the exact scores are compared in index order, as a full scan would. ``scratch``
    holds ``A`` floats, ``ub`` and ``scanned`` ``|P|`` each.
    """
    n_max = st.n_blocks.shape[2]
    n_prompts = st.n_blocks.shape[1]
    beta = np.sqrt(lt) * c if ucb else 0.0
    first = 0
    for p in range(n_prompts):
        if ucb:
            ub[p] = st.pmax[r, x, p] + beta * st.pinv[r, p]
            v, beta0 = st.last[r, x, p, 0], st.last[r, x, p, 1]
            if beta0 >= 0.0:
                ub[p] = min(ub[p], v + (beta - beta0) * st.pinv[r, p] + 1e-9 * (1.0 + abs(v) + beta))
        else:
            ub[p] = st.pmax[r, x, p]
        scanned[p] = False
        if ub[p] > ub[first]:
            first = p
    bound = scratch if ucb else st.mean[r, x]  # greedy: the mean is its own bound
    top = -np.inf
    threshold = -np.inf
    for j in range(n_prompts + 1):
        p = first if j == 0 else j - 1
        if not scanned[p] and ub[p] >= threshold:
            scanned[p] = True
            base = p * n_max
            top_p = -np.inf
            for k in range(n_max):
                a = base + k
                if ucb:
                    scratch[a] = st.mean[r, x, a] + beta * st.invsqrt[r, a]
                top_p = max(top_p, bound[a])
            if ucb:
                st.last[r, x, p, 0] = top_p
                st.last[r, x, p, 1] = beta
            top = max(top, top_p)
            threshold = top - 1e-12 * (abs(top) + beta) if ucb else top
    best = -1
    best_s = -np.inf
    best_p = -1.0
    for p in range(n_prompts):
        if scanned[p]:
            for k in range(n_max):
                a = p * n_max + k
                if bound[a] >= threshold:
                    s = bound[a]
                    if ucb:
                        s = st.mean[r, x, a] + np.sqrt(lt / st.countf[r, a]) * c
                    if best < 0 or s > best_s or (s == best_s and st.priority[r, a] > best_p):
                        best, best_s, best_p = a, s, st.priority[r, a]
    return best




#: SHA-256 of :mod:`iapo_gym._pcg`, whose intrinsics these kernels inline: numba's cache follows this
#: file only, so an edit there must change this line (``tests/test_pcg.py`` checks it).
_PCG_SHA256 = "f4640774232ba769507b148c68dd82aaf362c242eba70694ad98d49a9226e812"


def install_pcg() -> None:
    """Make :mod:`iapo_gym._pcg`'s intrinsics real and bind them here (before a kernel that uses them compiles)."""
    _pcg.install(globals())


@helper
def stream_take(buf, pos, pcg, r, out, first, k, skip, jumps, cl_hi, cl_lo, cs_hi, cs_lo, lanes):
    """Run ``r``'s next ``k`` uniforms, the first ``skip`` passed over: value ``j >= skip`` into ``out[first + j]``.

    Run ``r``'s stream is its buffered values ``buf[r, pos[r]:]`` (``pos`` is advanced past those
    taken), then its PCG64 generator, whose state ``pcg[r] = (state high, state low, inc high,
    inc low)`` (:meth:`iapo_gym.runs.RunStreams.pcg_states`) is stepped here as numpy steps it
    (:func:`pcg_advance`, :func:`pcg_uniform`): the same values, and the same state after them.
    ``jumps`` is :func:`pcg_jumps` of ``skip``, ``(cl_hi, cl_lo)`` and ``(cs_hi, cs_lo)`` its two
    ``S`` times the run's increment. ``skip`` values with none buffered are one jump; a run of
    ``2 L`` or more values (``L`` = :data:`PCG_LANES`) is drawn by :func:`pcg_fill`: ``L``
    interleaved chains (positions ``t + 1 .. t + L``, each jumped ``L`` steps at a time), their
    states in ``lanes`` (``2 L`` integers); a rest of 8 or more by four such chains in scalars, the
    last few by the one chain.
    """
    width = buf.shape[1]
    p = pos[r]
    j = 0
    if skip > 0 and p == width:  # nothing buffered: the skipped values are one jump
        pcg[r, 0], pcg[r, 1] = pcg_advance(pcg[r, 0], pcg[r, 1], jumps[4], jumps[5], cs_hi, cs_lo)
        j = skip
    while j < k and p < width:  # the buffered values first
        if j >= skip:
            out[first + j] = buf[r, p]
        j += 1
        p += 1
    pos[r] = p
    if j < k:
        hi, lo = pcg[r, 0], pcg[r, 1]
        inc_hi, inc_lo = pcg[r, 2], pcg[r, 3]
        while j < skip:  # (only when the buffer held a part of them)
            hi, lo = pcg_advance(hi, lo, PCG_MULT_HI, PCG_MULT_LO, inc_hi, inc_lo)
            j += 1
        if k - j >= 2 * PCG_LANES:  # the chains' first states, then their values at once
            for lane in range(PCG_LANES):
                hi, lo = pcg_advance(hi, lo, PCG_MULT_HI, PCG_MULT_LO, inc_hi, inc_lo)
                lanes[lane], lanes[PCG_LANES + lane] = hi, lo
            n_fill = (k - j) // PCG_LANES * PCG_LANES
            pcg_fill(out, first + j, n_fill, lanes, jumps[0], jumps[1], cl_hi, cl_lo)
            hi, lo = lanes[PCG_LANES - 1], lanes[2 * PCG_LANES - 1]
            j += n_fill
        if k - j >= 8:  # (a pull's completions) four interleaved chains, jumped four steps at a time
            c4_hi, c4_lo = pcg_advance(inc_hi, inc_lo, jumps[10], jumps[11], 0, 0)
            h0, l0 = pcg_advance(hi, lo, PCG_MULT_HI, PCG_MULT_LO, inc_hi, inc_lo)
            h1, l1 = pcg_advance(h0, l0, PCG_MULT_HI, PCG_MULT_LO, inc_hi, inc_lo)
            h2, l2 = pcg_advance(h1, l1, PCG_MULT_HI, PCG_MULT_LO, inc_hi, inc_lo)
            h3, l3 = pcg_advance(h2, l2, PCG_MULT_HI, PCG_MULT_LO, inc_hi, inc_lo)
            while True:
                out[first + j] = pcg_uniform(h0, l0)
                out[first + j + 1] = pcg_uniform(h1, l1)
                out[first + j + 2] = pcg_uniform(h2, l2)
                out[first + j + 3] = pcg_uniform(h3, l3)
                hi, lo = h3, l3  # the state after these four
                j += 4
                if k - j < 4:
                    break
                h0, l0 = pcg_advance(h0, l0, jumps[8], jumps[9], c4_hi, c4_lo)
                h1, l1 = pcg_advance(h1, l1, jumps[8], jumps[9], c4_hi, c4_lo)
                h2, l2 = pcg_advance(h2, l2, jumps[8], jumps[9], c4_hi, c4_lo)
                h3, l3 = pcg_advance(h3, l3, jumps[8], jumps[9], c4_hi, c4_lo)
        while j < k:
            hi, lo = pcg_advance(hi, lo, PCG_MULT_HI, PCG_MULT_LO, inc_hi, inc_lo)
            out[first + j] = pcg_uniform(hi, lo)
            j += 1
        pcg[r, 0], pcg[r, 1] = hi, lo


#: :func:`stream_take` for a second call site in one kernel (:func:`run_steps`: a step's completions).
stream_take_next = twin(stream_take, "stream_take_next")

#: The rules of :func:`run_steps`: UCB (parameter ``c``), epsilon-greedy (``epsilon``), Softmax (``tau``).
UCB, GREEDY, SOFTMAX = 0, 1, 2


@helper
def step_values(rule: int, n_arms: int, n_max: int) -> int:
    """The most uniforms one step of ``rule`` takes from a run's stream in :func:`run_steps`."""
    extra = 0
    if rule == GREEDY:  # the explore coin and the random arm
        extra = 2
    elif rule == SOFTMAX:  # one per arm
        extra = n_arms
    return 1 + extra + 1 + n_max  # the context, then the query and at most N_max completions


@kernel
def run_steps(st, tab, context_cdf, live, buf, pos, pcg, jumps, budgets, spent, drawn, steps, deferred, train, n_train,  # noqa: C901
              rule, param, logs, upper, lower, margin):  # fmt: skip
    """Many steps of UCB, epsilon-greedy or Softmax (``rule``) per live run, on a majority-voting table shared by the runs.

    Run ``live[i]`` steps on while it has budget left (``budgets - spent - drawn``) and (UCB)
    ``logs`` holds ``ln t`` of its block total ``t``; then the next run. A step takes, from the
    run's own stream in order (:func:`stream_take`: its buffered values ``buf[r, pos[r]:]``, then
    its PCG64 generator ``pcg[r]``, stepped here; ``jumps`` is :func:`pcg_jumps` of ``1 + A``),
    exactly what the one-step path draws: the context (``searchsorted(context_cdf, u, "right")``,
    capped at the last context), epsilon-greedy's two (the explore coin, then the random arm) or
    Softmax's one per arm, the query (train column ``min(int(u n_train), n_train - 1)``) and the
    completions. It picks the arm with :func:`choose_row` (UCB with ``c = param``, or the greedy
    arm), the ``floor(u k)``-th of the ``k`` feasible arms (epsilon-greedy exploring with
    probability ``param``) or :func:`softmax_row` (``tau = param``), adds its ``N`` to ``drawn``
    (the caller charges it: :meth:`iapo_gym.runs.RunBatch.charge_drawn`) and records the pull with
    :func:`pull_mv_row`. A Softmax step whose arm is an unseen one reads neither its context nor
    its ``A`` arm values: they are passed over as one jump of the generator. ``logs[t]`` is numpy's
    ``log(max(t, 1))``, the value the one-step path computes. A Softmax step whose winner only
    numpy's own ``log`` can settle is left undrawn (the stream put back where the step began):
    ``deferred[r]`` is set and the run stops there (the caller takes that step on the one-step
    path). Runs are independent, so their order changes nothing.
    """
    n_max = st.n_blocks.shape[2]
    n_prompts = st.n_blocks.shape[1]
    n_arms = st.countf.shape[1]
    a_n = tab.probs.shape[2]
    c_n = context_cdf.shape[0]
    need = step_values(rule, n_arms, n_max)
    pre = need - n_max  # the context, the rule's values and the query
    ucb = rule == UCB
    total = st.total
    cdf = np.empty(a_n)
    votes = np.zeros((n_max + 1, a_n), dtype=np.int64)
    csum = np.zeros(n_max + 1)
    blocks = np.empty(n_max, dtype=np.int64)
    scratch = np.empty(n_arms)
    ub = np.empty(n_prompts)
    scanned = np.empty(n_prompts, dtype=np.bool_)
    u = np.empty(need)  # one step's values: u[0] the context, then the rule's, the query, the completions
    lanes = np.empty(2 * PCG_LANES, dtype=np.int64)
    for i in range(live.shape[0]):
        r = live[i]
        cl_hi, cl_lo = pcg_advance(pcg[r, 2], pcg[r, 3], jumps[2], jumps[3], 0, 0)  # S times the increment
        cs_hi, cs_lo = pcg_advance(pcg[r, 2], pcg[r, 3], jumps[6], jumps[7], 0, 0)
        while True:
            left = budgets[r] - spent[r] - drawn[r]
            if left <= 0 or (ucb and total[r] >= logs.shape[0]):
                break
            m = min(left, n_max)
            unseen = -1
            if st.n_unseen[r] > 0:  # the unseen-first rule (one call site of each helper: see choose_row)
                unseen = first_unseen(st, r, m)
            skip = 1 + n_arms if rule == SOFTMAX and unseen >= 0 else 0  # its context and arm values unread
            p0, s_hi, s_lo = pos[r], pcg[r, 0], pcg[r, 1]  # where the step begins
            stream_take(buf, pos, pcg, r, u, 0, pre, skip, jumps, cl_hi, cl_lo, cs_hi, cs_lo, lanes)
            x = 0
            if skip == 0:
                for k in range(c_n):
                    x += u[0] >= context_cdf[k]
                x = min(x, c_n - 1)
            b = 1
            lt = logs[max(total[r], 1)] if ucb else 0.0
            explore = False
            if rule == GREEDY:  # epsilon-greedy's explore coin, then its random arm
                explore = u[b] < param
                pick = u[b + 1]
                b += 2
            if explore:  # the floor(pick k)-th of the k feasible arms, in index order
                kk = n_prompts * m
                j = min(np.int64(pick * kk), kk - 1)
                arm = (j // m) * n_max + j % m
            elif unseen >= 0:
                arm = unseen
            elif rule == SOFTMAX:  # softmax_row's and choose_row's rules, their unseen-first part above
                arm = softmax_gumbel(st, r, x, m, u, b, param, upper, lower, margin, scratch, ub, scanned)
            else:  # one call site per helper: numba inlines each call, and two copies trip its SSA checks
                arm = seen_arm(st, r, x, m, lt, param if ucb else 0.0, ucb, scratch, ub, scanned)
            if rule == SOFTMAX:
                b += n_arms
            if arm >= 0:  # the completions (a twin of stream_take: a helper inlined once per kernel)
                stream_take_next(buf, pos, pcg, r, u, pre, arm % n_max + 1, 0, jumps, cl_hi, cl_lo, cs_hi, cs_lo, lanes)
            if arm < 0:  # numpy's log decides this step: leave it (and the run) to the one-step path
                pos[r], pcg[r, 0], pcg[r, 1] = p0, s_hi, s_lo  # its values drawn again there
                deferred[r] = True
                break
            p = arm // n_max
            nb = arm % n_max + 1
            drawn[r] += nb
            col = min(np.int64(u[b] * n_train[r]), n_train[r] - 1)
            pull_mv_row(st, tab, r, p, train[r, col], nb, u, pre, cdf, votes, csum, blocks)
            steps[r] += 1


@helper
def softmax_scan(st, r, x, m, u, first, inv_tau, upper, lower, high, ub, scanned):  # noqa: C901 (one fused pass)
    """The bounds pass of Softmax's Gumbel-max (run ``r``, context ``x``, feasible ``N <= m``, every feasible arm seen).

    Arm ``a`` (uniform ``u[first + a]``, bucket ``b_a = int64(u * n_buckets)``, ``x_a = mean * inv_tau``)
    has its logit within ``[x_a + lower[b_a], x_a + upper[b_a]]`` (a few ulps aside). The full pass
    would compute ``high[a] = x_a + upper[b_a]`` for every feasible arm and the *floor*, the
    largest ``x_a + lower[b_a]``; the candidates are the arms with ``high >= threshold``,
    ``threshold = floor - 1e-9 (64 + |floor|)`` (returned). This pass gives exactly that floor and
    those candidates while computing ``high`` only for the arms of the prompts marked ``scanned``:

    * a prompt's bound ``ub[p] = pmax[r, x, p] * inv_tau + upper[b_min]``, ``b_min`` the bucket of
      the smallest ``u`` of its feasible arms, is at least every one of its arms' ``high``: ``pmax``
      (kept by :func:`refresh_row`) is the prompt's largest mean and each operation is rounded
      monotonically, so ``x_a <= pmax * inv_tau`` (``inv_tau > 0``); ``b_a >= b_min`` and ``upper``
      does not increase with the bucket; and the sum of the computed values is monotone too;
    * the prompt of highest bound is scanned first, then the others in index order, each skipped
      when its bound is below ``cut = floor - 2e-9 (64 + |floor|)`` of the floor so far. The floor
      only grows; the exact threshold grows with it (at slope ``1 +- 1e-9``), and ``cut`` lies
      ``1e-9 (64 + |floor|)`` below the threshold of the same floor, millions of times the few ulps
      of ``64 + |floor|`` by which either computed value can miss its exact one, so a skipped bound
      is below the final threshold;
    * so a skipped arm has ``high < threshold``: not a candidate of the full pass; and its lower end
      ``x_a + lower[b_a] <= high < threshold <= floor`` (``lower <= upper`` per bucket), so it
      leaves the floor, hence the threshold, as the scanned arms alone make them.

    The means are finite and ``inv_tau`` positive, so no bound is NaN (a NaN bound would only make
    the prompt scanned). The smallest ``u`` of a prompt is the one of smallest bit pattern (``u >= 0``:
    the same order; an integer minimum, which LLVM vectorises), and a prompt's floor is taken over
    two running maxima (``max`` is exact in any order: two independent chains instead of one). On
    MATH (25 prompts of 32 arms, tau 0.05) about 4 prompts a step are scanned. ``high`` holds ``A`` floats, ``ub`` and
    ``scanned`` ``|P|`` each.
    """
    n_max = st.n_blocks.shape[2]
    n_prompts = st.n_blocks.shape[1]
    n_buckets = upper.shape[0]
    top = 0
    bits = u.view(np.int64)  # u >= 0: ordered as their bit patterns, whose minimum vectorises
    for p in range(n_prompts):
        base = first + p * n_max
        q = bits[base]
        for k in range(1, m):
            q = min(q, bits[base + k])
        u_min = np.int64(q).view(np.float64)  # (a fresh value: numba views a name defined once)
        ub[p] = st.pmax[r, x, p] * inv_tau + upper[np.int64(u_min * n_buckets)]  # read where used (see pull_mv_row)
        scanned[p] = False
        if ub[p] > ub[top]:
            top = p
    floor = -np.inf
    cut = -np.inf
    for j in range(n_prompts + 1):
        p = top if j == 0 else j - 1
        if not scanned[p] and not ub[p] < cut:
            scanned[p] = True
            f0 = f1 = -np.inf  # two running maxima: independent chains
            k = 0
            while k < m:
                a = p * n_max + k
                x_a = st.mean[r, x, a] * inv_tau  # within an ulp of mean / tau: far inside the tolerance
                bucket = np.int64(u[first + a] * n_buckets)
                high[a] = x_a + upper[bucket]
                f0 = max(f0, x_a + lower[bucket])
                if k + 1 < m:
                    x_b = st.mean[r, x, a + 1] * inv_tau
                    bucket = np.int64(u[first + a + 1] * n_buckets)
                    high[a + 1] = x_b + upper[bucket]
                    f1 = max(f1, x_b + lower[bucket])
                k += 2
            floor = max(floor, max(f0, f1))
            cut = floor - 2e-9 * (64.0 + abs(floor))
    return floor - 1e-9 * (64.0 + abs(floor))  # -inf for a floor of -inf


@helper
def softmax_row(st, r, x, m, u, first, tau, upper, lower, margin, high, ub, scanned):
    """Softmax's arm for run ``r`` under context ``x`` (feasible ``N <= m``), its arms' uniforms at ``u[first:]``; or -1.

    An unseen feasible arm first (:func:`first_unseen`). Otherwise the Gumbel-max: the feasible
    arm with the largest ``mean / tau + g(u)``, ``g(u) = -log(-log1p(-u))``, the first on a tie.
    As in :func:`softmax_candidates`, an arm's logit lies between ``x_a + lower[b]`` and ``x_a +
    upper[b]`` (``b`` its bucket of ``u``, ``x_a = mean * (1 / tau)``, a few ulps aside); the arms
    whose upper end reaches the best lower end (less ``1e-9 (64 + |best|)``) are the candidates
    (:func:`softmax_scan`: whole prompts that cannot reach it are passed over), and their exact
    logits are computed here, in index order, with numba's ``log`` and ``log1p``. numpy's may
    differ from those in the last bits, so the winner is returned only when it beats every other
    candidate by more than ``margin (1 + |best|)`` (``1e-9`` in use: millions of ulps); otherwise
    -1, and numpy decides. ``high`` holds ``A`` floats, ``ub`` and ``scanned`` ``|P|`` each.
    """
    unseen = first_unseen(st, r, m) if st.n_unseen[r] > 0 else -1
    best = -1
    if unseen < 0:
        best = softmax_gumbel(st, r, x, m, u, first, tau, upper, lower, margin, high, ub, scanned)
    return unseen if unseen >= 0 else best


@helper
def softmax_gumbel(st, r, x, m, u, first, tau, upper, lower, margin, high, ub, scanned):
    """:func:`softmax_row` once no feasible arm is unseen: the Gumbel-max winner, or -1 (numpy's ``log`` decides)."""
    best = -1
    n_max = st.n_blocks.shape[2]
    threshold = softmax_scan(st, r, x, m, u, first, 1.0 / tau, upper, lower, high, ub, scanned)
    second = -np.inf
    best_l = -np.inf
    for p in range(st.n_blocks.shape[1]):
        if not scanned[p]:
            continue
        for k in range(m):
            a = p * n_max + k
            if high[a] >= threshold:
                val = st.mean[r, x, a] / tau
                val += -np.log(-np.log1p(-u[first + a]))  # numpy's operations, numba's log
                if best < 0 or val > best_l:
                    second = max(second, best_l)
                    best, best_l = a, val
                else:
                    second = max(second, val)
    if not best_l - second > margin * (1.0 + abs(best_l)):
        best = -1  # too close for numba's log to decide: numpy's will
    return best


@kernel
def softmax_candidates(st, live, ctx, limit, u, tau, upper, lower, out, cand, start):
    """Softmax's step, all but the exact logits: unseen arms first, else the arms that can win the Gumbel-max.

    Per live run ``i``: ``out[i]`` = the feasible unseen arm with the highest priority; or ``-2``
    when some arms are infeasible (the endgame: numpy scores that row); or ``-1`` and the row's
    candidates ``cand[start[i]:start[i + 1]]`` (ascending). With ``x = mean / tau`` and ``b`` the
    Gumbel bucket of ``u``, an arm's logit lies in ``[x + lower[b], x + upper[b]]`` up to a few
    ulps (``x`` is taken as ``mean * (1 / tau)``, within an ulp, to spare a division per arm); the
    candidates are the arms whose upper end reaches the best lower end, less
    ``1e-9 (64 + |best|)``, so the exact maximum and all its ties are among them. They are found by
    :func:`softmax_scan`, which passes over the prompts that cannot reach that bound.
    """
    n_max = st.n_blocks.shape[2]
    n_arms = st.countf.shape[1]
    n_prompts = st.n_blocks.shape[1]
    inv_tau = 1.0 / tau
    n_unseen = st.n_unseen
    high = np.empty(n_arms)
    ub = np.empty(n_prompts)
    scanned = np.empty(n_prompts, dtype=np.bool_)
    pos = 0
    for i in range(live.shape[0]):
        start[i] = pos
        r = live[i]
        m = limit[i]
        if n_unseen[r] > 0:
            best = first_unseen(st, r, m)
            if best >= 0:
                out[i] = best
                continue
        if m < n_max:
            out[i] = -2
            continue
        out[i] = -1
        threshold = softmax_scan(st, r, ctx[i], m, u[i], 0, inv_tau, upper, lower, high, ub, scanned)
        for p in range(n_prompts):
            if scanned[p]:
                for k in range(n_max):
                    a = p * n_max + k
                    if high[a] >= threshold:
                        cand[pos] = a
                        pos += 1
    start[live.shape[0]] = pos


@kernel
def first_max(logit, start, arm, out):
    """Per row ``i`` with ``out[i] == -1``: ``arm[j]`` of the first maximum of ``logit[start[i]:start[i + 1]]``."""
    for i in range(out.shape[0]):
        if out[i] != -1:
            continue
        best = start[i]
        for j in range(start[i] + 1, start[i + 1]):
            if logit[j] > logit[best]:
                best = j
        out[i] = arm[best]
