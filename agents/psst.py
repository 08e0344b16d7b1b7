"""PSST: Prompt-Scaling via Sequential Trimming (paper Algorithm 1, Eq. 6).

The algorithm, as in the paper:

* ``R = ceil(log2(|P| * N_max))`` rounds (at least 1); every context starts with all arms active.
* Round ``r`` gets the equal budget ``n_r = floor(T / R)``. For every prompt that still has an
  active arm in SOME context, only its largest surviving ``N`` over the union of contexts,
  ``Nmax_r(p)``, is pulled; Eq. 6 gives every such maximal arm ``lambda = floor(n_r / M)`` pulls
  with ``M = sum_p Nmax_r(p)`` (one query of the train split per pull, drawn uniformly).
* Every pull feeds every surviving ``(p, k <= Nmax_r(p))`` through nested reuse (``floor(N / k)``
  disjoint blocks of each size ``k``) and every context through cross-context reuse.
* Stockpiling: statistics accumulate over rounds (the authors' recommendation and their code).
* Per context, the bottom ``ceil(|A_c| / 2)`` active arms by empirical mean are removed (the
  paper; the authors' code removes ``floor(|A_c| / 2)``), keeping at least one.
* The deployed arm of a context is its surviving arm with the highest empirical mean.

Budget decisions (the paper's ``floor`` can spend nothing when ``n_r < M``, e.g. MATH at
``T = 5,000``: ``n_r = 500 < M = 800``; the authors' code forces one pull per maximal arm and then
overspends ``T``; the arithmetic follows from Eq. 6 of the paper):

* **Never more than T.** Each round may spend ``n_r`` plus whatever earlier rounds left unspent
  (carry-forward); the last round may spend everything left, including ``T - R * floor(T / R)``.
* A round whose available budget is below ``M`` pulls nothing, carries its budget forward and does
  NOT halve (halving without new data would only repeat the previous decision with less
  information; deferring lets later, larger rounds decide).
* In the last round the remainder ``available - lambda * M`` (always ``< M``) is spent on a
  uniformly random subset (seeded) of the maximal arms whose total cost fits, so little budget
  is wasted. Any completions still unspent (less than the cheapest remaining maximal arm) are
  reported, never spent.
* Unseen active arms (possible only when nothing could be pulled at all) rank below seen ones; a
  context with no seen arm deploys its lowest-index active arm (``(p=0, N=1)`` initially, the
  authors' fallback).

``policy.budget_used`` is the number of completions actually spent; ``policy.info`` holds ``R``,
the per-round budget and per-round spend, the number of executed halvings and the surviving arm
count per context.

All seeds of a batch run at once: activity flags ``(S, C, P * N_max)``, statistics
``(S, P, ., N_max)`` (:class:`iapo_gym.agents._engine.NestedStats`), one sampler call per round and per
distinct pull size; the round loop is the zoo's one (:func:`iapo_gym.agents._rounds.run_rounds`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from iapo_gym.agents._common import BatchAgent, best_arms_of, table_policies
from iapo_gym.agents._engine import NestedStats
from iapo_gym.agents._rounds import MaximalArms, Tally, equal_rounds, maximal_sizes, run_rounds, trimming_info
from iapo_gym.agents.base import Policy
from iapo_gym.runs import RunBatch

__all__ = ["PSST", "maximal_sizes", "n_rounds", "run_trimming", "trim_and_choose"]


def n_rounds(n_arms: int) -> int:
    """``R = ceil(log2(n_arms))``, at least 1 (paper Algorithm 1)."""
    return max(1, math.ceil(math.log2(max(int(n_arms), 1))))


def run_trimming(
    runs: RunBatch,
    stats: Tally,
    active: NDArray[np.bool_],
    budgets: NDArray[np.int64],
    rounds: int,
) -> list[dict[str, Any]]:
    """The PSST loop (rounds, Eq. 6 allocation, nested + cross-context reuse, per-context halving).

    :func:`iapo_gym.agents._rounds.run_rounds` with the :class:`~iapo_gym.agents._rounds.MaximalArms`
    allocation and equal rounds of ``floor(T / R)``.

    Args:
        runs: the batch (pulls are charged to it).
        stats: nested tallies, updated in place (stockpiling: may already hold data).
        active: ``(S, C, P * N_max)`` per-context active flags, trimmed in place.
        budgets: ``(S,)`` completions this phase may spend per run.
        rounds: ``R``.

    Returns one diagnostics dict per run.
    """
    return _trimming(runs, stats, active, budgets, rounds, choose=False)[0]


def trim_and_choose(
    runs: RunBatch,
    stats: Tally,
    active: NDArray[np.bool_],
    budgets: NDArray[np.int64],
    rounds: int,
) -> tuple[list[dict[str, Any]], NDArray[np.int64]]:
    """:func:`run_trimming`, then each context's deployed arm: ``(infos, arms (S, C))``.

    ``arms`` is :func:`~iapo_gym.agents._common.best_arms_of` ``(active, stats)``, read from the
    loop's compact arm lists when it kept them (compiled halving on
    :class:`~iapo_gym.agents._engine.NestedStats`: the same arms, without a pass over ``active``).
    """
    infos, arms = _trimming(runs, stats, active, budgets, rounds, choose=True)
    assert arms is not None
    return infos, arms


def _trimming(
    runs: RunBatch, stats: Tally, active: NDArray[np.bool_], budgets: NDArray[np.int64], rounds: int, choose: bool
) -> tuple[list[dict[str, Any]], NDArray[np.int64] | None]:
    """:func:`run_trimming`'s loop; the deployed arms too when ``choose``."""
    group_budgets = np.asarray(budgets, dtype=np.int64)[:, None]  # one budget group per run
    plan = equal_rounds(group_budgets, rounds)
    alloc = MaximalArms(runs, stats, active)
    log = run_rounds(runs, alloc, group_budgets, plan)
    arms = survivors = None
    if alloc.compact is not None:
        alloc.compact.sync()  # its halvings kept the active arms in compact lists
        arms, survivors = alloc.compact.best_arms()
    elif choose:
        arms = best_arms_of(active, stats)
    return trimming_info(log, active, rounds, plan, survivors), arms


@dataclass
class PSST(BatchAgent):
    """PSST (paper Algorithm 1); no hyper-parameters. See the module docstring for every decision."""

    name: ClassVar[str] = "psst"

    def fit_runs(self, runs: RunBatch) -> list[Policy]:
        """Fit every run of the batch at once (see :meth:`iapo_gym.agents.base.BatchAgent.fit_runs`)."""
        n_arms = runs.n_prompts * runs.n_max
        stats = NestedStats(runs.n_runs, runs.n_prompts, runs.n_max, runs.contexts)
        active = np.ones((runs.n_runs, len(runs.contexts), n_arms), dtype=bool)
        infos, arms = trim_and_choose(runs, stats, active, runs.budgets.copy(), n_rounds(n_arms))
        for info, used in zip(infos, runs.spent.tolist(), strict=True):
            info["budget_used"] = used
        return table_policies(runs, arms, infos)
