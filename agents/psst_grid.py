"""PSST on a discretised context grid: the baseline for continuous contexts.

The continuous context distribution (:func:`iapo_gym.continuous.distribution_of`) is replaced by a
finite grid (:meth:`iapo_gym.continuous.ContinuousContexts.grid`): ``n_weights`` objective-weight
points (the midpoints of equal cells of ``w_1`` in ``[0, 1]``; MV tasks have the single weight 1)
times ``n_costs`` cost levels (midpoints of equal cells of the cost range), or, with
``grid="finite"``, the task's own finite context set (the paper's 27 / 3 contexts). PSST
(:func:`iapo_gym.agents.psst.run_trimming`: rounds, Eq. 6 allocation, nested and cross-context reuse,
per-context halving, stockpiling) then runs with every pull re-scored under the grid contexts,
and deployment is **nearest grid point** (:class:`iapo_gym.agents.base.TablePolicy`: L1 distance on the
weight vector).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from iapo_gym.agents._common import BatchAgent
from iapo_gym.agents._engine import NestedStats
from iapo_gym.agents.base import Policy, TablePolicy
from iapo_gym.agents.psst import n_rounds, trim_and_choose
from iapo_gym.contexts import ContextSet
from iapo_gym.continuous import distribution_of
from iapo_gym.runs import RunBatch


@dataclass
class PSSTGrid(BatchAgent):
    """PSST on a finite grid of the continuous context space, nearest-grid-point deployment.

    Args:
        n_weights: objective-weight grid points (``K = 2``; ignored for MV, where ``K = 1``).
        n_costs: cost-weight grid levels.
        grid: ``"cells"`` (the grid above) or ``"finite"`` (the task's finite context set).
    """

    n_weights: int = 9
    n_costs: int = 3
    grid: Literal["cells", "finite"] = "cells"
    name: ClassVar[str] = "psst_grid"

    def __post_init__(self) -> None:
        if self.grid not in ("cells", "finite"):
            raise ValueError(f"grid must be 'cells' or 'finite'; got {self.grid!r}")
        if int(self.n_weights) < 1 or int(self.n_costs) < 1:
            raise ValueError("n_weights and n_costs must be >= 1")

    def grid_contexts(self, env: Any) -> ContextSet:
        """The finite grid this agent runs PSST on for ``env``."""
        if self.grid == "finite":
            return getattr(env, "unwrapped", env).contexts
        return distribution_of(env).grid(int(self.n_weights), int(self.n_costs))

    def fit_runs(self, runs: RunBatch) -> list[Policy]:
        """Fit every run of the batch at once (see :meth:`iapo_gym.agents.base.BatchAgent.fit_runs`)."""
        grid = self.grid_contexts(runs.envs[0])
        n_arms = runs.n_prompts * runs.n_max
        stats = NestedStats(runs.n_runs, runs.n_prompts, runs.n_max, grid)
        active = np.ones((runs.n_runs, len(grid), n_arms), dtype=bool)
        infos, arms = trim_and_choose(runs, stats, active, runs.budgets.copy(), n_rounds(n_arms))
        policies: list[Policy] = []
        for s, info in enumerate(infos):
            info["budget_used"] = int(runs.spent[s])
            info["grid_size"] = len(grid)
            policies.append(TablePolicy(grid, arms[s], runs.n_max, budget_used=int(runs.spent[s]), info=info))
        return policies
