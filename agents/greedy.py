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
from iapo_gym.agents._sequential import SequentialAgent


def _random_feasible(feasible: NDArray[np.bool_], rng: np.random.Generator) -> NDArray[np.int64]:
    """A uniformly random feasible arm per row (feasible sets are ``{(p, N): N <= m}``)."""
    n_arms = feasible.shape[1]
    k = feasible.sum(axis=1)
    j = np.minimum((rng.random(feasible.shape[0]) * k).astype(np.int64), k - 1)
    # The j-th feasible arm in index order: feasible arms form the prefix N <= m of every prompt.
    order = np.cumsum(feasible, axis=1)
    return np.argmax(order > j[:, None], axis=1) % n_arms


@dataclass
class EpsilonGreedy(SequentialAgent):
    """Epsilon-greedy with probability ``epsilon`` of a uniformly random feasible arm (paper: 0.15)."""

    epsilon: float = 0.15
    name: ClassVar[str] = "egreedy"

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.epsilon) <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1]; got {self.epsilon}")

    def choose(
        self,
        mean: NDArray[np.float64],
        count: NDArray[np.int64],
        feasible: NDArray[np.bool_],
        priority: NDArray[np.float64],
        rng: np.random.Generator,
    ) -> NDArray[np.int64]:
        """The best feasible arm per row, or with probability ``epsilon`` a uniformly random one."""
        explore = rng.random(mean.shape[0]) < float(self.epsilon)
        score = np.where(count > 0, mean, np.inf)
        greedy = self.argmax_tiebreak(np.where(feasible, score, -np.inf), priority)
        return np.where(explore, _random_feasible(feasible, rng), greedy)


@dataclass
class Softmax(SequentialAgent):
    """Boltzmann exploration with temperature ``tau`` (paper: unstated; authors' code: 0.05)."""

    tau: float = 0.05
    name: ClassVar[str] = "softmax"

    def __post_init__(self) -> None:
        finite_real(self.tau, "the temperature tau", minimum=0.0, strict=True)

    def choose(
        self,
        mean: NDArray[np.float64],
        count: NDArray[np.int64],
        feasible: NDArray[np.bool_],
        priority: NDArray[np.float64],
        rng: np.random.Generator,
    ) -> NDArray[np.int64]:
        """An unseen feasible arm first, else a Boltzmann draw at temperature ``tau`` (Gumbel-max)."""
        unseen = feasible & (count == 0)
        gumbel = rng.gumbel(size=mean.shape)
        logits = np.where(feasible, np.nan_to_num(mean, nan=0.0) / float(self.tau) + gumbel, -np.inf)
        sampled = np.argmax(logits, axis=1)
        first_unseen = self.argmax_tiebreak(np.where(unseen, 1.0, -np.inf), priority)
        return np.where(unseen.any(axis=1), first_unseen, sampled)
