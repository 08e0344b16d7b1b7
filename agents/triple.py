"""TRIPLE baselines: prompt-only, inference-agnostic selection (paper section 3.7).

Contextual TRIPLE-SH (Shi et al., NeurIPS 2024) as the paper uses it: successive halving over
prompts at ``N = 1`` -- the PSST loop (:func:`iapo_gym.agents.psst.run_trimming`) restricted to the arms
``{(p, 1)}`` with ``R = ceil(log2 |P|)`` rounds, equal per-round budgets, every sample shared across
contexts, per-context halving. At ``N = 1`` the inference-agnostic utility (paper Eq. 5: the
per-completion mean of the weighted objectives minus the cost term) equals the single-completion
utility, so this is exactly TRIPLE's IA objective, cost-aware per context (as the authors' code).

Deployment never tailors ``N``:

* ``TRIPLE(n="one")`` deploys ``(p*_c, 1)``;
* ``TRIPLE(n="random")`` deploys ``(p*_c, N)`` with ``N`` uniform on ``1..N_max`` redrawn per query
  (the authors redraw on every ``predict``). Its policy is a
  :class:`iapo_gym.agents.base.StochasticPolicy`: ``act`` draws a fresh ``N`` per call from the policy's
  seeded generator, and its **exact ACR is the average over N** of ``Q(c, (p*_c, N))``
  (:func:`iapo_gym.oracle.acr`).

Budget rules as PSST (never more than ``T``; carry-forward; last-round random top-up).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from iapo_gym.agents._common import BatchAgent
from iapo_gym.agents._engine import NestedStats
from iapo_gym.agents.base import Policy, StochasticPolicy, TablePolicy
from iapo_gym.agents.psst import n_rounds, trim_and_choose
from iapo_gym.runs import RunBatch


@dataclass
class TRIPLE(BatchAgent):
    """Successive halving over prompts at N = 1; deploys N = 1 (``n="one"``) or a uniform N (``n="random"``)."""

    n: str = "one"
    name: ClassVar[str] = "triple"

    def __post_init__(self) -> None:
        if self.n not in ("one", "random"):
            raise ValueError(f"n must be 'one' or 'random'; got {self.n!r}")

    def fit_runs(self, runs: RunBatch) -> list[Policy]:
        """Fit every run of the batch at once (see :meth:`iapo_gym.agents.base.BatchAgent.fit_runs`)."""
        s_n, p_n, n_max = runs.n_runs, runs.n_prompts, runs.n_max
        c_n = len(runs.contexts)
        runs.cap_calls()  # rounds pull many runs' budgets at once: cache-sized calls
        stats = NestedStats(s_n, p_n, n_max, runs.contexts)
        n_one = np.zeros((s_n, c_n, p_n, n_max), dtype=bool)
        n_one[..., 0] = True  # the trimming runs on the N = 1 arm of each prompt
        active = n_one.reshape(s_n, c_n, p_n * n_max)
        infos, arms = trim_and_choose(runs, stats, active, runs.budgets.copy(), n_rounds(p_n))
        prompts = arms // n_max  # (S, C)
        policies: list[Policy] = []
        spent = runs.spent.tolist()
        if self.n != "one":  # every run's distribution at once: uniform over N on its prompt, per context
            dist = np.zeros((s_n, c_n, p_n, n_max))
            dist[np.arange(s_n)[:, None], np.arange(c_n)[None, :], prompts, :] = 1.0 / n_max
            probs = dist.reshape(s_n, c_n, p_n * n_max)
        for s in range(s_n):
            info = {**infos[s], "budget_used": spent[s], "deploy_n": self.n}
            if self.n == "one":
                policies.append(TablePolicy(runs.contexts, prompts[s] * n_max, n_max, spent[s], info))
            else:
                policy = StochasticPolicy(runs.contexts, probs[s].copy(), n_max, runs.seeds[s], spent[s], info)
                policies.append(policy)
        return policies
