"""Uniform: structure-aware uniform exploration in one batch (paper section 3.4).

Every prompt's largest arm ``(p, N_max)`` is pulled equally often, ``floor(T / (|P| * N_max))``
times (one uniformly drawn train query per pull); nested reuse turns each pull into samples of
every ``(p, k)`` and cross-context reuse scores it under every context, so every arm gets data.
The deployed arm of a context is the arm with the highest empirical mean.

Decisions (the authors' code pulls ``max(1, floor(...))`` times and so overspends when
``T < |P| * N_max``): the remainder ``T - lambda * |P| * N_max`` is spent on one extra pull of a
uniformly random (seeded) subset of prompts that fits, so the agent never spends more than ``T``
and wastes less than ``N_max`` completions. Arms without data rank below every seen arm; a
context with no data at all deploys ``(p=0, N=1)``.

All seeds of a batch run at once, their pulls drawn in cache-sized calls
(:meth:`iapo_gym.runs.RunBatch.cap_calls`), so a batch is not slower per run than one run alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from iapo_gym.agents._common import BatchAgent, best_arms, table_policies
from iapo_gym.agents._engine import NestedStats, random_fit
from iapo_gym.agents.base import Policy
from iapo_gym.runs import RunBatch


@dataclass
class Uniform(BatchAgent):
    """Structure-aware uniform allocation over prompts at ``N_max``; no hyper-parameters."""

    name: ClassVar[str] = "uniform"

    def fit_runs(self, runs: RunBatch) -> list[Policy]:
        """Fit every run of the batch at once (see :meth:`iapo_gym.agents.base.BatchAgent.fit_runs`)."""
        s_n, p_n, n_max = runs.n_runs, runs.n_prompts, runs.n_max
        runs.cap_calls()  # the whole budget is pulled at once: cache-sized calls
        stats = NestedStats(s_n, p_n, n_max, runs.contexts)
        lam = runs.budgets // (p_n * n_max)
        cell_run = np.repeat(np.arange(s_n), p_n)
        cell_prompt = np.tile(np.arange(p_n), s_n)
        keys = runs.streams.random(np.full(s_n, p_n))
        extra = random_fit(cell_run, np.full(cell_run.size, n_max), runs.budgets - lam * p_n * n_max, keys)
        reps = lam[cell_run] + extra
        run_rows = np.repeat(cell_run, reps)
        prompt_rows = np.repeat(cell_prompt, reps)
        for pulls, rows in runs.pull(run_rows, prompt_rows, np.full(run_rows.size, n_max)):
            stats.add(pulls, run_rows[rows])
        active = np.ones((s_n, len(runs.contexts), p_n * n_max), dtype=bool)
        arms = best_arms(active, stats.means().reshape(active.shape))
        infos = [
            {
                "pulls_per_prompt": int(lam[s]),
                "extra_pulls": int(extra[cell_run == s].sum()),
                "budget_used": int(runs.spent[s]),
            }
            for s in range(s_n)
        ]
        return table_policies(runs, arms, infos)
