"""Random: no training, a uniformly random arm per deployment (the authors' ``RandomAgent``; a floor).

The policy is the uniform distribution over all ``|P| * N_max`` arms in every context
(:class:`iapo_gym.agents.base.StochasticPolicy`): ``act`` draws a fresh arm per call from the policy's own
seeded generator, and its exact ACR (:func:`iapo_gym.oracle.acr`) is the average Q over arms.
It spends nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from iapo_gym.agents.base import Agent, Policy, StochasticPolicy
from iapo_gym.env import IAPOEnv
from iapo_gym.runs import _unwrap


def _uniform_probs(env: Any) -> NDArray[np.float64]:
    """``(C, |P| * N_max)``: every arm equally likely in every context."""
    n_arms = int(env.n_prompts) * int(env.n_max)
    return np.full((len(env.contexts), n_arms), 1.0 / n_arms)


def _uniform_policy(env: Any, seed: int) -> StochasticPolicy:
    return StochasticPolicy(env.contexts, _uniform_probs(env), int(env.n_max), seed=int(seed), info={"budget_used": 0})


@dataclass
class RandomAgent(Agent):
    """Uniformly random arms; spends no budget."""

    name: ClassVar[str] = "random"

    def fit(self, env: Any, budget: int, seed: int) -> Policy:
        """The uniform policy over every arm; spends nothing."""
        return _uniform_policy(_unwrap(env), seed)

    def fit_many(self, make_env: Callable[[int], Any], budget: int, seeds: Sequence[int]) -> list[Policy]:
        """One uniform policy per seed, equal to :meth:`fit`'s; runs of one shape share one read-only ``probs``.

        A run's policy differs from its neighbours' only by its seed (and its env's context set), so
        the distribution is built once per shape (contexts x arms), without the constructor's checks
        (it is valid by construction), and each run's policy is a new
        :class:`~iapo_gym.agents.base.StochasticPolicy` whose fields are set one by one, in the
        constructor's order (CPython then stores them inline, without a per-object dict); its
        ``budget_used`` and generator state are the class's defaults, and its ``info``
        (``{"budget_used": 0}``, its own dict, as :meth:`fit`'s) is built on first read. A batch of
        Random's no-op runs costs 0.3-0.45 us per run instead of 14 us (the authors'
        ``RandomAgent.train`` lists 800 arm objects, 0.3-0.45 ms; see docs/AGENTS.md). Envs other
        than a bare :class:`~iapo_gym.env.IAPOEnv` (wrapped, or duck-typed) take :meth:`fit`.
        """
        out: list[Policy] = []
        append = out.append
        table = contexts = None  # the previous run's: the first run always builds its own below
        probs: NDArray[np.float64] = np.empty((0, 0))
        n_max = 0
        uniform: dict[tuple[int, int], NDArray[np.float64]] = {}  # (contexts, arms) -> the shared distribution
        new = object.__new__
        for seed in seeds:
            env = make_env(seed)
            if type(env) is not IAPOEnv:  # a wrapped or duck-typed env: the general path
                append(self.fit(env, budget, seed))
                continue
            if env.table is not table or env.contexts is not contexts:  # not the previous run's table
                table, contexts, n_max = env.table, env.contexts, int(env.n_max)
                shape = (len(contexts), int(env.n_prompts) * n_max)
                if shape not in uniform:  # fit's distribution, valid by construction: built without its checks
                    uniform[shape] = _uniform_probs(env)
                    uniform[shape].flags.writeable = False  # shared by every run of this shape
                probs = uniform[shape]
            policy = new(StochasticPolicy)
            policy.contexts = contexts
            policy.probs = probs
            policy.n_max = n_max
            policy.seed = seed if type(seed) is int else int(seed)
            # budget_used, _cdf and _rng: the class's defaults (0, None, None); info: its own
            # {"budget_used": 0}, built on first read (StochasticPolicy's _InfoOnFirstRead)
            append(policy)
        return out
