"""The public building blocks of the zoo's batched agents (for your own :class:`~iapo_gym.agents.base.BatchAgent`).

A batched agent implements ``fit_runs(batch)`` on an :class:`iapo_gym.runs.RunBatch` (runs,
budgets, per-run random streams, ``batch.pull``) and may use:

* :class:`NestedStats` -- per (run, prompt, N) tallies with nested reuse (every pull of ``(p, N)``
  feeds every ``(p, k <= N)`` through its ``floor(N / k)`` disjoint blocks) and cross-context reuse
  (every block scored under every context); ``means()`` gives ``(S, C, P, N_max)`` means.
  ``weighting="query"`` (:class:`PairedStats`) weights each pull (query) once instead of each block.
* :func:`halve` (per-context removal of the bottom half of the active arms), :func:`best_arms`,
  :func:`ranking_key`, :func:`maximal_sizes`, :func:`n_rounds`.
* :func:`run_rounds` -- the zoo's one round loop (planned round budgets, carry-forward, pulls,
  records, halvings) driven by an :class:`Allocation`: :class:`MaximalArms` (PSST, Top-K),
  :class:`CommonQueries` (PSST-Paired), :class:`PerContext` (Sequential Halving), or your own.
  :func:`run_trimming` is PSST's whole loop (Eq. 6 allocation, equal rounds, last-round random
  top-up, halving) on any active set and any statistics object with ``add`` / ``means``.
* :func:`random_fit` -- a random subset per group that fits an allowance (keys from the runs' streams).
* :func:`table_policies` -- one :class:`~iapo_gym.agents.base.TablePolicy` per run.

Keep every random number on ``batch.streams`` and every pull on ``batch.pull``: then a run's policy
depends on its seed only (``iapo_gym.agents.testing.check_invariance``).
"""

from __future__ import annotations

from iapo_gym.agents._common import best_arms, halve, ranking_key, table_policies
from iapo_gym.agents._engine import NestedStats, nested_gains, random_fit, row_utility
from iapo_gym.agents._rounds import Allocation, MaximalArms, RoundLog, Rows, equal_rounds, maximal_sizes, run_rounds
from iapo_gym.agents.halving import PerContext
from iapo_gym.agents.psst import n_rounds, run_trimming
from iapo_gym.agents.psst_paired import CommonQueries, PairedStats, QuerySchedule
from iapo_gym.runs import RunBatch, RunStreams

__all__ = [
    "Allocation",
    "CommonQueries",
    "MaximalArms",
    "NestedStats",
    "PairedStats",
    "PerContext",
    "QuerySchedule",
    "RoundLog",
    "Rows",
    "RunBatch",
    "RunStreams",
    "best_arms",
    "equal_rounds",
    "halve",
    "maximal_sizes",
    "n_rounds",
    "nested_gains",
    "random_fit",
    "ranking_key",
    "row_utility",
    "run_rounds",
    "run_trimming",
    "table_policies",
]
