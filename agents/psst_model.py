"""PSST-Model: model-based estimation of every arm from per-query outcome counts, paired prompt halving.

**This agent uses query-controlled pulls** (``uses_query_control = True``, as
:mod:`iapo_gym.agents.psst_paired`): it names the training query of every pull.

Why a model: ``Q(c, p, N)`` is a *known* function of the per-query outcome distributions. For
majority voting, ``Q(c, p, N) = w_1 E_q[credit_N(pi_{p,q})] - w_cost N cost_p`` with ``credit_N``
the exact tie-aware MV credit of ``N`` i.i.d. votes from the answer distribution ``pi_{p,q}``
(:func:`iapo_gym.oracle.mv_credit`); for Best-of-N, ``E_q[E max of N draws of w . v]``
(:func:`iapo_gym.oracle.bon_expected_max`). PSST learns each ``(p, N)`` from disjoint nested
blocks, so an ``N = 32`` arm needs whole 32-completion pulls. Here every completion of a prompt on
a query updates that query's outcome counts, and the counts inform **every** ``N`` at once through
the plug-in ``credit_N(counts / m)``, bias-corrected by the jackknife
``m f(c / m) - (m - 1) mean_i f(c_{-i} / (m - 1))`` (first-order bias ``O(1/m)`` -> ``O(1/m^2)``;
leave-one-out per observed category, so ``1 + A`` exact evaluations per distinct count vector).
Count vectors repeat massively (small ``m``, few categories), so each distinct one is evaluated
once. For binary majority voting (two answer categories) the per-query plug-in is replaced by an
empirical-Bayes estimate (:func:`npmle_binary_q`): the distribution of the success probability
across a prompt's queries, by nonparametric maximum likelihood, pushed through the exact credit.
For Best-of-N (``bon_eb``, :mod:`iapo_gym.agents._bon_eb`) a query's outcome probabilities get a
Dirichlet prior fitted per prompt and the outcomes not yet drawn get scores from the prompt's
pooled within-query shape, shifted to the query: three draws per query no longer ignore the half
of a pool's mass they miss (Synth-Categorical tuning seeds, ``T = 5,000``: 0.0134 -> 0.0079).

Each estimate carries a standard error: the spread across queries of the per-query values over
the square root of their number (for the empirical-Bayes estimate, the larger of that of the
plug-in and that of the per-query posterior means, :func:`npmle_binary_q_var`). For ``bon_eb`` it is
the spread of the per-query posterior values alone, which under-states a large-``N`` error by
1.05-1.5x on Synth-Categorical; with the plug-in's spread (calibrated, z-scores' standard deviation
1.05-1.11) the drop acts later and lost at every budget on the tuning seeds (``T = 5,000``: 0.0091
against 0.0079). Two uses:

* **confident drop** (``drop_z``, Best-of-N by default): after a halving, a prompt whose best arm
  is more than ``drop_z`` combined standard errors below the leader in *every* context is dropped
  as well (:func:`confidently_worse`). The union halving alone keeps almost every prompt when
  contexts are many (Synth-Categorical's 27: 20 of 32 prompts survive every round at
  ``T = 20,000``). The drop is a test, valid only where the leader's standard error is. The
  Best-of-N estimates are conservative at large ``N``: after the first round, a best arm reads more
  than two standard errors above its exact train value in about 3 % of cases. The binary NPMLE
  extrapolates its large-``N`` arms from two to four votes per query: 23-29 % at ``N >= 9`` on
  Synth-Bernoulli, where the drop removed a train-best prompt in 15 % of runs. Majority voting
  therefore halves only (``drop_z = 0``);
* **shrinkage across prompts** (``shrink``, the empirical-Bayes estimates only): per run and
  ``N``, the prompts' values are replaced by their posterior means under a prior fitted to all of
  the run's prompts (:func:`eb_shrink`, a Gaussian-noise NPMLE). Prompts within noise of each other
  (Synth-Bernoulli's six "consistent" prompts, which differ mainly in their exactly known cost)
  are drawn together, so the cost decides between them instead of the noise. On the plug-in
  estimates (MATH, Synth-Categorical) it lost on the tuning seeds (MATH T = 20,000: 0.018 ->
  0.028): their large-``N`` errors are far larger than their small-``N`` ones, so shrinking per
  ``N`` moves the choice of ``N``.

The loop (all seeds of a batch at once) is the zoo's round loop
(:func:`iapo_gym.agents._rounds.run_rounds`) with :class:`PairedModelAllocation`:

* ``R = ceil(log2 |P|)`` rounds (at least 2; ``extra_rounds`` adds more) with budgets growing by
  ``growth`` per round, PSST's carry-forward, and never more than ``T``;
* round ``r`` takes the next ``q_r`` queries of the run's seeded walk through its train split
  (:class:`iapo_gym.agents.psst_paired.QuerySchedule`) and pulls **every** surviving prompt
  ``m_r`` times on **each** of them, ``m_r = max(m, min(m 2^r, N_max, floor(avail / (|S_r|
  min_queries))))``: ``m`` doubles every round, but only as far as the round still affords
  ``min_queries`` common queries (breadth over queries first, depth per query once the survivors
  are few or the budget is large); ``m`` is 2 for majority voting and 3 for Best-of-N by default,
  and at least ``eb_m = 4`` from the second round on once the answers are known to be binary (the
  empirical-Bayes estimator needs the votes' spread within a query, not only across queries);
  ``q_r = floor(avail / (|S_r| m_r))``; a round that affords no query shrinks ``m_r`` to fit one
  query, and pulls nothing below one completion per survivor). All survivors therefore share one
  query design, so comparisons between them are paired: the query effect cancels;
* **Neyman rounds** (``neyman``, opt-in; majority voting with the plug-in, i.e. more than two
  answers): a round after the first that affords every query of the run's train split (``q_r >=
  |train|``, SmolArith's 19 queries from ``T = 400``) is no longer spread evenly. A prompt's value on the
  train split is then a fixed average over known queries whose only error is the votes', so the
  round's ``|S_r| q_r m_r`` completions go to the (surviving prompt, query) cells by Neyman's rule:
  ``m`` each and the rest in proportion to each cell's per-completion standard deviation
  (:func:`jackknife_mv_credit_var` at the prompt's best ``N`` of each context, the largest). A
  query every prompt answers the same way (always right, never right) costs ``m`` votes, a query
  at a vote's tipping point gets many. It learns the train split better but does not lower the
  test regret (below), so it is off by default;
* per context, each surviving prompt is scored by its best arm ``max_N Qhat(c, p, N)``; a prompt
  survives a round if it ranks in the top ``floor(n / 2)`` (at least one) of *some* context and
  is not confidently worse than the leader in every context (above; on Best-of-N tasks the trim
  before the last round uses ``final_drop_z = 0.5`` instead of ``drop_z``, so the last round is
  spent on the near-ties of each context's leader);
* the deployed arm of a context is the surviving ``(p, N)`` with the highest ``Qhat``; for the
  empirical-Bayes estimates (binary answers, Best-of-N) the highest ``Qhat + deploy_z sd`` with
  ``deploy_z = 1`` (:func:`deployment_scores`): they are conservative where they are uncertain
  (the large-``N`` arms, whose values the deconvolution shrinks towards the prior's mass near the
  vote's tipping point / the pooled shape's contracted order statistics), so the plain argmax
  prefers the small-``N`` arms of lucky survivors (Synth-Bernoulli's deceptive prompts) over
  large-``N`` arms of prompts that are better. For binary answers the score also subtracts
  ``query_z = 1`` times the estimate's standard error over the run's train queries alone (the
  spread of the per-query posterior credits, ``PlugInSums.sd_query``): the deployed arm is judged
  on other queries, and an arm whose credit swings from query to query (a deceptive prompt, right on
  most queries and wrong on the rest) is known less well from the train split than one that is
  uniformly good.

Cost per completion is the observed mean cost of the prompt's completions (the tables' cost is
deterministic per (prompt, query), so this is exact on the queries seen).

Speed: the hot loops (the shrinkage's EM, the Best-of-N jackknife, the running sums) have numba
kernels (:mod:`iapo_gym._jit`, the ``fast`` extra) that give their numpy twins' bits; the numpy
code is the reference and runs without numba.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from iapo_gym import _jit, oracle
from iapo_gym._portable_math import exp as portable_exp
from iapo_gym.agents._bon_eb import eb_bon_expected_max, fit_dirichlet_concentration
from iapo_gym.agents._common import BatchAgent, table_policies
from iapo_gym.agents._rounds import Rows, run_rounds
from iapo_gym.agents.base import Policy
from iapo_gym.agents.psst_paired import QuerySchedule
from iapo_gym.runs import RunBatch
from iapo_gym.sampling import Pulls

__all__ = [
    "CountStats",
    "PSSTModel",
    "PairedModelAllocation",
    "MVCreditMemo",
    "shared_memo",
    "PlugInSums",
    "best_arms_and_errors",
    "confidently_worse",
    "deployment_scores",
    "eb_shrink",
    "jackknife_bon_max",
    "jackknife_mv_credit",
    "npmle_binary_q",
    "npmle_binary_q_var",
]


# ------------------------------------------------------------------------------ count tallies
class CountStats:
    """Per (run, prompt, train column) outcome counts, observed outcome values and costs.

    Arrays (allocated at the first pulls): ``counts (S, P, W, A)`` int32 (``W`` the widest train split, ``A`` answer categories
    or BoN outcomes), ``gold (S, W)`` (MV; -1 unseen), ``values (S, P, W, A, K)`` float32 (BoN:
    the objective values of each observed outcome), ``cost (S, P)`` summed completion costs and
    ``completions (S, P)``.
    """

    def __init__(self, n_runs: int, n_prompts: int, width: int, n_objectives: int, strategy: str) -> None:
        self.strategy = strategy
        self.n_objectives = int(n_objectives)
        # the number of answer categories / outcomes is learnt from the first pulls (a deployment
        # sees it in its completions, not in a table), so the count arrays are allocated then
        self.shape = (int(n_runs), int(n_prompts), int(width), 0)
        self.counts = np.zeros(self.shape, dtype=np.int32)
        self.gold = np.full((n_runs, width), -1, dtype=np.int64)
        self.values: NDArray[np.float32] | None = None
        self.cost = np.zeros((n_runs, n_prompts))
        self.completions = np.zeros((n_runs, n_prompts), dtype=np.int64)

    def _allocate(self, n_outcomes: int) -> None:
        s_n, p_n, w_n, _ = self.shape
        self.shape = (s_n, p_n, w_n, int(n_outcomes))
        self.counts = np.zeros(self.shape, dtype=np.int32)
        if self.strategy == "bon":
            self.values = np.zeros(self.shape + (self.n_objectives,), dtype=np.float32)

    def add(self, pulls: Pulls, run: NDArray[np.int64], col: NDArray[np.int64]) -> None:
        """Record every completion of ``pulls`` (row ``b`` belongs to run ``run[b]``, train column ``col[b]``)."""
        if len(pulls) == 0:
            return
        if self.shape[3] == 0:
            self._allocate(int(pulls.n_categories))
        s_n, p_n, w_n, a_n = self.shape
        draw = pulls.pending_draw
        if draw is not None and self.strategy == "mv" and pulls.unit_cost is not None and 0 < pulls.width <= 128:
            # compiled, reading the draw itself (no (B, L) outcome and mask arrays); only the compiled
            # path leaves a draw pending (:func:`iapo_gym.sampling.draw_pulls`)
            u, start, cdf, cdf_p, cdf_q = draw
            self.gold[run, col] = pulls.gold
            cost = np.zeros(s_n * p_n)
            _add_drawn_counts(
                self.counts.reshape(-1), cost, self.completions.reshape(-1), (run * p_n + pulls.prompt) * w_n + col,
                run * p_n + pulls.prompt, pulls.n.astype(np.int64, copy=False), u, start, cdf, cdf_p, cdf_q,
                pulls.unit_cost, pulls.width,
            )
            self.cost.reshape(-1)[:] += cost
            return
        mask = pulls.mask
        b_idx, slot = np.nonzero(mask)
        out = pulls.outcome[b_idx, slot]
        cell = (run[b_idx] * p_n + pulls.prompt[b_idx]) * w_n + col[b_idx]
        flat = cell * a_n + out
        if _jit.enabled():  # one increment per completion, in place (integer counts: the same values)
            _add_counts(self.counts.reshape(-1), flat)
        else:
            self.counts.reshape(-1)[:] += np.bincount(flat, minlength=self.counts.size).astype(np.int32)
        if self.strategy == "mv":
            self.gold[run, col] = pulls.gold
        else:
            assert self.values is not None  # allocated with the first pulls of a BoN task
            vals = self.values.reshape(-1, self.values.shape[-1])
            vals[flat] = pulls.values[b_idx, slot]
        rp = run * p_n + pulls.prompt
        self.cost.reshape(-1)[:] += np.bincount(rp, weights=np.where(mask, pulls.cost, 0.0).sum(axis=1), minlength=s_n * p_n)
        self.completions.reshape(-1)[:] += np.bincount(rp, weights=pulls.n, minlength=s_n * p_n).astype(np.int64)

    def gold_first(self, s_i: NDArray[np.int64], p_i: NDArray[np.int64], w_i: NDArray[np.int64]) -> NDArray[np.int64]:
        """Majority voting: the counts ``(R, A)`` of the given cells, gold category first, the others sorted down."""
        counts = self.counts[s_i, p_i, w_i].astype(np.int64)
        a_n = counts.shape[1]
        gold = self.gold[s_i, w_i]  # -1 (unseen) reads the last category: 0, as every count of the cell
        own = counts[np.arange(counts.shape[0]), gold]
        others = np.where(np.arange(a_n)[None, :] == gold[:, None], -1, counts)
        others = -np.sort(-others, axis=1)[:, : a_n - 1]
        return np.concatenate([own[:, None], np.maximum(others, 0)], axis=1)


@_jit.kernel
def _add_counts(counts, flat):  # noqa: ANN001, ANN202
    """Compiled twin of :meth:`CountStats.add`'s count update: ``counts[flat[i]] += 1`` for every ``i``.

    The numpy path counts ``flat`` with a ``bincount`` as long as the whole count array (``S P W A``
    cells: 6.3 M for 200 runs on MATH) and adds it; this touches only the completions' cells.
    """
    for i in range(flat.shape[0]):
        counts[flat[i]] += 1


@_jit.kernel
def _add_drawn_counts(counts, cost, completions, cell, rp, n, u, start, cdf, cdf_p, cdf_q, unit_cost, width):  # noqa: ANN001, ANN202
    """Compiled :meth:`CountStats.add` of MV pulls whose outcomes are still a pending draw: the same counts and bits.

    Completion ``j`` of row ``b`` is the outcome of ``u[start[b] + j]`` under the cumulative
    probabilities ``cdf[cdf_p[b], cdf_q[b]]`` (its count of passed thresholds, as
    :func:`iapo_gym.sampling._outcomes_flat_kernel` counts them) and adds one to the count of its
    cell ``cell[b]``; ``completions[rp[b]] += n[b]``. ``cost[rp[b]]`` (zeros, added to the running
    costs by the caller, as the numpy path adds its ``bincount``) sums the rows' costs in row
    order, each row's cost as numpy sums the padded row ``(c, ..., c, 0, ..., 0)`` (``n[b]`` copies
    of ``unit_cost[b]``, ``width`` entries): pairwise, i.e. for ``width >= 8`` eight running sums
    over the blocks of eight, combined as a tree, then the rest in order (``width <= 128``).
    """
    a_n = cdf.shape[2]
    a1 = a_n - 1
    r8 = np.empty(8)
    for b in range(n.shape[0]):
        base = cell[b] * a_n
        nb = n[b]
        s0 = start[b]
        pb, qb = cdf_p[b], cdf_q[b]
        for j in range(nb):
            x = u[s0 + j]
            o = 0
            for c in range(a1):
                o += x >= cdf[pb, qb, c]
            counts[base + o] += 1
        c_b = unit_cost[b]
        if width < 8:
            s = 0.0
            for i in range(width):
                s += c_b if i < nb else 0.0
        else:
            for i in range(8):
                r8[i] = c_b if i < nb else 0.0
            i = 8
            while i < width - width % 8:
                for k in range(8):
                    r8[k] += c_b if i + k < nb else 0.0
                i += 8
            s = ((r8[0] + r8[1]) + (r8[2] + r8[3])) + ((r8[4] + r8[5]) + (r8[6] + r8[7]))
            while i < width:
                s += c_b if i < nb else 0.0
                i += 1
        cost[rp[b]] += 0.0 + s
        completions[rp[b]] += nb


# ------------------------------------------------------------------------- bias-corrected plug-in
def _unique_int_rows(rows: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``np.unique(rows, axis=0, return_inverse=True)`` for non-negative integer rows, the same result.

    ``np.unique`` along an axis sorts the rows as structured records (about 0.3 s per call for a
    200-run batch on MATH at T = 50,000, 45 % of ``psst_model``'s fit); the rows are instead read as
    one mixed-radix integer each (the first column the most significant digit, base ``max + 1``), whose
    numeric order is the rows' lexicographic order, so the distinct rows come out in the same order.
    Rows whose key would not fit in 63 bits take ``np.unique`` itself.
    """
    r_n, a_n = rows.shape
    base = int(rows.max()) + 1 if rows.size else 1
    if r_n == 0 or int(rows.min()) < 0 or a_n * np.log2(max(base, 2)) >= 62:
        uniq, inverse = np.unique(rows, axis=0, return_inverse=True)
        return uniq, inverse.reshape(-1)
    key = rows[:, 0].astype(np.int64)
    for j in range(1, a_n):
        key = key * base + rows[:, j]
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return rows[first], inverse.reshape(-1)


def _gold_first(counts: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``(uniq, inverse)``: the distinct rows of gold-first ``counts`` and each row's index among them.

    The non-gold counts are sorted (the credit is symmetric in them), and categories never voted
    for in any row are dropped: they contribute nothing (tasks with many answers).
    """
    c = np.concatenate([counts[:, :1], -np.sort(-counts[:, 1:], axis=1)], axis=1)
    width = max(2, int((c > 0).sum(axis=1).max()) + 1)
    return _unique_int_rows(c[:, : min(width, c.shape[1])])


def _leave_one_out(
    sub: NDArray[np.int64], msub: NDArray[np.int64]
) -> tuple[list[tuple[int, NDArray[np.bool_]]], list[NDArray[np.float64]]]:
    """The distributions ``(c - e_a) / (m - 1)`` of count rows ``sub`` (totals ``msub >= 2``), one block per category ``a``.

    Returns ``(kept, rows)``: for every category some row voted for, ``(a, has)`` (the rows that did)
    and the block of their leave-one-out distributions (A is small: a loop over categories).
    """
    kept, rows = [], []
    for a in range(sub.shape[1]):
        has = sub[:, a] > 0
        if has.any():
            red = sub[has].copy()
            red[:, a] -= 1
            rows.append(red / (msub[has] - 1)[:, None])
            kept.append((a, has))
    return kept, rows


def _leave_one_out_moments(
    credit: NDArray[np.float64],
    start: int,
    kept: list[tuple[int, NDArray[np.bool_]]],
    sub: NDArray[np.int64],
    msub: NDArray[np.int64],
    squares: bool = False,
) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
    """``(mean, mean of squares or None)`` ``(R, n_max)`` over each row's ``m`` leave-one-out credits.

    ``credit[start:]`` holds the credits of :func:`_leave_one_out`'s blocks, in order; a row's
    completions of category ``a`` share one credit, weighted ``c_a / m``.
    """
    loo = np.zeros((sub.shape[0], credit.shape[1]))
    loo2 = np.zeros_like(loo) if squares else None
    for a, has in kept:
        f = credit[start : start + int(has.sum())]
        start += int(has.sum())
        share = (sub[has, a] / msub[has])[:, None]
        loo[has] += share * f
        if loo2 is not None:
            loo2[has] += share * f * f
    return loo, loo2


def jackknife_mv_credit_var(counts: NDArray[np.int64], n_max: int) -> NDArray[np.float64]:
    """Per-completion jackknife variance ``(R, n_max)`` of the MV credit's plug-in, from gold-first counts ``(R, A)``.

    ``m var_jk`` with ``var_jk = (m - 1) / m sum_i (f_(-i) - mean_j f_(-j))^2`` over a row's ``m``
    leave-one-out plug-in credits (the completions of one category share theirs): an estimate of
    ``m Var[credit estimate]``, what :class:`PairedModelAllocation`'s Neyman rounds spread their
    completions by. 0 where a row holds one completion or votes for one category only.
    """
    c = np.asarray(counts, dtype=np.int64)
    var = np.zeros((c.shape[0], n_max))
    if c.shape[0] == 0:
        return var
    uniq, inverse = _gold_first(c)
    m = uniq.sum(axis=1)
    ok = m >= 2
    sub, msub = uniq[ok], m[ok]
    if sub.shape[0] == 0:
        return var
    kept, rows = _leave_one_out(sub, msub)
    flat = np.concatenate(rows)
    credit = oracle.mv_credit(flat, np.zeros(flat.shape[0], np.int64), n_max)
    loo, loo2 = _leave_one_out_moments(credit, 0, kept, sub, msub, squares=True)
    assert loo2 is not None
    out = np.zeros((uniq.shape[0], n_max))
    out[ok] = (msub * (msub - 1))[:, None] * np.maximum(loo2 - loo * loo, 0.0)
    return out[inverse]


def jackknife_mv_credit(counts: NDArray[np.int64], n_max: int, jackknife: bool = True) -> NDArray[np.float64]:
    """Bias-corrected plug-in estimate of the MV credit ``(R, n_max)`` from gold-first counts ``(R, A)``.

    Row ``r`` holds the vote counts of ``m_r = counts[r].sum() >= 1`` i.i.d. completions on one
    query, gold category first. The plug-in is ``credit_N(counts / m)`` (exact,
    :func:`iapo_gym.oracle.mv_credit`); with ``jackknife`` (and ``m >= 2``) it becomes
    ``m f(c/m) - (m - 1) sum_a (c_a / m) f((c - e_a) / (m - 1))``. Distinct count rows (after
    sorting the non-gold counts, which the credit is symmetric in) are evaluated once.
    """
    c = np.asarray(counts, dtype=np.int64)
    if c.shape[0] == 0:
        return np.zeros((0, n_max))
    uniq, inverse = _gold_first(c)
    m = uniq.sum(axis=1)
    jk = (m >= 2) if jackknife else np.zeros(m.shape, dtype=bool)
    sub, msub = uniq[jk], m[jk]
    # every distribution the estimate reads -- each row's c / m, and with the jackknife each
    # (c - e_a) / (m - 1) -- in one exact evaluation: the oracle computes each distinct row once
    # (a leave-one-out row is often another row's own) and every row's credit on its own
    kept, loo_rows = _leave_one_out(sub, msub)
    rows = [uniq / m[:, None], *loo_rows]
    flat = np.concatenate(rows) if len(rows) > 1 else rows[0]
    credit = oracle.mv_credit(flat, np.zeros(flat.shape[0], np.int64), n_max)
    base = credit[: uniq.shape[0]]
    if not jk.any():
        return base[inverse]
    est = base.copy()
    loo, _ = _leave_one_out_moments(credit, uniq.shape[0], kept, sub, msub)
    est[jk] = msub[:, None] * base[jk] - (msub - 1)[:, None] * loo
    return est[inverse]


def jackknife_bon_max(
    scores: NDArray[np.float64], counts: NDArray[np.int64], n_max: int, jackknife: bool = True
) -> NDArray[np.float64]:
    """Bias-corrected plug-in ``E[max of N draws]`` ``(R, n_max)`` from outcome ``scores (R, M)`` and ``counts (R, M)``.

    The plug-in draws from the empirical distribution ``counts / m``:
    ``E = s_(M) - sum_{j<M} (s_(j+1) - s_(j)) F_j^N`` over the scores sorted ascending with
    empirical cumulative shares ``F_j`` (the oracle's formula; outcomes never observed have share
    0, so they never count as the maximum). The jackknife is as in :func:`jackknife_mv_credit`:
    leaving one completion of the outcome at sorted position ``i`` out lowers ``F_j`` for
    ``j >= i`` by ``1 / (m - 1)`` after rescaling. Each ``F`` takes only two values per ``j``
    across the ``M`` left-out positions (``C_j / (m - 1)`` for ``j < i``, ``(C_j - 1) / (m - 1)``
    for ``j >= i``), so the ``M`` leave-one-out sums are a prefix sum of the first kind of terms
    plus a suffix sum of the second: ``O(M N)`` per row instead of ``O(M^2 N)``.

    Every sum runs in a fixed order (over ``j``, then over ``i``), in the numpy path (rows in
    blocks, vectorised over rows and ``N``) and in the compiled one (row by row), so both give the
    same bits.
    """
    sc = np.asarray(scores, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    r_n, m_n = sc.shape
    out = np.empty((r_n, n_max))
    if r_n == 0 or n_max == 0:
        return out
    order = np.argsort(sc, axis=1, kind="stable")
    st = np.take_along_axis(sc, order, axis=1)
    ct = np.take_along_axis(c, order, axis=1)
    cum = np.cumsum(ct, axis=1)  # (R, M)
    ds = np.diff(st, axis=1)  # (R, M - 1)
    top = st[:, -1]
    if _jit.enabled():
        _bon_rows(cum, ct, ds, top, int(n_max), bool(jackknife), out)
        return out
    step = max(1, BON_BLOCK_ELEMENTS // (3 * m_n * n_max))
    for lo in range(0, r_n, step):
        hi = min(lo + step, r_n)
        out[lo:hi] = _bon_block(cum[lo:hi].T, ct[lo:hi].T, ds[lo:hi].T, top[lo:hi], n_max, jackknife)
    return out


#: Rows of :func:`jackknife_bon_max`'s numpy path per block: ``(n_max, 3, M, B)`` arrays of about this many elements.
BON_BLOCK_ELEMENTS = 1 << 17


def _bon_block(
    cum: NDArray[np.float64], ct: NDArray[np.float64], ds: NDArray[np.float64], top: NDArray[np.float64], n_max: int,
    jackknife: bool,
) -> NDArray[np.float64]:
    """:func:`jackknife_bon_max` on one block of sorted rows, transposed ``(M, B)`` (the numpy path).

    Rows are the last axis, so every operation is one vectorised pass over a ``(B,)`` or
    ``(n_max, B)`` slab; the sums over ``j`` and ``i`` are loops over those slabs, first term
    first, exactly as :func:`_bon_rows` runs them per row.
    """
    m_n, b_n = cum.shape
    j_n = m_n - 1
    m = cum[-1]
    est = np.broadcast_to(top, (n_max, b_n)).copy()
    if not jackknife:
        x = (cum[:-1] / m)[None]
    else:
        den = np.maximum(m - 1.0, 1.0)
        x = np.stack([cum[:-1] / m, np.clip((cum[:-1] - 1.0) / den, 0.0, 1.0), np.clip(cum[:-1] / den, 0.0, 1.0)])
    # F^1 .. F^N of the plug-in shares (0), and of the leave-one-out shares at j >= i (1) and j < i (2)
    terms = np.empty((n_max,) + x.shape)
    terms[0] = x
    for n in range(1, n_max):
        np.multiply(terms[n - 1], x, out=terms[n])
    terms *= ds  # (N, 3, M - 1, B): (s_(j+1) - s_(j)) F_j^N
    if j_n:
        base = terms[:, 0, 0].copy()
        for jj in range(1, j_n):
            base += terms[:, 0, jj]
        est -= base
    if not jackknife:
        return est.T
    w = ct / m  # weight of leaving out sorted position i
    suffix = np.zeros((n_max, b_n))  # terms j >= i of the first kind, summed from the top
    inner = np.empty((m_n, n_max, b_n))
    inner[j_n] = suffix
    for i in range(j_n - 1, -1, -1):
        suffix = terms[:, 1, i] + suffix
        inner[i] = suffix
    prefix = np.zeros((n_max, b_n))  # terms j < i of the second kind
    loo = w[0] * (prefix + inner[0])
    for i in range(1, m_n):
        prefix = prefix + terms[:, 2, i - 1]
        loo += w[i] * (prefix + inner[i])
    jk = m * est - (m - 1.0) * (top - loo)
    return np.where(m >= 2, jk, est).T


@_jit.kernel
def _bon_rows(cum, ct, ds, top, n_max, jackknife, out):  # noqa: C901  # numba kernel of _bon_block: one loop nest
    r_n, m_n = cum.shape
    j_n = m_n - 1
    terms = np.empty((3, max(j_n, 1), n_max))
    suffix = np.empty(n_max)
    prefix = np.empty(n_max)
    base = np.empty(n_max)
    loo = np.empty(n_max)
    inner = np.empty((m_n, n_max))
    for r in range(r_n):
        m = cum[r, j_n]
        den = max(m - 1.0, 1.0)
        kinds = 3 if jackknife else 1
        for jj in range(j_n):
            for kind in range(kinds):
                if kind == 0:
                    x = cum[r, jj] / m
                elif kind == 1:
                    x = min(max((cum[r, jj] - 1.0) / den, 0.0), 1.0)
                else:
                    x = min(max(cum[r, jj] / den, 0.0), 1.0)
                p = x
                for n in range(n_max):
                    terms[kind, jj, n] = p * ds[r, jj]
                    p = p * x
        for n in range(n_max):
            base[n] = top[r]
        if j_n:
            for n in range(n_max):
                acc = terms[0, 0, n]
                for jj in range(1, j_n):
                    acc += terms[0, jj, n]
                base[n] = top[r] - acc
        if not jackknife or not m >= 2:
            for n in range(n_max):
                out[r, n] = base[n]
            continue
        for n in range(n_max):
            suffix[n] = 0.0
            prefix[n] = 0.0
            inner[j_n, n] = 0.0
        for i in range(j_n - 1, -1, -1):
            for n in range(n_max):
                suffix[n] = terms[1, i, n] + suffix[n]
                inner[i, n] = suffix[n]
        w0 = ct[r, 0] / m
        for n in range(n_max):
            loo[n] = w0 * (prefix[n] + inner[0, n])
        for i in range(1, m_n):
            wi = ct[r, i] / m
            for n in range(n_max):
                prefix[n] = prefix[n] + terms[2, i - 1, n]
                loo[n] += wi * (prefix[n] + inner[i, n])
        for n in range(n_max):
            out[r, n] = m * base[n] - (m - 1.0) * (top[r] - loo[n])


#: Grid of success probabilities of the empirical-Bayes estimator (binary majority voting).
NPMLE_GRID = np.linspace(0.005, 0.995, 100)
NPMLE_ITERS = 300


def npmle_binary_q(
    k: NDArray[np.int64], m: NDArray[np.int64], group: NDArray[np.int64], n_groups: int, n_max: int
) -> NDArray[np.float64]:
    """Empirical-Bayes estimate of ``E_q[credit_N(theta_q)]`` per group from binomial counts, ``(G, n_max)``.

    Each group (a run's prompt) holds cells ``(k successes of m)`` (one per query). The
    distribution of the success probability ``theta`` across the group's queries is estimated by
    nonparametric maximum likelihood on :data:`NPMLE_GRID` (Kiefer-Wolfowitz; EM iterations,
    vectorised over groups), and the estimate is ``sum_g w_g credit_N(theta_g)`` with the exact
    binary MV credit. Unlike the plug-in, it uses the spread of the counts across queries, so a
    prompt that is consistently right with probability 0.62 and one that is right on 70 % of the
    queries and wrong on the rest get very different large-``N`` values even from 3 votes per query.
    """
    return npmle_binary_q_var(k, m, group, n_groups, n_max, with_var=False)[0]


def npmle_binary_q_var(
    k: NDArray[np.int64], m: NDArray[np.int64], group: NDArray[np.int64], n_groups: int, n_max: int, with_var: bool = True
) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
    """:func:`npmle_binary_q` and the variance ``(G, n_max)`` of the posterior means' average.

    The variance is the spread across a group's queries of the per-query posterior means
    ``E[credit_N(theta_q) | k_q, m_q]`` divided by the number of queries (at the EM fixed point
    their average is the group's estimate). It misses the binomial noise that the posterior
    smooths away, so callers take the larger of it and the plug-in's spread (:meth:`PlugInSums.q`).
    """
    grid = NPMLE_GRID
    cells = np.stack([k, m], axis=1)
    pairs, code = np.unique(cells, axis=0, return_inverse=True)
    code = code.reshape(-1)
    from scipy.stats import binom

    lik = binom.pmf(pairs[:, 0][None, :], pairs[:, 1][None, :], grid[:, None])  # (Grid, K), element-wise
    # Each group's own (k, m) pairs, in pair order, padded with an all-zero likelihood column of
    # multiplicity 0: every sum below runs over one group's pairs (sequentially) or over the grid (a
    # contiguous pairwise sum of fixed length), so a group's estimate never depends on which other
    # groups share the call (a run's on the other runs of its batch). A product with the whole
    # batch's pairs (one matrix product) would sum over them in a blocked order that does.
    held = np.unique(group * pairs.shape[0] + code)  # sorted: by group, then pair
    g_of, p_of = np.divmod(held, pairs.shape[0])
    per = np.bincount(g_of, minlength=n_groups)
    width = max(1, int(per.max()) if per.size else 0)
    slot = np.arange(held.size) - np.repeat(np.cumsum(per) - per, per)
    idx = np.full((n_groups, width), pairs.shape[0])  # the padding column
    idx[g_of, slot] = p_of
    lik_t = np.concatenate([lik, np.zeros((grid.size, 1))], axis=1).T.copy()  # (K + 1, Grid)
    hist = np.zeros((n_groups, width))
    hist[g_of, slot] = np.bincount(group * pairs.shape[0] + code, minlength=n_groups * pairs.shape[0])[held]
    n = hist.sum(axis=1)  # integer counts: exact in any order
    f_t = oracle.mv_credit(np.stack([grid, 1.0 - grid], axis=1), np.zeros(grid.size, np.int64), n_max).T.copy()
    est = np.empty((n_groups, n_max))
    var = np.empty((n_groups, n_max)) if with_var else None
    step = max(1, (1 << 21) // (grid.size * max(width, n_max)))  # bounded memory per block of groups
    for lo in range(0, n_groups, step):
        hi = min(lo + step, n_groups)
        lk = lik_t[idx[lo:hi]]  # (B, width, Grid)
        w = _shrink_em(lk, np.maximum(n[lo:hi], 1.0), NPMLE_ITERS, mult=hist[lo:hi])
        est[lo:hi] = (w[:, None, :] * f_t[None, :, :]).sum(axis=2)  # (B, n_max): pairwise over the grid
        if var is None:
            continue
        # the per-query posterior means E[credit_N(theta) | k, m] of each held pair
        post = w[:, None, :] * lk
        post /= np.maximum(post.sum(axis=2, keepdims=True), 1e-300)
        pm = np.zeros((hi - lo, width, n_max))
        for t in range(grid.size):  # sequential over the grid
            pm += post[:, :, t, None] * f_t[None, None, :, t]
        nn = np.maximum(n[lo:hi], 1.0)[:, None]
        hb = hist[lo:hi, :, None]
        mean = (hb * pm).sum(axis=1) / nn  # sequential over the group's pairs
        ms = (hb * (pm * pm)).sum(axis=1) / nn
        var[lo:hi] = np.maximum(ms - mean * mean, 0.0) / nn
    return est, var


def eb_shrink(
    mean: NDArray[np.float64], var: NDArray[np.float64], valid: NDArray[np.bool_], grid_size: int = 64, iters: int = 100
) -> NDArray[np.float64]:
    """Empirical-Bayes posterior means of prompts' values ``mean (S, P, U, n_max)`` across prompts.

    For every run, objective row and ``N``, the values of the prompts in ``valid (S, P)`` are noisy
    readings (variance ``var``) of the prompts' true values; their distribution across prompts is
    estimated by a Gaussian-noise NPMLE on a grid spanning the readings, and each reading is
    replaced by its posterior mean. Prompts whose readings are within noise of each other are drawn
    together, so an exactly known difference (the cost) decides between them.
    """
    s_n, p_n, u_n, n_n = mean.shape
    x = np.moveaxis(mean, 1, -1).reshape(-1, p_n)  # (B, P)
    v = np.moveaxis(var, 1, -1).reshape(-1, p_n)
    ok = np.broadcast_to(valid[:, None, None, :], (s_n, u_n, n_n, p_n)).reshape(-1, p_n) & np.isfinite(x) & np.isfinite(v)
    out = x.copy()
    rows = np.flatnonzero(ok.sum(axis=1) >= 2)
    step = max(1, (1 << 21) // (p_n * grid_size))
    t = np.linspace(0.0, 1.0, grid_size)
    for lo in range(0, rows.size, step):
        r = rows[lo : lo + step]
        xr, vr, okr = x[r], v[r], ok[r]
        lo_x = np.where(okr, xr, np.inf).min(axis=1)
        hi_x = np.where(okr, xr, -np.inf).max(axis=1)
        g = lo_x[:, None] + (hi_x - lo_x)[:, None] * t[None, :]  # (B, G)
        spacing = np.maximum((hi_x - lo_x) / (grid_size - 1), 1e-12)
        sd = np.sqrt(np.maximum(np.where(okr, vr, 1.0), (spacing[:, None] / 2) ** 2))  # (B, P)
        z = (np.where(okr, xr, 0.0)[:, :, None] - g[:, None, :]) / sd[:, :, None]  # (B, P, G)
        ll = -0.5 * z * z
        lik = portable_exp(ll - ll.max(axis=2, keepdims=True)) * okr[:, :, None]  # numpy's exp differs by CPU
        cnt = okr.sum(axis=1).astype(np.float64)
        w = _shrink_em(lik, cnt, iters)
        post = w[:, None, :] * lik
        post /= np.maximum(post.sum(axis=2, keepdims=True), 1e-300)
        pmean = np.einsum("bpg,bg->bp", post, g)
        out[r] = np.where(okr, pmean, xr)
    return np.moveaxis(out.reshape(s_n, u_n, n_n, p_n), -1, 1)


#: Rows of :func:`_shrink_em`'s numpy path per block: one block's ``(B, P, G)`` posterior stays in cache.
SHRINK_BLOCK_BYTES = 1 << 18


def _shrink_em(
    lik: NDArray[np.float64], cnt: NDArray[np.float64], iters: int, mult: NDArray[np.float64] | None = None
) -> NDArray[np.float64]:
    """The EM iterations of a grid prior: weights ``(B, G)`` from likelihoods ``lik (B, P, G)``.

    ``w <- sum_p mult_p post_p / cnt`` with ``post_p = w lik_p / max(sum_g w lik_p, 1e-300)``, from
    uniform weights; ``mult (B, P)`` counts how many observations share row ``p``'s likelihood (None:
    one each, :func:`eb_shrink`, computed as ``w lik_p / den``; the pairs' counts in
    :func:`npmle_binary_q_var`, computed as ``w lik_p * (mult_p / den)``, one division per row, and
    rows of multiplicity 0 skipped by the compiled path, which adds exact zeros otherwise). Rows are
    independent, so the numpy path runs ``iters`` iterations on one block of rows at a time (the
    block's posterior stays in cache instead of streaming the whole batch through memory every
    iteration), and the compiled path row by row; both give the bits of the batched loop (a
    contiguous sum over the grid is numpy's pairwise sum, the sum over ``p`` is sequential, so rows of
    zero likelihood and multiplicity appended to a row change nothing): a row's weights never depend
    on the other rows of the call.
    """
    b_n, p_n, g_n = lik.shape
    ones = mult is None
    m = np.ones((b_n, p_n)) if mult is None else np.ascontiguousarray(mult, dtype=np.float64)
    if b_n and g_n <= 128 and _jit.enabled():  # _shrink_em_rows spells out numpy's pairwise sum for <= 128 terms
        return np.asarray(_shrink_em_rows(np.ascontiguousarray(lik), m, cnt, int(iters), not ones))
    w = np.full((b_n, g_n), 1.0 / g_n)
    step = max(1, SHRINK_BLOCK_BYTES // (8 * max(p_n * g_n, 1)))
    for lo in range(0, b_n, step):
        lk, c = lik[lo : lo + step], cnt[lo : lo + step, None]
        mb = m[lo : lo + step, :, None]
        wb = w[lo : lo + step]
        post = np.empty_like(lk)
        for _ in range(iters):
            np.multiply(wb[:, None, :], lk, out=post)
            den = post.sum(axis=2, keepdims=True)
            np.maximum(den, 1e-300, out=den)
            if ones:
                post /= den
            else:  # with multiplicities: one division per row, post * (mult / den)
                post *= np.divide(mb, den, out=den)
            wb = post.sum(axis=1) / c
        w[lo : lo + step] = wb
    return w


@_jit.kernel
def _shrink_em_rows(lik, mult, cnt, iters, scaled):  # noqa: C901  # numba kernel of _shrink_em: one loop nest
    b_n, p_n, g_n = lik.shape
    out = np.empty((b_n, g_n))
    row = np.empty(g_n)  # w * lik of one prompt
    acc = np.empty(g_n)  # sum over prompts of the posteriors, in prompt order
    w = np.empty(g_n)
    for b in range(b_n):
        for g in range(g_n):
            w[g] = 1.0 / g_n
        for _ in range(iters):
            for p in range(p_n):
                if p > 0 and mult[b, p] == 0.0:
                    continue  # a row of multiplicity 0 adds exact zeros: skipping it keeps the bits
                for g in range(g_n):
                    row[g] = w[g] * lik[b, p, g]
                # numpy's pairwise sum of a contiguous row of n <= 128 terms: 8 running sums, then the rest
                if g_n < 8:
                    s = -0.0
                    for g in range(g_n):
                        s += row[g]
                else:
                    r0, r1, r2, r3 = row[0], row[1], row[2], row[3]
                    r4, r5, r6, r7 = row[4], row[5], row[6], row[7]
                    i = 8
                    while i < g_n - g_n % 8:
                        r0 += row[i]
                        r1 += row[i + 1]
                        r2 += row[i + 2]
                        r3 += row[i + 3]
                        r4 += row[i + 4]
                        r5 += row[i + 5]
                        r6 += row[i + 6]
                        r7 += row[i + 7]
                        i += 8
                    s = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
                    while i < g_n:
                        s += row[i]
                        i += 1
                s = 0.0 + s  # the reduction starts from add's identity
                if not s >= 1e-300 and s == s:  # np.maximum(s, 1e-300), NaN kept
                    s = 1e-300
                m = mult[b, p]
                if scaled:  # one division per row: row * (m / s)
                    m = m / s
                    if p == 0:
                        for g in range(g_n):
                            acc[g] = row[g] * m
                    else:
                        for g in range(g_n):
                            acc[g] += row[g] * m
                elif p == 0:
                    for g in range(g_n):
                        acc[g] = (row[g] / s) * m
                else:
                    for g in range(g_n):
                        acc[g] += (row[g] / s) * m
            for g in range(g_n):
                w[g] = acc[g] / cnt[b]
        for g in range(g_n):
            out[b, g] = w[g]
    return out


def _scatter_sums(
    acc: NDArray[np.float64], acc2: NDArray[np.float64], target: NDArray[np.int64], v: NDArray[np.float64], sign: int
) -> None:
    """``acc[target[r]] +=/-= v[r]`` and ``acc2[target[r]] +=/-= v[r]^2`` row by row, in row order (``np.add.at``)."""
    if _jit.enabled():
        _scatter_sums_rows(acc, acc2, target, v, sign)
        return
    ufunc = np.add if sign > 0 else np.subtract
    ufunc.at(acc, target, v)
    ufunc.at(acc2, target, v * v)


@_jit.helper
def _scatter_row(acc, acc2, t, src, s, sign):  # noqa: ANN001, ANN202
    """``acc[t] +=/-= src[s]`` and ``acc2[t] +=/-= src[s]^2`` (one row of :func:`_scatter_sums` / :func:`_scatter_memo`)."""
    for n in range(src.shape[1]):
        x = src[s, n]
        sq = x * x
        if sign > 0:
            acc[t, n] += x
            acc2[t, n] += sq
        else:
            acc[t, n] -= x
            acc2[t, n] -= sq


@_jit.kernel
def _scatter_sums_rows(acc, acc2, target, v, sign):  # noqa: ANN001, ANN202  # numba kernel of _scatter_sums
    for r in range(target.size):
        _scatter_row(acc, acc2, target[r], v, r, sign)


# ------------------------------------------------------------------- memo of the MV estimates
def _mv_count_keys(
    counts: NDArray[np.int32], gold: NDArray[np.int64], cell: NDArray[np.int64], gcell: NDArray[np.int64], bits: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], int]:
    """Key, completions and largest count of each cell's canonical count row (MV).

    ``counts (C, A)`` are the per-cell counts (:attr:`CountStats.counts`, flat over run, prompt and
    column), ``gold`` the gold category per (run, column); row ``r`` reads cell ``cell[r]`` with gold
    ``gold[gcell[r]]``. The canonical row is the gold count followed by the other counts sorted
    descending (what :meth:`PlugInSums.values` hands :func:`jackknife_mv_credit`), its key the
    row's ``bits``-bit digits, gold first: distinct rows have distinct keys when every count is
    below ``2^bits`` (the third value says whether they are), and keys order as the rows do.
    Cells without completions get key 0 and ``m`` 0.
    """
    if _jit.enabled() and cell.size:
        keys = np.empty(cell.size, dtype=np.int64)
        m = np.empty(cell.size, dtype=np.int64)
        top = _mv_count_keys_rows(counts, gold, cell, gcell, int(bits), keys, m)
        return keys, m, int(top)
    c = counts[cell].astype(np.int64)
    a_n = c.shape[1]
    g = gold[gcell]
    own = c[np.arange(c.shape[0]), g]
    others = np.where(np.arange(a_n)[None, :] == g[:, None], -1, c)
    others = np.maximum(-np.sort(-others, axis=1)[:, : a_n - 1], 0)
    keys = own.copy()
    for j in range(a_n - 1):
        keys = (keys << bits) | others[:, j]
    top = max(int(own.max(initial=0)), int(others.max(initial=0)))
    return keys, c.sum(axis=1), top


@_jit.kernel
def _mv_count_keys_rows(counts, gold, cell, gcell, bits, keys, m):  # noqa: ANN001, ANN202
    """Compiled twin of :func:`_mv_count_keys` (integers: the same keys); returns the largest count."""
    a_n = counts.shape[1]
    row = np.empty(a_n, np.int64)
    top = np.int64(0)
    for r in range(cell.size):
        c = cell[r]
        g = gold[gcell[r]]
        tot = 0
        for a in range(a_n):
            tot += counts[c, a]
        m[r] = tot
        if tot == 0:
            keys[r] = 0
            continue
        n_o = 0  # the other counts, sorted descending by insertion
        for a in range(a_n):
            if a != g:
                v = np.int64(counts[c, a])
                i = n_o
                while i > 0 and row[i - 1] < v:
                    row[i] = row[i - 1]
                    i -= 1
                row[i] = v
                n_o += 1
        key = np.int64(counts[c, g])
        top = key if key > top else top
        for i in range(n_o):
            key = (key << bits) | row[i]
            top = row[i] if row[i] > top else top
        keys[r] = key
    return top


class MVCreditMemo:
    """:func:`jackknife_mv_credit` of every canonical MV count row met so far, by key (see :func:`_mv_count_keys`).

    A row's estimate depends on that row only (the exact credit of each distribution it reads, and
    the jackknife's sums over its own categories in a fixed order), so a row met again -- in a
    later round, in another run, or when a round takes a cell's old values out -- reads the bits
    it was given the first time instead of being evaluated again. ``vals[:size]`` holds the
    estimates ``(n_max,)`` in the order the rows were first met; keys find them through a hash
    table (open addressing, compiled: one probe per cell) on the compiled path, through a sorted
    key array (``np.searchsorted``) on the numpy path. :class:`PlugInSums` reads the process's
    memo for its settings (:func:`shared_memo`), so later batches read what earlier ones evaluated.
    """

    def __init__(self, n_categories: int, n_max: int, jackknife: bool) -> None:
        self.n_categories, self.n_max, self.jackknife = int(n_categories), int(n_max), bool(jackknife)
        self.lock = threading.Lock()  # a memo shared between threads (:func:`shared_memo`) is read and grown by one at a time
        #: bits per count in a key: ``A`` digits in 62 bits
        self.bits = 62 // max(self.n_categories, 1)
        self.vals = np.empty((0, self.n_max))
        self.size = 0
        self.hashed = _jit.enabled()
        # numpy path: sorted keys and the row of vals of each; compiled path: a hash table (-1: empty)
        self.keys = np.empty(0, dtype=np.int64)
        self.slot = np.empty(0, dtype=np.int64)
        self.table_keys = np.full(1 << 12, -1, dtype=np.int64)
        self.table_slot = np.zeros(1 << 12, dtype=np.int64)

    def rows(self, keys: NDArray[np.int64]) -> NDArray[np.int64]:
        """The canonical count rows ``(R, A)`` of ``keys``."""
        a_n, bits = self.n_categories, self.bits
        mask = (1 << bits) - 1
        return np.stack([(keys >> (bits * (a_n - 1 - j))) & mask for j in range(a_n)], axis=1)

    def _store(self, new: NDArray[np.int64]) -> None:
        """Evaluate the rows of the keys ``new`` (not met before) in one batch and append their estimates to :attr:`vals`."""
        if new.size == 0:
            return
        est = jackknife_mv_credit(self.rows(new), self.n_max, self.jackknife)
        if self.size + new.size > self.vals.shape[0]:  # grow geometrically: appends stay linear
            grown = np.empty((max(2 * self.vals.shape[0], self.size + new.size, 1024), self.n_max))
            grown[: self.size] = self.vals[: self.size]
            self.vals = grown
        self.vals[self.size : self.size + new.size] = est
        self.size += new.size

    def slots(self, keys: NDArray[np.int64]) -> NDArray[np.int64]:
        """Row of :attr:`vals` holding each key's estimate; keys not met before are evaluated (in one batch) first."""
        if self.hashed:
            return self._slots_hashed(keys)
        pos = np.searchsorted(self.keys, keys)
        hit = np.zeros(keys.shape, dtype=bool)
        if self.keys.size:
            hit = self.keys[np.minimum(pos, self.keys.size - 1)] == keys
        if not hit.all():
            new = np.unique(keys[~hit])
            at = np.searchsorted(self.keys, new)
            self.keys = np.insert(self.keys, at, new)
            self.slot = np.insert(self.slot, at, np.arange(self.size, self.size + new.size))
            self._store(new)
            pos = np.searchsorted(self.keys, keys)
        return self.slot[pos]

    def lookup(self, keys: NDArray[np.int64]) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        """``(vals, slot)``: :meth:`slots` of ``keys`` and the estimates array they index, read together under :attr:`lock`."""
        with self.lock:
            slot = self.slots(keys)
            return self.vals, slot

    def _slots_hashed(self, keys: NDArray[np.int64]) -> NDArray[np.int64]:
        """:meth:`slots` through the hash table: unseen keys are entered (numbered in order of first sight) and evaluated."""
        out = np.empty(keys.size, dtype=np.int64)
        new = np.empty(keys.size, dtype=np.int64)
        start, count = 0, self.size
        while True:
            shift = 64 - (self.table_keys.size.bit_length() - 1)
            start, count = _memo_probe(self.table_keys, self.table_slot, keys, start, count, self.size, shift, out, new)
            if start == keys.size:
                break
            self._grow_table()  # half full: double it and go on from the key that did not fit
        self._store(new[: count - self.size])
        return out

    def _grow_table(self) -> None:
        old_keys, old_slot = self.table_keys, self.table_slot
        self.table_keys = np.full(2 * old_keys.size, -1, dtype=np.int64)
        self.table_slot = np.zeros(2 * old_keys.size, dtype=np.int64)
        held = old_keys >= 0
        shift = 64 - (self.table_keys.size.bit_length() - 1)
        _memo_insert(self.table_keys, self.table_slot, old_keys[held], old_slot[held], shift)


#: Rows a process's shared memo (:func:`shared_memo`) may hold before it starts afresh: at most
#: twice that many estimates of ``n_max`` floats are kept (32 MiB at ``n_max = 32``).
SHARED_MEMO_ROWS = 1 << 16
_SHARED_MEMOS: dict[tuple[int, int, bool, bool], MVCreditMemo] = {}
_SHARED_MEMOS_LOCK = threading.Lock()


def shared_memo(n_categories: int, n_max: int, jackknife: bool) -> MVCreditMemo:
    """The process's :class:`MVCreditMemo` for these settings (one per path: compiled or numpy), made on first use.

    A canonical count row's estimate is a function of that row alone (the memo's premise), so every
    batch of a process may read the rows earlier batches evaluated: a sweep fits each task's runs
    in many batches (budgets, chunks of seeds, agents' repeats), and after the first ones most rows
    are met again (a 200-run MATH batch at T = 5,000 evaluates about as many rows as it reads
    without it). Which batch evaluated a row changes none of its bits (``tests/test_psst_model_paths.py``).
    A memo past :data:`SHARED_MEMO_ROWS` rows is replaced by an empty one (batches still holding
    the old one keep using it): memory stays bounded.
    """
    key = (int(n_categories), int(n_max), bool(jackknife), _jit.enabled())
    with _SHARED_MEMOS_LOCK:
        memo = _SHARED_MEMOS.get(key)
        if memo is None or memo.size > SHARED_MEMO_ROWS:
            memo = _SHARED_MEMOS[key] = MVCreditMemo(n_categories, n_max, jackknife)
        return memo


#: Multiplier of :func:`_memo_probe`'s hash (Fibonacci hashing: the top bits of ``key * 2^64 / phi``).
_MEMO_HASH = np.uint64(0x9E3779B97F4A7C15)


@_jit.kernel
def _memo_probe(table_keys, table_slot, keys, start, count, size, shift, out, new):  # noqa: ANN001, ANN202
    """Slot of each of ``keys[start:]`` in the open-addressing table (linear probing), entering unseen keys.

    An unseen key gets the next number ``count`` (``new[count - size]`` records it). Stops before a
    key that would fill the table past half and returns ``(where it stopped, count)``. ``shift``:
    64 minus the table's log2 size (the hash keeps the product's top bits).
    """
    cap = table_keys.size
    mask = cap - 1
    for r in range(start, keys.size):
        k = keys[r]
        h = np.int64((np.uint64(k) * _MEMO_HASH) >> np.uint64(shift))
        while True:
            t = table_keys[h]
            if t == k:
                out[r] = table_slot[h]
                break
            if t < 0:
                if 2 * (count + 1) > cap:
                    return r, count
                table_keys[h] = k
                table_slot[h] = count
                new[count - size] = k
                out[r] = count
                count += 1
                break
            h = (h + 1) & mask
    return keys.size, count


@_jit.kernel
def _memo_insert(table_keys, table_slot, keys, slot, shift):  # noqa: ANN001, ANN202
    """Enter distinct ``keys`` with their ``slot`` numbers into an open-addressing table (the probe of :func:`_memo_probe`)."""
    mask = table_keys.size - 1
    for r in range(keys.size):
        h = np.int64((np.uint64(keys[r]) * _MEMO_HASH) >> np.uint64(shift))
        while table_keys[h] >= 0:
            h = (h + 1) & mask
        table_keys[h] = keys[r]
        table_slot[h] = slot[r]


def _scatter_memo(
    acc: NDArray[np.float64], acc2: NDArray[np.float64], cells: NDArray[np.int64], target: NDArray[np.int64],
    vals: NDArray[np.float64], slot: NDArray[np.int64], sign: int,
) -> None:
    """:func:`_scatter_sums` of the rows ``vals[slot]`` into ``acc (T, n)`` / ``acc2``, and ``cells[target] +=/-= 1``."""
    if _jit.enabled():
        _scatter_memo_rows(acc, acc2, cells, target, vals, slot, sign)
        return
    _scatter_sums(acc, acc2, target, vals[slot], sign)
    (np.add if sign > 0 else np.subtract).at(cells, target, 1)


@_jit.kernel
def _scatter_memo_rows(acc, acc2, cells, target, vals, slot, sign):  # noqa: ANN001, ANN202  # numba kernel of _scatter_memo
    for r in range(target.size):
        cells[target[r]] += sign
        _scatter_row(acc, acc2, target[r], vals, slot[r], sign)


class PlugInSums:
    """Running sums over train columns of the per-query bias-corrected plug-in values.

    ``acc (S, P, U, n_max)``: for each run and prompt, the sum over the columns it was pulled on of
    the per-query estimate (MV: credit, ``U = 1``; BoN: expected best score under each of the ``U``
    distinct objective-weight rows); ``cells (S, P)``: how many columns. Only the cells a round
    touches are re-evaluated (their old value is subtracted first), so each round costs in
    proportion to its own pulls.
    """

    def __init__(
        self,
        stats: CountStats,
        weights: NDArray[np.float64],
        n_max: int,
        jackknife: bool,
        npmle: bool = False,
        bon_eb: bool = False,
    ) -> None:
        self.stats, self.n_max, self.jackknife = stats, int(n_max), bool(jackknife)
        self.npmle = bool(npmle) and stats.strategy == "mv"  # used when the answers are binary
        self.bon_eb = bool(bon_eb) and stats.strategy == "bon"
        s_n, p_n, _, _ = stats.shape
        if stats.strategy == "mv":
            self.obj_w = weights[:1, :1] * 0 + 1.0
            self.group = np.zeros(weights.shape[0], dtype=np.int64)
        else:
            self.obj_w, group = np.unique(weights[:, :-1], axis=0, return_inverse=True)
            self.group = group.reshape(-1)
        self.acc = np.zeros((s_n, p_n, self.obj_w.shape[0], self.n_max))
        self.acc2 = np.zeros_like(self.acc)  # sums of squares: the spread across queries
        self.cells = np.zeros((s_n, p_n), dtype=np.int64)
        self.memo: MVCreditMemo | None = None  # MV: the estimates of the count rows met so far
        self.sd: NDArray[np.float64] = np.zeros(0)  # (S, C, P, n_max) of the last q(): each estimate's error
        #: (S, C, P, n_max) of the last q() for binary answers (else None): the standard error of each
        #: estimate over the run's train queries alone (the spread of the per-query posterior credits)
        self.sd_query: NDArray[np.float64] | None = None

    def values(self, s_i: NDArray[np.int64], p_i: NDArray[np.int64], w_i: NDArray[np.int64]) -> NDArray[np.float64]:
        """Per-query estimates ``(R, U, n_max)`` of the given (non-empty) cells from their current counts."""
        return np.stack(list(self._values(s_i, p_i, w_i)), axis=1)

    def _values(self, s_i: NDArray[np.int64], p_i: NDArray[np.int64], w_i: NDArray[np.int64]) -> Iterator[NDArray[np.float64]]:
        """:meth:`values` one objective row ``u`` at a time (``(R, n_max)`` each): a BoN batch never holds all ``U``."""
        st = self.stats
        if st.strategy == "mv":
            yield jackknife_mv_credit(st.gold_first(s_i, p_i, w_i), self.n_max, self.jackknife)
            return
        counts = st.counts[s_i, p_i, w_i].astype(np.int64)  # (R, A)
        assert st.values is not None  # a BoN task's stats hold values once anything was pulled
        vals = st.values[s_i, p_i, w_i].astype(np.float64)  # (R, M, K)
        for u in range(self.obj_w.shape[0]):
            yield jackknife_bon_max(vals @ self.obj_w[u], counts, self.n_max, self.jackknife)

    def _update(self, cells: tuple[NDArray[np.int64], ...], sign: int) -> None:
        """Add (``sign`` 1) or subtract (-1) the current values of the non-empty ``cells`` and their squares."""
        s_i, p_i, w_i = cells
        if self.stats.strategy == "mv" and self._update_mv(cells, sign):
            return
        seen = self.stats.counts[s_i, p_i, w_i].sum(axis=1) > 0
        if not seen.any():
            return
        s_i, p_i, w_i = s_i[seen], p_i[seen], w_i[seen]
        s_n, p_n, u_n, n_n = self.acc.shape
        target = s_i * p_n + p_i
        if not self.bon_eb:  # the empirical-Bayes BoN estimate replaces these sums; only the cells count
            acc, acc2 = self.acc.reshape(s_n * p_n, u_n, n_n), self.acc2.reshape(s_n * p_n, u_n, n_n)
            for u, v in enumerate(self._values(s_i, p_i, w_i)):
                _scatter_sums(acc[:, u], acc2[:, u], target, v, sign)
        (np.add if sign > 0 else np.subtract).at(self.cells.reshape(-1), target, 1)

    def _update_mv(self, cells: tuple[NDArray[np.int64], ...], sign: int) -> bool:
        """:meth:`_update` of majority voting through :attr:`memo`; False (nothing done) when a count is too big for a key."""
        st = self.stats
        s_n, p_n, w_n, a_n = st.shape
        if a_n == 0:  # nothing pulled yet
            return False
        if self.memo is None:
            self.memo = shared_memo(a_n, self.n_max, self.jackknife)
        s_i, p_i, w_i = cells
        keys, m, top = _mv_count_keys(
            st.counts.reshape(-1, a_n), st.gold.reshape(-1), (s_i * p_n + p_i) * w_n + w_i, s_i * w_n + w_i, self.memo.bits
        )
        if top >= 1 << self.memo.bits:
            return False
        seen = m > 0
        if not seen.any():
            return True
        vals, slot = self.memo.lookup(keys[seen])
        acc, acc2 = self.acc.reshape(s_n * p_n, self.n_max), self.acc2.reshape(s_n * p_n, self.n_max)
        _scatter_memo(acc, acc2, self.cells.reshape(-1), (s_i * p_n + p_i)[seen], vals, slot, sign)
        return True

    def remove(self, cells: tuple[NDArray[np.int64], ...]) -> None:
        """Subtract the current values of ``cells`` (call before new counts are added to them)."""
        self._update(cells, -1)

    def add(self, cells: tuple[NDArray[np.int64], ...]) -> None:
        """Add the values of ``cells`` from their (updated) counts."""
        self._update(cells, 1)

    def _npmle_mean(self, alive: NDArray[np.bool_]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Per (run, prompt) empirical-Bayes credit ``(S, P, 1, n_max)`` (binary MV; NaN where unseen)."""
        st = self.stats
        s_n, p_n, _, _ = st.shape
        tot = st.counts.sum(axis=-1)
        s_i, p_i, w_i = np.nonzero(alive[:, :, None] & (tot > 0))
        out = np.full((s_n, p_n, 1, self.n_max), np.nan)
        var = np.full_like(out, np.nan)
        if s_i.size == 0:
            return out, var
        gold = st.gold[s_i, w_i]
        k = st.counts[s_i, p_i, w_i, gold].astype(np.int64)
        grp, inv = np.unique(s_i * p_n + p_i, return_inverse=True)
        est, v = npmle_binary_q_var(k, tot[s_i, p_i, w_i].astype(np.int64), inv.reshape(-1), grp.size, self.n_max)
        out.reshape(s_n * p_n, self.n_max)[grp] = est
        var.reshape(s_n * p_n, self.n_max)[grp] = v
        return out, var

    def _bon_eb_mean(self, alive: NDArray[np.bool_]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Per (run, prompt) empirical-Bayes ``E[max of N]`` ``(S, P, U, n_max)`` and its variance (BoN; NaN where unseen).

        The average over a prompt's queries of :func:`~iapo_gym.agents._bon_eb.eb_bon_expected_max`,
        with the Dirichlet concentration fitted per (run, prompt); the variance is the spread of
        the per-query values over the number of queries.
        """
        st = self.stats
        s_n, p_n, _, _ = st.shape
        u_n = self.obj_w.shape[0]
        out = np.full((s_n * p_n, u_n, self.n_max), np.nan)
        var = np.full_like(out, np.nan)
        tot = st.counts.sum(axis=-1)
        s_i, p_i, w_i = np.nonzero(alive[:, :, None] & (tot > 0))  # rows grouped by (run, prompt)
        if s_i.size and st.values is not None:
            counts = st.counts[s_i, p_i, w_i].astype(np.int64)
            vals = st.values[s_i, p_i, w_i].astype(np.float64)  # (R, M, K)
            grp, first, inv = np.unique(s_i * p_n + p_i, return_index=True, return_inverse=True)
            inv = inv.reshape(-1)
            alpha = fit_dirichlet_concentration(counts, inv, grp.size)
            n = np.bincount(inv, minlength=grp.size).astype(np.float64)[:, None]
            for u in range(u_n):
                v = eb_bon_expected_max(vals @ self.obj_w[u], counts, inv, grp.size, alpha, self.n_max)
                mean = np.add.reduceat(v, first, axis=0) / n
                ms = np.add.reduceat(v * v, first, axis=0) / n
                out[grp, u] = mean
                var[grp, u] = np.maximum(ms - mean * mean, 0.0) / n
        return out.reshape(s_n, p_n, u_n, self.n_max), var.reshape(s_n, p_n, u_n, self.n_max)

    def empirical_bayes(self) -> bool:
        """Whether :meth:`q` reads empirical-Bayes estimates (binary majority voting with ``npmle``, or ``bon_eb``)."""
        return self.bon_eb or (self.npmle and self.stats.shape[3] == 2)

    def q(self, alive: NDArray[np.bool_], weights: NDArray[np.float64], shrink: bool = False) -> NDArray[np.float64]:
        """``Qhat (S, C, P, n_max)``; NaN for prompts not in ``alive (S, P)`` or never pulled."""
        st = self.stats
        if st.strategy == "mv" and not (self.npmle and st.shape[3] == 2) and _jit.enabled():
            # the plug-in of majority voting: every step below is element-wise, fused in one pass
            s_n, p_n = self.cells.shape
            q = np.empty((s_n, weights.shape[0], p_n, self.n_max))
            self.sd, self.sd_query = np.empty_like(q), None
            _q_plugin_mv(
                self.acc[:, :, 0], self.acc2[:, :, 0], self.cells, st.cost, st.completions, alive,
                np.ascontiguousarray(weights[:, 0]), np.ascontiguousarray(weights[:, -1]), q, self.sd,
            )
            return q
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.acc / self.cells[:, :, None, None]  # (S, P, U, n_max)
            cost = st.cost / st.completions  # (S, P) mean cost per completion
            var = np.maximum(self.acc2 / self.cells[:, :, None, None] - mean * mean, 0.0) / self.cells[:, :, None, None]
        seen = self.cells > 0
        eb = self.npmle and st.shape[3] == 2
        var_query = None
        if eb:
            mean, var_eb = self._npmle_mean(seen if shrink else alive)
            var_query = var_eb  # the per-query posterior credits' spread: the train split's sampling error
            # the posterior means' spread misses the binomial noise of each query: take the
            # larger of it and the spread of the per-query (jackknifed) plug-in values
            var = np.fmax(var, var_eb)
        if shrink and eb:
            mean = eb_shrink(mean, var, seen)
        if self.bon_eb:
            # the spread of the per-query posterior values alone: it under-states the error of a
            # large-N estimate (1.05-1.5x on Synth-Categorical's tuning seeds), which makes the
            # confident drop act earlier; the larger plug-in spread (calibrated) lost at every
            # budget on the tuning seeds (T = 5,000: 0.0091 against 0.0079)
            mean, var = self._bon_eb_mean(alive)
        gain = np.moveaxis(mean[:, :, self.group], 2, 1)  # (S, C, P, n_max)
        if st.strategy == "mv":
            gain = gain * weights[:, 0][None, :, None, None]
        n_arr = np.arange(1, self.n_max + 1)
        q = gain - weights[:, -1][None, :, None, None] * (cost[:, None, :, None] * n_arr)
        sd = np.moveaxis(np.sqrt(var)[:, :, self.group], 2, 1)
        if st.strategy == "mv":
            sd = sd * weights[:, 0][None, :, None, None]
        self.sd = sd
        self.sd_query = (
            None if var_query is None
            else np.moveaxis(np.sqrt(var_query)[:, :, self.group], 2, 1) * weights[:, 0][None, :, None, None]
        )
        bad = ~(alive & (self.cells > 0))
        q[np.broadcast_to(bad[:, None, :, None], q.shape)] = np.nan
        return q


@_jit.kernel
def _q_plugin_mv(acc, acc2, cells, cost, completions, alive, w_gain, w_cost, q, sd):  # noqa: ANN001, ANN202
    """Compiled :meth:`PlugInSums.q` of the majority-vote plug-in (``U = 1``): its element-wise steps, the same bits.

    ``mean = acc / cells``, ``var = max(acc2 / cells - mean^2, 0) / cells`` (NaN kept, as
    ``np.maximum``), ``q[s, c, p, n] = mean w_gain[c] - w_cost[c] ((cost / completions) (n + 1))``,
    ``sd = sqrt(var) w_gain[c]``, and NaN in ``q`` where the prompt is not alive or never pulled.
    """
    s_n, c_n, p_n, n_n = q.shape
    for s in range(s_n):
        for p in range(p_n):
            k = cells[s, p]
            c_pp = cost[s, p] / completions[s, p]
            ok = alive[s, p] and k > 0
            for n in range(n_n):
                mean = acc[s, p, n] / k
                v = acc2[s, p, n] / k - mean * mean
                if not (v >= 0.0 or v != v):  # np.maximum(v, 0.0)
                    v = 0.0
                root = np.sqrt(v / k)
                cn = c_pp * (n + 1)
                for c in range(c_n):
                    q[s, c, p, n] = mean * w_gain[c] - w_cost[c] * cn if ok else np.nan
                    sd[s, c, p, n] = root * w_gain[c]


# ------------------------------------------------------------------------------------- the agent
def deployment_scores(
    q_hat: NDArray[np.float64],
    sd: NDArray[np.float64],
    z: float,
    sd_query: NDArray[np.float64] | None = None,
    query_z: float = 0.0,
) -> NDArray[np.float64]:
    """``q_hat + z sd - query_z sd_query`` (``(S, C, P, N)``; NaN stays NaN, an unknown error counts as 0).

    What the deployment maximises. With ``z = 0`` and no query term it is ``q_hat`` itself (the
    same array). :class:`PSSTModel` uses ``z = deploy_z`` for the empirical-Bayes estimates (binary
    majority voting, Best-of-N) and 0 for the plug-in, and ``query_z`` where ``sd_query`` is known
    (binary answers).
    """
    out = q_hat if z == 0.0 else q_hat + z * np.nan_to_num(sd, nan=0.0)
    if sd_query is not None and query_z != 0.0:
        out = out - query_z * np.nan_to_num(sd_query, nan=0.0)
    return out


def best_arms_and_errors(
    q_hat: NDArray[np.float64], sd: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(best, se)`` ``(S, C, P)``: each prompt's best arm value ``max_N Qhat`` and that arm's standard error.

    NaN values read as ``-inf`` (``best`` is ``-inf`` when no arm is known), the arm is the first
    maximum, and its ``sd`` reads 0 where NaN. One compiled pass over ``q_hat (S, C, P, N)`` when
    the kernels run, else numpy's ``argmax`` and gathers: the same arms and values.
    """
    if _jit.enabled() and q_hat.flags.c_contiguous and sd.flags.c_contiguous and q_hat.shape == sd.shape:
        return _best_arm_rows(q_hat.reshape(-1, q_hat.shape[-1]), sd.reshape(-1, sd.shape[-1]), q_hat.shape[:-1])
    qn = np.where(np.isnan(q_hat), -np.inf, q_hat)
    arg = np.argmax(qn, axis=-1)[..., None]
    best = np.take_along_axis(qn, arg, axis=-1)[..., 0]  # (S, C, P)
    se = np.nan_to_num(np.take_along_axis(sd, arg, axis=-1)[..., 0], nan=0.0)  # the chosen arms' only
    return best, se


@_jit.kernel
def _best_arm_rows(q, sd, shape):  # noqa: ANN001, ANN202
    """Compiled twin of :func:`best_arms_and_errors` on rows ``q, sd (R, N)``: each row's first maximum (comparisons only)."""
    rows, n = q.shape
    best = np.empty(rows)
    se = np.empty(rows)
    for i in range(rows):
        top = q[i, 0]
        top = -np.inf if np.isnan(top) else top
        at = 0
        for k in range(1, n):
            v = q[i, k]
            if v > top:  # NaN never is
                top = v
                at = k
        best[i] = top
        e = sd[i, at]
        se[i] = 0.0 if np.isnan(e) else e
    return best.reshape(shape), se.reshape(shape)


def confidently_worse(
    q_hat: NDArray[np.float64],
    sd: NDArray[np.float64],
    alive: NDArray[np.bool_],
    z: float,
    best_se: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
) -> NDArray[np.bool_]:
    """``(S, P)``: alive prompts that are confidently worse than the leader in *every* context.

    A prompt's score in a context is its best arm ``max_N Qhat(c, p, N)`` (``q_hat (S, C, P, N)``,
    NaN where unknown) with the standard error ``sd`` of that arm; it is confidently worse when
    its upper bound ``score + z sd`` is below the best lower bound ``max_p' (score' - z sd')`` of
    the context. Prompts without an estimate are never dropped. ``best_se``: the caller's
    :func:`best_arms_and_errors` of the same ``q_hat`` and ``sd``, when it has them.
    """
    best, se = best_arms_and_errors(q_hat, sd) if best_se is None else best_se
    ok = alive[:, None, :] & np.isfinite(best)
    lead = np.where(ok, best - z * se, -np.inf).max(axis=-1, keepdims=True)
    close = (ok & (best + z * se >= lead)).any(axis=1)
    return ok.any(axis=1) & ~close


def _keep_top(
    score: NDArray[np.float64], alive: NDArray[np.bool_], strict: bool = True, keep: float = 0.5
) -> NDArray[np.bool_]:
    """Per run, the surviving prompts after one halving by ``score (S, C, P)`` (higher is better).

    Each alive prompt's rank in each context (0 = best; unseen alive prompts rank below seen ones).
    ``strict``: keep the ``max(1, floor(n / 2))`` prompts with the best rank in their best context
    (ties: the smaller mean rank), so the survivors at least halve however many contexts there are.
    Otherwise keep every prompt in the top ``max(1, floor(n / 2))`` of *some* context (the union can
    hold almost every prompt when contexts are many).
    """
    s_n, c_n, p_n = score.shape
    n_alive = alive.sum(axis=1)
    k = np.maximum(1, np.floor(n_alive * keep + 1e-9).astype(np.int64))
    key = np.where(alive[:, None, :] & np.isfinite(score), score, -np.inf)
    key = np.where(alive[:, None, :] & ~np.isfinite(score), -1e300, key)  # unseen alive: below seen
    rank = np.argsort(np.argsort(-key, axis=-1, kind="stable"), axis=-1, kind="stable")  # 0 = best
    if not strict:
        return (rank < k[:, None, None]).any(axis=1) & alive
    best = rank.min(axis=1).astype(np.float64) + rank.mean(axis=1) / (c_n * p_n + 1.0)  # (S, P)
    best = np.where(alive, best, np.inf)
    order = np.argsort(best, axis=1, kind="stable")
    kept = np.zeros_like(alive)
    np.put_along_axis(kept, order, np.arange(p_n)[None, :] < k[:, None], axis=1)
    return kept & alive


@dataclass
class PSSTModel(BatchAgent):
    """Model-based paired prompt halving; **uses query-controlled pulls** (see the module docstring).

    Args:
        m: completions per (surviving prompt, query) in the first round; doubles each round
            (capped at ``N_max``). 0 (default): 2 for majority voting, 3 for Best-of-N. Two votes
            per query already identify the spread of the success probability across queries (the
            NPMLE's input) and keep the query count high; a Best-of-N maximum needs the upper tail
            of each query's outcomes, and the jackknife of a 2-sample maximum extrapolates wildly.
        growth: ratio of consecutive round budgets.
        extra_rounds: rounds beyond the halvings (rounds that refine the survivors' estimates).
        jackknife: bias-correct the per-query plug-in (see :func:`jackknife_mv_credit`).
        double_m: double ``m`` every round (subject to ``min_queries``); False keeps it fixed.
        strict: halve the prompts overall (ranked by their best context) instead of keeping the top
            share of every context (the union; the default).
        npmle: empirical-Bayes estimate for binary majority voting (see :func:`npmle_binary_q`).
        keep: share of the survivors each halving keeps per context (rounds: ``log_{1/keep} |P|``).
        min_queries: ``m`` doubles only while a round affords this many common queries for all
            survivors (0: always double). The per-query estimates are averaged over queries, whose
            spread dominates the error of a prompt's value; depth per query only pays once a round
            already covers many queries (Synth-Categorical at T = 5,000: 0.035 -> 0.021 regret).
        shrink: empirical-Bayes shrinkage of the prompts' empirical-Bayes (binary MV) estimates
            across prompts (see :func:`eb_shrink`; no effect on plug-in estimates).
        drop_z: after each halving also drop every prompt whose best arm is more than ``drop_z``
            standard errors below the leader's lower bound in every context (0: halving only).
            None (default): 2 for Best-of-N, 0 for majority voting. The test needs calibrated
            standard errors at the leader's best arm. Measured at ``T = 5,000`` (seeds 2000-2199),
            the arm's estimate exceeds its exact train value by more than two standard errors in
            about 3 % of cases on Synth-Categorical (Best-of-N; the drop loses a train-best prompt in 3
            of its 1,783 drops before the last round). On Synth-Bernoulli (binary majority voting,
            large ``N`` extrapolated from a few votes per query) that share is 23-29 % at ``N >= 9``
            after the first round, and 30 of the drop's 396 first-round drops were a train-best
            prompt. Without the drop, Synth-Bernoulli gains at every budget (seeds 2000-2999, 1k /
            2k / 5k / 10k / 20k / 50k: -0.0037 / -0.0017 / -0.0010 / -0.0006 / -0.0006 / -0.0004,
            paired s.e. 0.0018 / 0.0007 / 0.0005 / 0.0003 / 0.0003 / 0.0003). SmolArith decides
            bit-identically at 1k-5k; MATH moves within noise. Synth-Categorical needs the drop
            (+0.0030, s.e. 0.0007, at 5k without it).
        bon_eb: Best-of-N estimates by empirical Bayes across a prompt's queries (a fitted
            Dirichlet prior on each query's outcome probabilities and a pooled shape for the scores
            of outcomes not yet drawn, :mod:`iapo_gym.agents._bon_eb`) instead of the per-query
            jackknifed plug-in (no effect on majority voting).
        eb_m: binary answers only (the empirical-Bayes estimator): every round after the first
            pulls each survivor at least ``eb_m`` times per query (0: off; ignored when ``m`` is
            set). ``m`` binary votes on a query identify only the first ``m`` moments of the
            distribution of the success probability across queries, while the large-``N`` credit
            is a step at 1/2 that needs the distribution's shape there; two votes leave it to the
            estimator's grid. The first round cannot use it: the answer space is learnt from the
            first pulls (Synth-Bernoulli, tuning seeds 1000-1199, T = 1k / 2k / 5k: 0.047 / 0.036 /
            0.017 -> 0.038 / 0.028 / 0.015; within noise from 10k on, and at 5k on other seeds).
        final_drop_z: Best-of-N only: the confident drop before the last round uses this many
            standard errors instead of ``drop_z`` (0: ``drop_z``), so the last round's budget goes
            to the near-ties of each context's leader. On Synth-Categorical the survivors of the
            halvings hold the train-best arm at ``T = 5,000`` and what is lost is the final pick
            among them (tuning seeds 1000-1199 / 1200-1399, ``T = 5,000``: 0.0079 / 0.0083 ->
            0.0071 / 0.0078). Majority voting keeps ``drop_z``.
        deploy_z: empirical-Bayes estimates only (binary answers, Best-of-N): deploy the arm with the
            best ``Qhat + deploy_z sd`` instead of the best ``Qhat`` (:func:`deployment_scores`; 0:
            the best estimate; the plug-in of majority voting over many answers always deploys its
            best estimate). Both estimators are biased low where they are uncertain, at large ``N``
            (the Best-of-N z-scores against the exact train values average -0.5 to -0.9 at
            ``N = 8-32``; the binary NPMLE's credit of a consistent prompt at ``N = 15-31`` is low
            by 0.005-0.016). Tuning seeds 1000-1199 / 1200-1399, ``T = 5,000``: Synth-Bernoulli
            0.0155 / 0.0144 -> 0.0143 / 0.0132, Synth-Categorical 0.0071 -> 0.0070; no budget from 1k
            to 50k worse beyond noise (docs/BEYOND.md, seventh round).
        query_z: binary answers only (where the NPMLE gives each estimate's spread over queries apart
            from its estimation error): subtract ``query_z`` standard errors of the train split's
            sampling (the spread of the per-query posterior credits over the root of their number)
            from the deployment score (0: off). The deployed arm is scored on held-out queries; a
            value that swings from query to query is known less well from the train split. With the
            exact train ``Q`` per query on Synth-Bernoulli (seeds 2000-2199), ``argmax mean - se``
            is 0.0006 (s.e. 0.0003) below the train-oracle floor on the test split. As an agent
            (seeds 2000-2399, 1k / 2k / 5k / 10k / 20k; 2000-2199 at 50k): -0.0082 / -0.0039 /
            -0.0008 / -0.0004 / -0.0004 / -0.0004, paired s.e. 0.0019 / 0.0008 / 0.0003 / 0.0003 /
            0.0002 / 0.0002; seeds 2400-2999 at 5k: -0.0008 (0.0003). The rounds are unchanged.
            On MATH and SmolArith the exact-``Q`` reference points the other way (the optimistic
            pick beats the floor), so the rule stays where the two errors are told apart.
        neyman: majority voting with more than two answers (the plug-in): a round after the first
            that affords every train query spreads its completions over the (prompt, query) cells by
            Neyman's rule (see the module docstring; False, the default: every cell ``m_r`` times).
            The train split's ``Q`` is then a fixed average whose only error is the votes', most of
            it on the few queries near a vote's tipping point. On SmolArith (seeds 3000-6999) it
            cuts the exact train-split regret at every budget (1k / 2k / 10k / 20k / 50k: -0.0005 /
            -0.0014 / -0.0008 / -0.0005 / -0.0002, 1-6 paired s.e.) but not the test regret, which
            it raises (+0.0010 / +0.0011 / +0.0010 / +0.0005 / +0.0009, s.e. 0.0004-0.0011; at 5k,
            seeds 1000-1399 and 2000-6999, -0.0008, s.e. 0.0007): an arm fitted more exactly to 19
            train queries is not better on the 5 others (docs/BEYOND.md, twelfth look). For a
            deployment whose queries are the train queries it is the better allocation. Other
            tasks' rounds never cover their train split below ``T = 50,000``.
    """

    m: int = 0
    growth: float = 1.0
    extra_rounds: int = 0
    jackknife: bool = True
    double_m: bool = True
    strict: bool = False
    npmle: bool = True
    keep: float = 0.5
    min_queries: int = 32
    shrink: bool = True
    drop_z: float | None = None
    bon_eb: bool = True
    eb_m: int = 4
    final_drop_z: float = 0.5
    deploy_z: float = 1.0
    query_z: float = 1.0
    neyman: bool = False
    name: ClassVar[str] = "psst_model"
    uses_query_control: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if int(self.m) < 0:
            raise ValueError(f"m must be >= 1 completion per (prompt, query), or 0 for the default; got {self.m}")
        if not float(self.growth) > 0:
            raise ValueError(f"growth must be > 0; got {self.growth}")
        if int(self.extra_rounds) < 0:
            raise ValueError(f"extra_rounds must be >= 0; got {self.extra_rounds}")
        if not 0.0 < float(self.keep) < 1.0:
            raise ValueError(f"keep must be a share in (0, 1) of the survivors kept per halving; got {self.keep}")
        if int(self.min_queries) < 0:
            raise ValueError(f"min_queries must be >= 0 (0: always double m); got {self.min_queries}")
        if self.drop_z is not None and not float(self.drop_z) >= 0:
            raise ValueError(
                f"drop_z must be >= 0 standard errors (0: halving only; None: 2 for Best-of-N, 0 for majority voting); "
                f"got {self.drop_z}"
            )
        if not float(self.final_drop_z) >= 0:
            raise ValueError(
                f"final_drop_z must be >= 0 standard errors (0: drop_z before the last round too); got {self.final_drop_z}"
            )
        if not np.isfinite(float(self.deploy_z)):
            raise ValueError(f"deploy_z must be a finite number of standard errors (0: best estimate); got {self.deploy_z}")
        if not np.isfinite(float(self.query_z)):
            raise ValueError(f"query_z must be a finite number of standard errors (0: off); got {self.query_z}")
        if int(self.eb_m) < 0:
            raise ValueError(f"eb_m must be >= 0 completions per (prompt, query) (0: off); got {self.eb_m}")

    def fit_runs(self, runs: RunBatch) -> list[Policy]:
        """Every run of the batch, with query-controlled pulls, through the zoo's one round loop."""
        s_n, p_n, n_max = runs.n_runs, runs.n_prompts, runs.n_max
        halvings = math.ceil(math.log(max(p_n, 1)) / math.log(1.0 / float(self.keep)) - 1e-9)
        rounds = max(2, halvings + int(self.extra_rounds))
        share = float(self.growth) ** np.arange(rounds)
        plan = np.floor(runs.budgets[:, None] * (share / share.sum())[None, :] + 1e-9).astype(np.int64)
        alloc = PairedModelAllocation(self, runs, rounds)
        run_rounds(runs, alloc, runs.budgets[:, None].astype(np.int64), plan[:, :, None])
        z = float(self.deploy_z) if alloc.sums.empirical_bayes() else 0.0  # the plug-in deploys its best estimate
        q_hat = deployment_scores(alloc.estimate(), alloc.sums.sd, z, alloc.sums.sd_query, float(self.query_z))
        flat = np.where(np.isnan(q_hat), -np.inf, q_hat).reshape(s_n, len(runs.contexts), p_n * n_max)
        arms = np.argmax(flat, axis=-1).astype(np.int64)  # no data at all: arm 0 (p = 0, N = 1)
        infos = [
            {
                "rounds": rounds,
                "queries_per_round": alloc.log_q[s].tolist(),
                "m_per_round": alloc.log_m[s].tolist(),
                "neyman_per_round": alloc.log_neyman[s].tolist(),
                "survivors": np.flatnonzero(alloc.alive[s]).tolist(),
                "budget_used": int(runs.spent[s]),
            }
            for s in range(s_n)
        ]
        return table_policies(runs, arms, infos)


class PairedModelAllocation:
    """:class:`PSSTModel`'s allocation for :func:`iapo_gym.agents._rounds.run_rounds` (one group per run).

    ``plan``: every surviving prompt ``m_r`` times on each of the round's ``q_r`` new common queries
    (the allocation unit is a query, so a run halves after a round that covered one); ``record``:
    the per-query counts; ``trim``: the model estimates, then the union halving and the confident
    drop. The running plug-in sums of the cells a round touches are taken out before its pulls and
    put back once they are recorded (at the next ``trim``, ``plan`` or :meth:`estimate`).
    """

    def __init__(self, agent: PSSTModel, runs: RunBatch, rounds: int) -> None:
        s_n, p_n = runs.n_runs, runs.n_prompts
        self.agent, self.runs, self.rounds = agent, runs, int(rounds)
        self.weights = np.asarray(runs.contexts.weights, dtype=np.float64)
        n_objectives = int(runs.contexts.weights.shape[1]) - 1
        self.stats = CountStats(s_n, p_n, int(runs.n_train.max()), n_objectives, runs.strategy)
        self.schedule = QuerySchedule(runs.n_train, runs.streams)
        self.sums = PlugInSums(
            self.stats, self.weights, runs.n_max, bool(agent.jackknife), bool(agent.npmle), bool(agent.bon_eb)
        )
        self.alive = np.ones((s_n, p_n), dtype=bool)
        self.m0 = int(agent.m) or (2 if runs.strategy == "mv" else 3)
        self.drop_z = (2.0 if runs.strategy == "bon" else 0.0) if agent.drop_z is None else float(agent.drop_z)
        self.r = 0
        self.log_q = np.zeros((s_n, self.rounds), dtype=np.int64)
        self.log_m = np.zeros((s_n, self.rounds), dtype=np.int64)
        self.log_neyman = np.zeros((s_n, self.rounds), dtype=bool)
        self.pending: tuple[NDArray[np.int64], ...] | None = None

    def _flush(self) -> None:
        if self.pending is not None:
            self.sums.add(self.pending)
            self.pending = None

    def plan(self, avail: NDArray[np.int64], last: bool) -> tuple[NDArray[np.int64], Rows]:
        """``m_r`` completions of every survivor on each of ``q_r`` new common queries (see the module docstring)."""
        self._flush()
        agent, runs, alive, n_max, r = self.agent, self.runs, self.alive, self.runs.n_max, self.r
        avail1 = avail[:, 0]
        n_alive = alive.sum(axis=1)
        m0 = np.full(runs.n_runs, self.m0, dtype=np.int64)
        if int(agent.eb_m) and not int(agent.m) and self.sums.npmle and self.stats.shape[3] == 2:
            # binary answers, seen in a run's own earlier pulls: that run's rounds go deeper
            m0 = np.where(self.stats.completions.sum(axis=1) > 0, max(self.m0, int(agent.eb_m)), m0)
        m_r = np.minimum(n_max, m0 * (min(2**r, n_max) if agent.double_m else 1))  # m0 >= 1: the cap is exact
        if int(agent.min_queries) > 0:  # deepen only while the round keeps min_queries common queries
            afford = avail1 // (np.maximum(n_alive, 1) * int(agent.min_queries))
            m_r = np.maximum(np.minimum(m_r, afford), np.minimum(m0, n_max))
        q_r = avail1 // (n_alive * m_r)
        short = q_r == 0
        m_r = np.where(short, np.minimum(m_r, avail1 // n_alive), m_r)  # one query at a smaller m
        q_r = np.where(short & (m_r >= 1), 1, q_r)
        m_r = np.maximum(m_r, 1)
        # Neyman rounds: a round of a run that affords every train query (and m0 on each) spreads its
        # completions over the (prompt, query) cells by their estimates' noise (plug-in MV only)
        cover = np.zeros(runs.n_runs, dtype=bool)
        if agent.neyman and r >= 1 and runs.strategy == "mv" and self.stats.shape[3] > 2:
            cover = (q_r >= runs.n_train) & (n_alive > 0) & (runs.n_train * self.m0 <= q_r * m_r)
        q_run, q_col = self.schedule.take(np.where(cover, 0, q_r))
        row_q, row_p = np.nonzero(alive[q_run])
        run_rows, col_rows = q_run[row_q], q_col[row_q]
        n_rows = m_r[run_rows]
        if cover.any():  # the covering runs' rows: every train query, Neyman's shares
            ny = self._neyman_rows(cover, n_alive * q_r * m_r)
            assert ny.col is not None
            run_rows, row_p = np.concatenate([run_rows, ny.run]), np.concatenate([row_p, ny.prompt])
            n_rows, col_rows = np.concatenate([n_rows, ny.n]), np.concatenate([col_rows, ny.col])
            q_run, q_col = np.concatenate([q_run, ny.run]), np.concatenate([q_col, ny.col])
        if run_rows.size:
            # the distinct (run, prompt, column) cells, sorted: every alive prompt of a run on each of
            # the run's distinct columns (sorted), built per run instead of sorting all the cells
            width = self.stats.shape[2]
            u_run, u_col = np.divmod(np.unique(q_run * width + q_col), width)
            n_cols = np.bincount(u_run, minlength=runs.n_runs)
            a_run, a_p = np.nonzero(alive & (n_cols > 0)[:, None])
            reps = n_cols[a_run]
            first = np.cumsum(n_cols) - n_cols
            step = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
            s_i = np.repeat(a_run, reps)
            self.pending = (s_i, np.repeat(a_p, reps), u_col[first[s_i] + step])
            self.sums.remove(self.pending)
        self.log_q[:, r], self.log_m[:, r], self.log_neyman[:, r] = q_r, m_r, cover
        self.r += 1
        units = np.where(last, 0, q_r)  # the last round deploys, it does not halve
        return units[:, None], Rows(run_rows, row_p.astype(np.int64), n_rows, col_rows)

    def _neyman_rows(self, cover: NDArray[np.bool_], budget: NDArray[np.int64]) -> Rows:
        """The rows of the runs in ``cover``: ``budget[s]`` completions over every (alive prompt, train query) cell.

        Neyman's allocation for a prompt's value, an average over the train split's queries of
        independent per-query estimates: each cell gets ``m0`` completions and a share of the rest
        proportional to its per-completion standard deviation (:func:`jackknife_mv_credit_var` at
        the prompt's best ``N`` of each context, the largest over the contexts), largest remainders
        first. A cell with fewer than two completions counts as the run's most uncertain one. A
        cell's completions are cut into pulls of at most ``N_max``.
        """
        runs, st, n_max = self.runs, self.stats, self.runs.n_max
        q_hat = self.estimate()
        best_n = np.argmax(np.where(np.isnan(q_hat), -np.inf, q_hat), axis=-1)  # (S, C, P)
        in_split = np.arange(st.shape[2])[None, :] < runs.n_train[:, None]
        s_i, p_i, w_i = np.nonzero((cover[:, None] & self.alive)[:, :, None] & in_split[:, None, :])
        counts = st.gold_first(s_i, p_i, w_i)
        var = jackknife_mv_credit_var(counts, n_max)  # (K, n_max)
        sd = np.sqrt(np.take_along_axis(var, best_n[s_i, :, p_i], axis=1).max(axis=1))
        few = counts.sum(axis=1) < 2
        if few.any():
            top = np.zeros(runs.n_runs)
            np.maximum.at(top, s_i, sd)
            sd = np.where(few, top[s_i], sd)
        cells = np.bincount(s_i, minlength=runs.n_runs)
        extra = budget - cells * self.m0  # >= 0 for the runs in cover
        total = np.bincount(s_i, weights=sd, minlength=runs.n_runs)[s_i]
        share = extra[s_i] * np.where(total > 0, sd / np.where(total > 0, total, 1.0), 1.0 / cells[s_i])
        n_cell = np.floor(share).astype(np.int64)
        left = extra - np.bincount(s_i, weights=n_cell, minlength=runs.n_runs).astype(np.int64)
        order = np.lexsort((n_cell - share, s_i))  # per run (cells are run-major), largest remainder first
        rank = np.arange(order.size) - (np.cumsum(cells) - cells)[s_i[order]]
        n_cell[order[rank < left[s_i[order]]]] += 1
        n_cell += self.m0
        pieces = -(-n_cell // n_max)
        cell = np.repeat(np.arange(n_cell.size), pieces)
        piece = np.arange(cell.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        return Rows(s_i[cell], p_i[cell], np.minimum(n_max, n_cell[cell] - piece * n_max), w_i[cell])

    def record(self, pulls: Pulls, rows: Rows, sel: NDArray[np.int64]) -> None:
        """Per-query outcome counts, values and costs."""
        assert rows.col is not None  # every row names its query
        self.stats.add(pulls, rows.run[sel], rows.col[sel])

    def estimate(self) -> NDArray[np.float64]:
        """``Qhat (S, C, P, n_max)`` of the survivors from everything recorded."""
        self._flush()
        return self.sums.q(self.alive, self.weights, bool(self.agent.shrink))

    def trim(self, groups: NDArray[np.bool_]) -> None:
        """Union halving by each prompt's best arm, then drop the confidently worse (runs in ``groups (S, 1)``).

        On Best-of-N tasks the trim before the last round drops at ``final_drop_z`` standard errors
        instead of ``drop_z`` (when set): the last round's budget goes to the prompts that are
        near-ties of a context's leader, which the deployment has to tell apart.
        """
        q_hat = self.estimate()
        best_se = best_arms_and_errors(q_hat, self.sums.sd)  # (S, C, P): each prompt's best arm, once for both rules
        best = np.where(np.isinf(best_se[0]), np.nan, best_se[0])
        keep = _keep_top(best, self.alive, bool(self.agent.strict), float(self.agent.keep))
        z = self.drop_z
        if self.r == self.rounds - 1 and float(self.agent.final_drop_z) > 0 and self.runs.strategy == "bon":
            z = float(self.agent.final_drop_z)  # the last round goes to the near-ties only
        if z > 0:
            keep &= ~confidently_worse(q_hat, self.sums.sd, self.alive, z, best_se)
        self.alive = np.where(groups[:, :1], keep, self.alive)
