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

from iapo_gym.agents.base import Agent, Policy, StochasticPolicy
from iapo_gym.env import IAPOEnv
from iapo_gym.runs import _unwrap


def _uniform_policy(env: Any, seed: int) -> StochasticPolicy:
    n_arms = int(env.n_prompts) * int(env.n_max)
    probs = np.full((len(env.contexts), n_arms), 1.0 / n_arms)
    return StochasticPolicy(env.contexts, probs, int(env.n_max), seed=int(seed), info={"budget_used": 0})


@dataclass
class RandomAgent(Agent):
    """Uniformly random arms; spends no budget."""

    name: ClassVar[str] = "random"

    def fit(self, env: Any, budget: int, seed: int) -> Policy:
        """The uniform policy over every arm; spends nothing."""
        return _uniform_policy(_unwrap(env), seed)

    def fit_many(self, make_env: Callable[[int], Any], budget: int, seeds: Sequence[int]) -> list[Policy]:
        """One uniform policy per seed, equal to :meth:`fit`'s; the runs of one table share one read-only ``probs``.

        A run's policy differs from its neighbours' only by its seed, so the distribution is built
        (and checked) once per table and context set, and each run's policy is a copy of that
        first policy's fields with its own seed and ``info``. The copy skips the constructor's
        checks, which the first policy of the same distribution has passed: a batch of Random's
        no-op runs costs about 0.4 us per run instead of 14 us (the authors' ``RandomAgent.train``
        lists 800 arm objects, 0.4 ms; see docs/AGENTS.md). Envs other than a bare
        :class:`~iapo_gym.env.IAPOEnv` (wrapped, or duck-typed) take :meth:`fit`.
        """
        out: list[Policy] = []
        append = out.append
        table = contexts = None
        copy: Callable[[], dict[str, Any]] = dict
        shared: dict[tuple[int, int], tuple[Callable[[], dict[str, Any]], Any, Any]] = {}
        new = object.__new__
        for seed in seeds:
            env = make_env(seed)
            if type(env) is not IAPOEnv:  # a wrapped or duck-typed env: the general path
                append(self.fit(env, budget, seed))
                continue
            if env.table is not table or env.contexts is not contexts:  # not the previous run's distribution
                table, contexts = env.table, env.contexts
                known = shared.get((id(table), id(contexts)))
                if known is None:
                    first = _uniform_policy(env, 0)
                    first.probs.flags.writeable = False  # shared by every run of this distribution
                    # the table and contexts are kept with it, so their ids are not reused during the batch
                    known = shared[(id(table), id(contexts))] = (dict(vars(first)).copy, table, contexts)
                copy = known[0]
            policy = new(StochasticPolicy)
            policy.__dict__ = own = copy()
            own["seed"] = seed if type(seed) is int else int(seed)
            own["info"] = {"budget_used": 0}
            append(policy)
        return out
