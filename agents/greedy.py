"""Epsilon-greedy and Softmax baselines (paper section 3.6; the authors' ``AdaptiveAgent``).

Both run the shared online loop (:mod:`iapo_gym.agents._sequential`): random context per step, feasible
arms only, every pull shared across scales and contexts, final arm = empirical best.

* **Epsilon-greedy**: with probability ``epsilon`` a uniformly random feasible arm, otherwise the
  feasible arm with the highest empirical mean. ``epsilon = 0.15`` is the paper's tuned value
  (the authors' code defaults to 0.1).
* **Softmax**: a feasible arm drawn with probability proportional to ``exp(mean / tau)``
  (Gumbel-max sampling). The paper does not state the temperature; ``tau = 0.05`` is the
  authors' code default and is used here.

Unseen arms: the authors give them mean 0, which is arbitrary (utilities can be negative: a
cost-heavy context makes every seen arm look worse than an unseen one, or vice versa). Here unseen
feasible arms are tried first (optimistic initialisation, ties broken by the run's seeded random
priority); with nested reuse one pull of ``(p, N)`` makes every ``(p, k <= N)`` seen, so this costs
at most one sweep over prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from iapo_gym._checks import finite_real
from iapo_gym.agents._sequential import SequentialAgent, Step


@dataclass
class EpsilonGreedy(SequentialAgent):
    """Epsilon-greedy with probability ``epsilon`` of a uniformly random feasible arm (paper: 0.15)."""

    epsilon: float = 0.15
    name: ClassVar[str] = "egreedy"

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.epsilon) <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1]; got {self.epsilon}")

    def choose(self, step: Step) -> NDArray[np.int64]:
        """The best feasible arm per row, or with probability ``epsilon`` a uniformly random one."""
        u = step.rng.random((step.mean.shape[0], 2))  # per run: the explore coin, then the random arm
        rows, first_unseen = step.unseen_choice()
        score = step.mean
        step.mask_infeasible(score)
        greedy = self.argmax_tiebreak(score, step.priority)
        greedy[rows] = first_unseen
        return np.where(u[:, 0] < float(self.epsilon), step.random_feasible(u[:, 1]), greedy)


@dataclass
class Softmax(SequentialAgent):
    """Boltzmann exploration with temperature ``tau`` (paper: unstated; authors' code: 0.05)."""

    tau: float = 0.05
    name: ClassVar[str] = "softmax"

    def __post_init__(self) -> None:
        finite_real(self.tau, "the temperature tau", minimum=0.0, strict=True)

    def choose(self, step: Step) -> NDArray[np.int64]:
        """An unseen feasible arm first, else a Boltzmann draw at temperature ``tau`` (Gumbel-max)."""
        gumbel = step.rng.gumbel(size=step.mean.shape)
        rows, first_unseen = step.unseen_choice()
        logits = step.mean
        logits /= float(self.tau)
        logits += gumbel
        step.mask_infeasible(logits)
        arm = np.argmax(logits, axis=1)
        arm[rows] = first_unseen
        return arm
