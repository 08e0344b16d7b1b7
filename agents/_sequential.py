"""The online loop shared by UCB, epsilon-greedy and Softmax, vectorised across seeds.

Every step, each run that still has budget (all ``S`` runs of a batch at once):

1. draws a context from the context distribution (the authors draw uniformly; the two coincide on
   every released task);
2. picks a *feasible* arm (``N <= remaining budget``) with the agent's rule (:meth:`choose`);
3. pulls it (one uniformly drawn train query) and records every nested block under every context
   (the paper: "all baselines share data across contexts and scales").

The loop ends when every run has spent its budget exactly (an ``N = 1`` arm is always feasible
while budget remains), so these agents never exceed ``T`` and waste nothing. The deployed arm of a
context is the arm with the highest empirical mean (unseen arms rank last): the paper's and the
authors' rule, kept as the default (``lcb = 0``).

That rule has a winner's curse that makes these agents *lose* ACR as the budget grows on MATH
(docs/BEYOND.md, "The UCB / epsilon-greedy / Softmax anomaly"): the adaptive loop leaves many
large-``N`` arms with a handful of blocks from a handful of queries, their means sit near the
maximal credit, and the empirical best over all ``|P| N_max`` arms picks one of them once the
well-sampled arms have regressed towards their true values. ``lcb > 0`` deploys the arm with the
highest ``mean - lcb / sqrt(count)`` instead (a lower confidence bound on the utility scale).

Ties in the selection rule are broken by a per-run random priority over arms drawn once from the
seed (the authors flip coins; both are uniform over tied arms for a run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from iapo_gym.agents._common import BatchAgent, best_arms, table_policies
from iapo_gym.agents._engine import NestedStats
from iapo_gym.agents.base import Policy
from iapo_gym.runs import RunBatch


@dataclass(kw_only=True)
class SequentialAgent(BatchAgent):
    """Base of the online baselines: subclasses implement :meth:`choose`.

    Args:
        lcb: deployment rule. 0 (default, the paper's): the empirical-best arm per context;
            ``> 0``: the arm with the highest ``mean - lcb / sqrt(count)`` (count = nested blocks).
    """

    lcb: float = 0.0

    def choose(
        self,
        mean: NDArray[np.float64],
        count: NDArray[np.int64],
        feasible: NDArray[np.bool_],
        priority: NDArray[np.float64],
        rng: np.random.Generator,
    ) -> NDArray[np.int64]:
        """Flat arm per run: ``mean`` (B, A) under the step's context (NaN unseen), ``count`` (B, A)."""
        raise NotImplementedError

    @staticmethod
    def argmax_tiebreak(score: NDArray[np.float64], priority: NDArray[np.float64]) -> NDArray[np.int64]:
        """Row-wise argmax of ``score``; among tied maxima the highest ``priority`` wins."""
        best = score.max(axis=1, keepdims=True)
        return np.argmax(np.where(score == best, priority, -1.0), axis=1)

    def fit_runs(self, runs: RunBatch) -> list[Policy]:
        s_n, p_n, n_max = runs.n_runs, runs.n_prompts, runs.n_max
        a_n = p_n * n_max
        stats = NestedStats(s_n, p_n, n_max, runs.contexts)
        priority = runs.streams.random_rows(np.arange(s_n), a_n)
        arm_n = np.arange(a_n) % n_max + 1
        steps = np.zeros(s_n, dtype=np.int64)
        while True:
            live = np.flatnonzero(runs.remaining > 0)
            if live.size == 0:
                break
            # every draw of a step comes from the live runs' own streams (RowGenerator)
            rng: Any = runs.streams.rows(live)  # numpy-Generator-like: random(size), gumbel(size)
            ctx = np.asarray(runs.contexts.sample(rng, size=live.size), dtype=np.int64)
            mean = stats.means_in(live, ctx).reshape(live.size, a_n)
            count = stats.count[live].reshape(live.size, a_n)
            feasible = arm_n[None, :] <= runs.remaining[live, None]
            arm = self.choose(mean, count, feasible, priority[live], rng)
            for pulls, rows in runs.pull(live, arm // n_max, arm % n_max + 1):
                stats.add(pulls, live[rows])
            steps[live] += 1
        active = np.ones((s_n, len(runs.contexts), a_n), dtype=bool)
        mean = stats.means()
        if float(self.lcb) > 0:
            with np.errstate(divide="ignore"):
                mean = mean - float(self.lcb) / np.sqrt(stats.count[:, None])
        arms = best_arms(active, mean.reshape(active.shape))
        emp = stats.means().reshape(s_n, len(runs.contexts), a_n)
        counts = stats.count.reshape(s_n, a_n)
        infos: list[dict[str, Any]] = [
            {
                "steps": int(steps[s]),
                "budget_used": int(runs.spent[s]),
                # per context: the deployed arm's empirical mean and its nested-block count
                "deployed_mean": emp[s, np.arange(arms.shape[1]), arms[s]].tolist(),
                "deployed_count": counts[s, arms[s]].tolist(),
            }
            for s in range(s_n)
        ]
        return table_policies(runs, arms, infos)
