"""Compiled kernels of the sequential agents' step (UCB, epsilon-greedy, Softmax): the same bits as numpy.

Each kernel does for one step, row by row, what :mod:`iapo_gym.agents._sequential` does with
``(B, |P| N_max)`` numpy passes, reading the runs' state in place (no gathered copies):

* :func:`record` -- add one pull's nested sums per live run to its tallies and refresh that
  ``(run, prompt)`` row of the per-context means, counts, total and unseen count;
* :func:`step_mv` -- on a majority-voting table shared by the runs, the whole pull in one pass:
  completions by inverse CDF of the run's own uniforms (:meth:`iapo_gym.runs.RunBatch.step_draws`),
  the nested MV credits, costs and counts, then :func:`record`'s tallies and refresh;
* :func:`best_arm` -- the arm of UCB or of epsilon-greedy's greedy step: a feasible unseen arm
  first (highest priority), else the feasible argmax of the score with the priority tie-break;
* :func:`softmax_candidates` -- Softmax: the unseen-first rule, and for the other rows the few arms
  that can hold the Gumbel-max (bounds from a table of Gumbel values); numpy then computes those
  arms' logits exactly (its ``log``) and :func:`first_max` picks the winner.

Why the results are the same bits (the contract of :mod:`iapo_gym._jit`):

* element-wise ``+ - * /`` and ``sqrt`` are correctly rounded in both numba and numpy, and each
  kernel applies them to the same operands in the same order as the numpy code (no fused
  multiply-add: numba does not contract without ``fastmath``);
* the argmax is exact: a first pass ranks arms by a cheap *bound* of the score, a second pass
  computes the exact score (UCB: ``mean + sqrt(ln t / n) * c``) of every arm within a tolerance of
  the best bound -- far wider than the bound's error (a few ulps) -- so every arm whose exact score
  ties the maximum is among them, and among those the rule of ``argmax_tiebreak`` is applied
  (highest score, then highest priority, then lowest index);
* transcendental functions stay in numpy: ``ln t`` is computed per row by numpy and passed in, and
  Softmax's Gumbel noise ``-log(-log1p(-u))`` is computed by numpy for the candidate arms only (an
  element-wise function: the same bits whatever array the value sits in).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from iapo_gym._jit import kernel

#: Softmax's Gumbel table: ``u`` in ``[b / GUMBEL_BUCKETS, (b + 1) / GUMBEL_BUCKETS)`` bounds the
#: noise ``g(u) = -log(-log1p(-u))`` (decreasing in ``u``) by its values at the bucket's edges.
GUMBEL_BUCKETS = 4096


def gumbel_table() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(upper, lower)`` bounds of the Gumbel noise per bucket of ``u`` (numpy's own ``g`` at the edges)."""
    edges = np.arange(GUMBEL_BUCKETS + 1) / GUMBEL_BUCKETS
    with np.errstate(divide="ignore"):
        g = -np.log(-np.log1p(-edges))  # g(0) = +inf, g(1) = -inf
    return g[:-1].copy(), g[1:].copy()


@kernel
def record(gain_tab, cost_tab, count_tab, countf, invsqrt, total, n_unseen, mean,
           run, prompt, gain, count, cost, group, cost_weight):  # fmt: skip
    """Add pull ``i``'s sums (``gain (U, B, L)``, ``count``, ``cost (B, L)``) to cell ``(run[i], prompt[i])`` and refresh it.

    One pull per run (so per cell): the tallies take ``+=`` of the pull's own sums, and the cell's
    means under every context are ``(gain[group[c]] - cost_weight[c] * cost) / count``, exactly as
    the numpy refresh computes them. ``invsqrt`` (``1 / sqrt(count)``) feeds UCB's bound only
    (an empty array: not kept).
    """
    n_max = cost_tab.shape[2]
    n_u = gain.shape[0]
    keep_invsqrt = invsqrt.shape[0] > 0
    width = gain.shape[2]
    for i in range(run.shape[0]):
        r = run[i]
        p = prompt[i]
        base = p * n_max
        for k in range(width):
            old = count_tab[r, p, k]
            for u in range(n_u):
                gain_tab[r, u, p, k] += gain[u, i, k]
            cost_tab[r, p, k] += cost[i, k]
            new = old + count[i, k]
            count_tab[r, p, k] = new
            total[r] += count[i, k]
            if old == 0 and new > 0:
                n_unseen[r] -= 1
            countf[r, base + k] = np.float64(new)
        # the refreshed means: contiguous runs of k per context (simple loops that vectorise)
        for c in range(group.shape[0]):
            g = group[c]
            w = cost_weight[c]
            for k in range(width):
                mean[r, c, base + k] = (gain_tab[r, g, p, k] - w * cost_tab[r, p, k]) / countf[r, base + k]
        if keep_invsqrt:
            for k in range(width):
                invsqrt[r, base + k] = 1.0 / np.sqrt(countf[r, base + k])


@kernel
def step_mv(probs, gold, unit_cost, prompt, query, n, u, start, weight, lut,  # noqa: C901 (one fused pass)
            gain_tab, cost_tab, count_tab, countf, invsqrt, total, n_unseen, mean, run, group, cost_weight):  # fmt: skip
    """One pull per run on a majority-voting table, drawn, scored and recorded in one pass: :meth:`pull` + :func:`record`.

    Pull ``i`` (run ``run[i]``, ``n[i]`` completions of ``prompt[i]`` on ``query[i]``) takes its
    completions by inverse CDF of ``u[start[i]:]`` (the running sum of the answer probabilities, as
    the sampler's, the last set to 1: comparisons only). Its nested sums per block size ``k`` are
    those of the engine: the MV credit ``lut[ties]`` of every block gold wins (no answer has more
    votes; ``ties`` answers have as many) summed over the ``n // k`` blocks (exact in float64 in any
    order), times the objective weight; the cost of the first ``(n // k) k`` completions as a
    running sum of the unit cost; the count ``n // k``. Then :func:`record`'s tallies and refresh.
    """
    n_max = cost_tab.shape[2]
    n_u = weight.shape[0]
    a_n = probs.shape[2]
    keep_invsqrt = invsqrt.shape[0] > 0
    cdf = np.empty(a_n)
    votes = np.zeros((n_max + 1, a_n), dtype=np.int64)
    csum = np.zeros(n_max + 1)
    for i in range(run.shape[0]):
        r = run[i]
        p = prompt[i]
        q = query[i]
        nb = n[i]
        g0 = gold[q]
        acc = 0.0
        for c in range(a_n):
            acc += probs[p, q, c]
            cdf[c] = acc
        c0 = unit_cost[p, q]
        for j in range(nb):
            x = u[start[i] + j]
            o = 0
            for c in range(a_n - 1):  # the last cdf entry is 1.0: never passed
                o += x >= cdf[c]
            rel = (o - g0) % a_n  # 0: gold
            for c in range(a_n):
                votes[j + 1, c] = votes[j, c]
            votes[j + 1, rel] += 1
            csum[j + 1] = csum[j] + c0
        base = p * n_max
        for k in range(1, nb + 1):
            m = nb // k
            credit = 0.0
            for s in range(0, m * k, k):
                g = votes[s + k, 0] - votes[s, 0]
                ties = 0
                won = True
                for c in range(1, a_n):
                    v = votes[s + k, c] - votes[s, c]
                    if v > g:
                        won = False
                        break
                    if v == g:
                        ties += 1
                if won:
                    credit += lut[ties]
            kk = k - 1
            old = count_tab[r, p, kk]
            for w in range(n_u):
                gain_tab[r, w, p, kk] += weight[w] * credit
            cost_tab[r, p, kk] += csum[m * k]
            new = old + m
            count_tab[r, p, kk] = new
            total[r] += m
            if old == 0 and new > 0:
                n_unseen[r] -= 1
            countf[r, base + kk] = np.float64(new)
        for c in range(group.shape[0]):
            gg = group[c]
            wc = cost_weight[c]
            for kk in range(nb):
                mean[r, c, base + kk] = (gain_tab[r, gg, p, kk] - wc * cost_tab[r, p, kk]) / countf[r, base + kk]
        if keep_invsqrt:
            for kk in range(nb):
                invsqrt[r, base + kk] = 1.0 / np.sqrt(countf[r, base + kk])


@kernel
def best_arm(mean, countf, invsqrt, n_unseen, priority, live, ctx, limit, logt, c, ucb, skip, n_max, scratch, out):  # noqa: C901 (one fused pass)
    """Per live run ``i`` (run ``live[i]``, context ``ctx[i]``): UCB's arm (``ucb``) or the greedy one, into ``out[i]``.

    Rows with ``skip[i]`` are left alone. Unseen feasible arms come first (the highest priority).
    Otherwise the feasible argmax of the score -- UCB: ``mean + sqrt(logt / count) * c``; greedy:
    ``mean`` -- ties going to the highest priority, then the lowest index. Rows whose every arm is
    feasible and seen (all but the first sweep and the endgame) rank by a bound first: greedy's is
    the mean itself (two passes: the maximum, then its ties); UCB's is ``mean + c sqrt(logt) *
    (1 / sqrt(count))`` (one product per arm, no division or root), and only arms within
    ``1e-12 (|best| + c sqrt(logt))`` of the best bound -- a thousand times the bound's error --
    get their exact score. ``scratch`` holds ``|P| N_max`` floats.
    """
    n_arms = mean.shape[2]
    n_prompts = n_arms // n_max
    for i in range(live.shape[0]):
        if skip[i]:
            continue
        r = live[i]
        x = ctx[i]
        m = limit[i]
        if n_unseen[r] > 0:  # a feasible unseen arm: the one with the highest priority
            best = -1
            best_p = -1.0
            for p in range(n_prompts):
                for k in range(m):
                    a = p * n_max + k
                    if countf[r, a] == 0.0 and priority[r, a] > best_p:
                        best_p = priority[r, a]
                        best = a
            if best >= 0:
                out[i] = best
                continue
        lt = logt[i]
        best = -1
        best_s = -np.inf
        best_p = -1.0
        if m < n_max:  # the endgame: exact scores of the feasible arms (all seen)
            for p in range(n_prompts):
                for k in range(m):
                    a = p * n_max + k
                    s = mean[r, x, a]
                    if ucb:
                        s = s + np.sqrt(lt / countf[r, a]) * c
                    if best < 0 or s > best_s or (s == best_s and priority[r, a] > best_p):
                        best, best_s, best_p = a, s, priority[r, a]
            out[i] = best
            continue
        # every arm feasible and seen: a bound per arm, its maximum, then the exact scores near it
        tol = 0.0
        beta = 0.0
        bound = mean[r, x]  # greedy: the mean is its own bound
        if ucb:
            beta = np.sqrt(lt) * c
            for a in range(n_arms):
                scratch[a] = mean[r, x, a] + beta * invsqrt[r, a]
            bound = scratch
        m0 = m1 = m2 = m3 = -np.inf  # four running maxima: independent chains the CPU overlaps
        a = 0
        while a + 3 < n_arms:
            m0 = max(m0, bound[a])
            m1 = max(m1, bound[a + 1])
            m2 = max(m2, bound[a + 2])
            m3 = max(m3, bound[a + 3])
            a += 4
        while a < n_arms:
            m0 = max(m0, bound[a])
            a += 1
        top = max(max(m0, m1), max(m2, m3))
        if ucb:
            tol = 1e-12 * (abs(top) + beta)
        threshold = top - tol
        for a in range(n_arms):
            if bound[a] >= threshold:
                s = bound[a]
                if ucb:
                    s = mean[r, x, a] + np.sqrt(lt / countf[r, a]) * c
                if best < 0 or s > best_s or (s == best_s and priority[r, a] > best_p):
                    best, best_s, best_p = a, s, priority[r, a]
        out[i] = best


@kernel
def softmax_candidates(mean, countf, n_unseen, priority, live, ctx, limit, u, tau, upper, lower, n_max, out, cand, start):  # noqa: C901
    """Softmax's step, all but the exact logits: unseen arms first, else the arms that can win the Gumbel-max.

    Per live run ``i``: ``out[i]`` = the feasible unseen arm with the highest priority; or ``-2``
    when some arms are infeasible (the endgame: numpy scores that row); or ``-1`` and the row's
    candidates ``cand[start[i]:start[i + 1]]`` (ascending). With ``x = mean / tau`` and ``b`` the
    Gumbel bucket of ``u``, an arm's logit lies in ``[x + lower[b], x + upper[b]]`` up to a few
    ulps (``x`` is taken as ``mean * (1 / tau)``, within an ulp, to spare a division per arm); the
    candidates are the arms whose upper end reaches the best lower end, less
    ``1e-9 (64 + |best|)``, so the exact maximum and all its ties are among them.
    """
    n_arms = mean.shape[2]
    n_prompts = n_arms // n_max
    n_buckets = upper.shape[0]
    inv_tau = 1.0 / tau
    high = np.empty(n_arms)
    pos = 0
    for i in range(live.shape[0]):
        start[i] = pos
        r = live[i]
        x = ctx[i]
        m = limit[i]
        if n_unseen[r] > 0:
            best = -1
            best_p = -1.0
            for p in range(n_prompts):
                for k in range(m):
                    a = p * n_max + k
                    if countf[r, a] == 0.0 and priority[r, a] > best_p:
                        best_p = priority[r, a]
                        best = a
            if best >= 0:
                out[i] = best
                continue
        if m < n_max:
            out[i] = -2
            continue
        out[i] = -1
        floor = -np.inf
        for a in range(n_arms):
            x_a = mean[r, x, a] * inv_tau  # within an ulp of mean / tau: far inside the tolerance
            b = int(u[i, a] * n_buckets)
            high[a] = x_a + upper[b]
            low = x_a + lower[b]
            if low > floor:
                floor = low
        threshold = floor - 1e-9 * (64.0 + abs(floor)) if floor > -np.inf else floor
        for a in range(n_arms):
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
