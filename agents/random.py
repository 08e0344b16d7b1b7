"""Random: no training, a uniformly random arm per deployment (the authors' ``RandomAgent``; a floor).

The policy is the uniform distribution over all ``|P| * N_max`` arms in every context
(:class:`iapo_gym.agents.base.StochasticPolicy`): ``act`` draws a fresh arm per call from the policy's own
seeded generator, and its exact ACR (:func:`iapo_gym.oracle.acr`) is the average Q over arms.
It spends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from iapo_gym.agents.base import Agent, Policy, StochasticPolicy
from iapo_gym.runs import _unwrap


@dataclass
class RandomAgent(Agent):
    """Uniformly random arms; spends no budget."""

    name: ClassVar[str] = "random"

    def fit(self, env: Any, budget: int, seed: int) -> Policy:
        """The uniform policy over every arm; spends nothing."""
        env = _unwrap(env)
        n_arms = int(env.n_prompts) * int(env.n_max)
        probs = np.full((len(env.contexts), n_arms), 1.0 / n_arms)
        return StochasticPolicy(env.contexts, probs, int(env.n_max), seed=int(seed), info={"budget_used": 0})
