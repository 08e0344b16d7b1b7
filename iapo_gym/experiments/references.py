"""Reference policies computed from the exact oracle (not learners), run through the experiment harness.

A reference is an :class:`~iapo_gym.agents.base.Agent` that spends nothing and reads what no
learner may read (the run's table and test split), so that a report can show a limit next to the
learners with the same protocol, results.csv and statistics. It is not in the zoo (it would fail
``check_agent``'s deployment view by design); name it by import path, e.g.
``run_experiment(agents="psst_grid,grid_oracle=iapo_gym.experiments.references:GridOracle", ...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from iapo_gym.agents.base import Agent, Policy, TablePolicy

__all__ = ["GridOracle"]


@dataclass
class GridOracle(Agent):
    """The exact best arm (on the run's test queries) at each point of PSST (grid)'s grid.

    Deployed at the nearest grid point, as PSST (grid) deploys: what that agent approaches as the
    budget grows, i.e. the discretisation floor of any nearest-grid agent. Budget-free (spends
    nothing); the same policy at every budget.

    Attributes:
        n_weights, n_costs: the grid (:meth:`iapo_gym.continuous.ContinuousContexts.grid`), as
            :class:`iapo_gym.agents.psst_grid.PSSTGrid`'s.
    """

    n_weights: int = 9
    n_costs: int = 3
    name: ClassVar[str] = "grid_oracle"

    def fit(self, env: Any, budget: int, seed: int) -> Policy:
        """The grid's exact best arms on ``env``'s test split (reads the table: a reference, not a learner)."""
        from iapo_gym.agents.psst_grid import PSSTGrid
        from iapo_gym.continuous import exact_q_values
        from iapo_gym.experiments.evaluate import query_subtable

        env = getattr(env, "unwrapped", env)
        grid = PSSTGrid(n_weights=self.n_weights, n_costs=self.n_costs).grid_contexts(env)
        sub = query_subtable(env.table, env.test_queries)  # its oracle cache dies with it
        q = exact_q_values(sub, grid.weights, None)
        arms = q.reshape(q.shape[0], -1).argmax(axis=1)
        return TablePolicy(grid, arms, int(env.n_max), budget_used=0, info={"reference": "exact test-split Q"})
