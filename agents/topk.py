"""Top-K screening, PSST+K (paper section 3.3; the authors' ``PSSTHAgent``).

1. Warm-up: ``T_0 = floor(rho * T)`` completions of ``N = 1`` pulls spread uniformly over prompts:
   every prompt gets ``floor(T_0 / |P|)`` pulls and a uniformly random (seeded) subset of
   ``T_0 mod |P|`` prompts one more (the authors cycle prompts round-robin in index order, which
   favours low indices). Queries are drawn uniformly from the train split; every sample is scored
   under every context.
2. Per context keep the ``K`` prompts with the highest ``N = 1`` estimate (ties -> lower index).
3. PSST (:func:`iapo_gym.agents.psst.run_trimming`) on the per-context arm sets ``TopK_c x [N_max]`` with the
   remaining budget ``T - spent`` and ``R = ceil(log2(K * N_max))`` rounds (the per-context arm
   count, as Algorithm 1's ``R = ceil(log2 |A|)``; the authors' code does the same).

Decision on the warm-up data: it is **reused** (``reuse_warmup=True``, default). The N = 1 samples
are unbiased samples of ``(p, 1)``, and the paper recommends stockpiling; the authors' code resets
them (``reuse_warmup=False`` reproduces that). The same budget rules as PSST apply (never more
than ``T``; carry-forward; last-round random top-up). ``rho = 0.2`` is the paper's tuned value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from iapo_gym.agents._common import BatchAgent, ranking_key, table_policies
from iapo_gym.agents._engine import NestedStats, random_fit
from iapo_gym.agents.base import Policy
from iapo_gym.agents.psst import n_rounds, trim_and_choose
from iapo_gym.runs import RunBatch


@dataclass
class TopK(BatchAgent):
    """PSST after an N = 1 screening that keeps the Top-``k`` prompts per context.

    Args:
        k: prompts kept per context (paper: 1, 4, 8).
        rho: share of the budget spent on the warm-up (paper: 0.2).
        reuse_warmup: keep the warm-up samples in phase 2 (see the module docstring).
    """

    k: int = 4
    rho: float = 0.2
    reuse_warmup: bool = True
    name: ClassVar[str] = "topk"

    def __post_init__(self) -> None:
        if int(self.k) < 1:
            raise ValueError(f"k must be >= 1 prompt; got {self.k}")
        if not 0.0 <= float(self.rho) < 1.0:
            raise ValueError(f"rho must lie in [0, 1); got {self.rho}")

    def fit_runs(self, runs: RunBatch) -> list[Policy]:
        """Fit every run of the batch at once (see :meth:`iapo_gym.agents.base.BatchAgent.fit_runs`)."""
        s_n, p_n, n_max = runs.n_runs, runs.n_prompts, runs.n_max
        c_n = len(runs.contexts)
        k = min(int(self.k), p_n)
        stats = NestedStats(s_n, p_n, n_max, runs.contexts)
        warm = np.floor(float(self.rho) * runs.budgets).astype(np.int64)
        per = warm // p_n
        cell_run = np.repeat(np.arange(s_n), p_n)
        cell_prompt = np.tile(np.arange(p_n), s_n)
        keys = runs.streams.random(np.full(s_n, p_n))
        extra = random_fit(cell_run, np.ones(cell_run.size, np.int64), warm - per * p_n, keys)
        reps = per[cell_run] + extra
        run_rows = np.repeat(cell_run, reps)
        for pulls, rows in runs.pull(run_rows, np.repeat(cell_prompt, reps), np.ones(run_rows.size, np.int64)):
            stats.add(pulls, run_rows[rows])
        warm_spent = runs.spent.copy()
        # Top-k prompts per context by the N = 1 estimate; unseen prompts rank last, ties -> lower index.
        key = ranking_key(np.ones((s_n, c_n, p_n), bool), stats.means()[..., 0])
        top = np.argsort(-key, axis=-1, kind="stable")[..., :k]
        keep = np.zeros((s_n, c_n, p_n), dtype=bool)
        np.put_along_axis(keep, top, True, axis=-1)
        active = np.repeat(keep[..., None], n_max, axis=-1).reshape(s_n, c_n, p_n * n_max)
        if not self.reuse_warmup:
            stats = NestedStats(s_n, p_n, n_max, runs.contexts)
        infos, arms = trim_and_choose(runs, stats, active, runs.budgets - runs.spent, n_rounds(k * n_max))
        for info, warm_s, top_s, used in zip(infos, warm_spent.tolist(), top.tolist(), runs.spent.tolist(), strict=True):
            info.update(warmup_spent=warm_s, screened=top_s, budget_used=used)
        return table_policies(runs, arms, infos)
