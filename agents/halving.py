"""Naive Sequential Halving: the structure ablation (no sharing across scales or contexts).

Each context runs its own Sequential Halving (Karnin et al., 2013) over all ``|P| * N_max`` arms
``(p, N)`` treated as unrelated arms, which is the baseline Theorem 1 compares PSST against:

* the budget is split evenly over contexts, ``T_c = floor(T / |C|)`` (the first ``T mod |C|``
  contexts get one completion more);
* ``R = ceil(log2(|P| * N_max))`` rounds with ``floor(T_c / R)`` completions each; every active arm
  of the context gets ``lambda = floor(n_r / sum_{a active} N_a)`` pulls (cost-aware equal
  allocation, the analogue of Eq. 6 when every arm must be pulled itself);
* a pull of ``(p, N)`` is scored ONLY as one sample of ``(p, N)`` and ONLY under its own context
  (no nested blocks, no cross-context reuse);
* per context the bottom ``ceil(n / 2)`` active arms are removed (keeping at least one), as PSST.

Budget rules as PSST (never more than ``T``; a round that cannot give every active arm one pull
carries its budget forward and does not halve; the last round spends its remainder on a seeded
random subset of active arms that fits). Statistics accumulate over rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from iapo_gym import _jit
from iapo_gym.agents._common import BatchAgent, best_arms, halve, table_policies
from iapo_gym.agents._engine import add_per_cell, random_fit, row_utility
from iapo_gym.agents._rounds import Rows, equal_rounds, run_rounds
from iapo_gym.agents.base import Policy
from iapo_gym.agents.psst import n_rounds
from iapo_gym.runs import RunBatch
from iapo_gym.sampling import Pulls


@dataclass
class PerContext:
    """Naive Sequential Halving's allocation for :func:`iapo_gym.agents._rounds.run_rounds`: one budget per (run, context).

    Every active arm of a context gets ``lambda = floor(avail / sum_{a active} N_a)`` pulls for that
    context alone (the last round adds a random subset that fits); a pull is one sample of its own
    arm under its own context.
    """

    runs: RunBatch
    active: NDArray[np.bool_]  # (S, C, A)

    def __post_init__(self) -> None:
        s_n, c_n, a_n = self.active.shape
        self.arm_cost = np.arange(a_n) % self.runs.n_max + 1
        self.sums = np.zeros(s_n * c_n * a_n)
        self.counts = np.zeros(s_n * c_n * a_n, dtype=np.int64)
        self._m: NDArray[np.int64] | None = None  # (S, C) completions of one pull of every active arm
        self._scratch: NDArray[np.float64] | None = None  # zeros between calls (add_per_cell)

    def plan(self, avail: NDArray[np.int64], last: bool) -> tuple[NDArray[np.int64], Rows]:
        """``(lambda (S, C), rows)``: ``lambda`` pulls of every active arm per (run, context)."""
        s_n, c_n, a_n = self.active.shape
        if self._m is None:  # changes only when arms are trimmed
            self._m = (self.active * self.arm_cost).sum(axis=-1)
        m = self._m
        lam = np.where(m > 0, avail // np.maximum(m, 1), 0)
        if not last and not lam.any():  # no context affords a pull of every active arm: the budget carries forward
            none = np.zeros(0, dtype=np.int64)
            return lam, Rows(none, none, none, None, none)
        cell_s, cell_c, cell_a = np.nonzero(self.active)  # (run, context, arm) cells, run-major (no divisions)
        group = cell_s * c_n + cell_c  # one budget group per (run, context)
        reps = lam.reshape(-1)[group]
        rows = [np.repeat(x, reps) for x in (cell_s, cell_c, cell_a)] if lam.any() else [cell_s[:0]] * 3
        if last:
            keys = self.runs.streams.random(np.bincount(cell_s, minlength=s_n))  # cells are run-major
            extra = np.flatnonzero(random_fit(group, self.arm_cost[cell_a], (avail - lam * m).reshape(-1), keys))
            rows = [np.concatenate([x, y[extra]]) for x, y in zip(rows, (cell_s, cell_c, cell_a), strict=True)]
        run_rows, ctx_rows, arm_rows = rows
        n_max = self.runs.n_max
        return lam, Rows(run_rows, arm_rows // n_max, arm_rows % n_max + 1, None, ctx_rows)

    def record(self, pulls: Pulls, rows: Rows, sel: NDArray[np.int64]) -> None:
        """Each pull's utility under its own context, as one sample of its own arm."""
        assert rows.group is not None
        _, c_n, a_n = self.active.shape
        s, c = rows.run[sel], rows.group[sel]
        a = rows.prompt[sel] * self.runs.n_max + rows.n[sel] - 1
        u = row_utility(pulls, self.runs.contexts.weights[c])
        flat = (s * c_n + c) * a_n + a
        if _jit.enabled():  # only the touched cells (the same bits: see add_per_cell)
            if self._scratch is None:
                self._scratch = np.zeros(self.sums.size)
            add_per_cell(self.sums, self.counts, self._scratch, flat, u)
            return
        self.sums += np.bincount(flat, weights=u, minlength=self.sums.size)
        self.counts += np.bincount(flat, minlength=self.counts.size)

    def means(self) -> NDArray[np.float64]:
        """``(S, C, A)`` empirical means (NaN where unseen)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.sums / self.counts).reshape(self.active.shape)

    def trim(self, groups: NDArray[np.bool_]) -> None:
        """Halve the active arms of every (run, context) in ``groups (S, C)``."""
        s_n, c_n, a_n = self.active.shape
        self._m = None
        # halve() trims whole runs; give it one "run" per (seed, context) pair (a view of active).
        halve(self.active.reshape(s_n * c_n, 1, a_n), self.means().reshape(s_n * c_n, 1, a_n), groups.reshape(-1))


@dataclass
class SequentialHalving(BatchAgent):
    """Per-context Sequential Halving over all arms, without nested or cross-context reuse."""

    name: ClassVar[str] = "seqhalving"

    def fit_runs(self, runs: RunBatch) -> list[Policy]:
        """Fit every run of the batch at once (see :meth:`iapo_gym.agents.base.BatchAgent.fit_runs`)."""
        s_n, c_n, a_n = runs.n_runs, len(runs.contexts), runs.n_prompts * runs.n_max
        budgets = runs.budgets[:, None] // c_n + (np.arange(c_n)[None, :] < (runs.budgets % c_n)[:, None])
        rounds = n_rounds(a_n)
        alloc = PerContext(runs, np.ones((s_n, c_n, a_n), dtype=bool))
        log = run_rounds(runs, alloc, budgets, equal_rounds(budgets, rounds))
        arms = best_arms(alloc.active, alloc.means())
        infos = [
            {"rounds": rounds, "halvings": halvings, "spent_per_context": used, "budget_used": spent}
            for halvings, used, spent in zip(log.halvings.tolist(), log.used.tolist(), runs.spent.tolist(), strict=True)
        ]
        return table_policies(runs, arms, infos)
