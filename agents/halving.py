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

from iapo_gym.agents._common import BatchAgent, best_arms, halve, table_policies
from iapo_gym.agents._engine import random_fit, row_utility
from iapo_gym.agents.base import Policy
from iapo_gym.agents.psst import n_rounds
from iapo_gym.runs import RunBatch


@dataclass
class SequentialHalving(BatchAgent):
    """Per-context Sequential Halving over all arms, without nested or cross-context reuse."""

    name: ClassVar[str] = "seqhalving"

    def fit_runs(self, runs: RunBatch) -> list[Policy]:
        """Fit every run of the batch at once (see :meth:`iapo_gym.agents.base.BatchAgent.fit_runs`)."""
        s_n, p_n, n_max = runs.n_runs, runs.n_prompts, runs.n_max
        c_n = len(runs.contexts)
        a_n = p_n * n_max
        weights = runs.contexts.weights
        arm_cost = np.arange(a_n) % n_max + 1
        budgets = runs.budgets[:, None] // c_n + (np.arange(c_n)[None, :] < (runs.budgets % c_n)[:, None])
        rounds = n_rounds(a_n)
        per_round = budgets // rounds
        sums = np.zeros(s_n * c_n * a_n)
        counts = np.zeros(s_n * c_n * a_n, dtype=np.int64)
        active = np.ones((s_n, c_n, a_n), dtype=bool)
        carry = np.zeros((s_n, c_n), dtype=np.int64)
        used = np.zeros((s_n, c_n), dtype=np.int64)
        halvings = np.zeros(s_n, dtype=np.int64)
        for r in range(rounds):
            last = r == rounds - 1
            avail = budgets - used if last else per_round + carry
            m = (active * arm_cost).sum(axis=-1)
            lam = np.where(m > 0, avail // np.maximum(m, 1), 0)
            cell_s, cell_c, cell_a = np.nonzero(active)
            reps = lam[cell_s, cell_c]
            rows = [np.repeat(x, reps) for x in (cell_s, cell_c, cell_a)]
            if last:
                group = cell_s * c_n + cell_c
                keys = runs.streams.random(np.bincount(cell_s, minlength=s_n))  # cells are run-major
                extra = random_fit(group, arm_cost[cell_a], (avail - lam * m).reshape(-1), keys)
                rows = [np.r_[x, y[extra]] for x, y in zip(rows, (cell_s, cell_c, cell_a), strict=True)]
            run_rows, ctx_rows, arm_rows = rows
            spent = np.zeros((s_n, c_n), dtype=np.int64)
            for pulls, sel in runs.pull(run_rows, arm_rows // n_max, arm_rows % n_max + 1):
                s, c, a = run_rows[sel], ctx_rows[sel], arm_rows[sel]
                u = row_utility(pulls, weights[c])
                flat = (s * c_n + c) * a_n + a
                sums += np.bincount(flat, weights=u, minlength=sums.size)
                counts += np.bincount(flat, minlength=counts.size)
                np.add.at(spent, (s, c), pulls.n)
            used += spent
            carry = avail - spent
            trim = lam >= 1  # (S, C)
            if trim.any():
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean = (sums / counts).reshape(s_n, c_n, a_n)
                # halve() trims whole runs; give it one "run" per (seed, context) pair.
                flat_active = active.reshape(s_n * c_n, 1, a_n)
                halve(flat_active, mean.reshape(s_n * c_n, 1, a_n), trim.reshape(-1))
                active = flat_active.reshape(s_n, c_n, a_n)
                halvings += trim.all(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (sums / counts).reshape(s_n, c_n, a_n)
        arms = best_arms(active, mean)
        infos = [
            {"rounds": rounds, "halvings": int(halvings[s]), "spent_per_context": used[s].tolist(),
             "budget_used": int(runs.spent[s])}
            for s in range(s_n)
        ]
        return table_policies(runs, arms, infos)
