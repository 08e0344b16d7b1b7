"""Vectorised IAPO envs whose sub-envs spend ONE budget (``gym.make_vec(ID, num_envs=n, budget=T)``).

A run's budget is a run's budget: the ``n`` sub-envs share one
:class:`~iapo_gym.ledger.BudgetLedger`, so the vector env spends at most ``T`` completions in total.
A vector step checks every action and charges the whole step at once *before* any sub-env draws:
a step refused for one sub-env (a bad action, or a budget that does not fit) spends nothing in the
others. With ``on_exhausted="truncate"`` a step that does not fit draws what is left, sub-env by
sub-env in index order, and the sub-envs left with nothing return ``truncated=True``.

One-step episodes reset in the same step (``AutoresetMode.SAME_STEP``): every step returns the
reward of that step's pull and the *next* context as observation, so no step is wasted on a reset.
Sub-env ``i`` is seeded with ``seed + i`` by ``reset(seed=seed)``, which also clears the shared
ledger when the vector env made it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from iapo_gym._checks import whole_array, whole_number
from iapo_gym.env import IAPOEnv
from iapo_gym.ledger import BudgetLedger

__all__ = ["IAPOVectorEnv", "make_vector_env"]


class IAPOVectorEnv(gym.vector.SyncVectorEnv):
    """``num_envs`` :class:`~iapo_gym.env.IAPOEnv` sharing one budget ledger.

    Args:
        num_envs: number of sub-envs (``>= 1``).
        budget: the run's total budget (an int or ``None``), or a ledger to share with other envs.
        **kwargs: the other :class:`~iapo_gym.env.IAPOEnv` arguments, the same for every sub-env.

    Attributes:
        ledger: the shared ledger (``info["budget_used"]`` of every sub-env reports its total).
    """

    def __init__(self, num_envs: int = 1, budget: int | BudgetLedger | None = None, **kwargs: Any) -> None:
        num_envs = whole_number(num_envs, "num_envs", minimum=1)
        if isinstance(budget, BudgetLedger):
            self.ledger, self._owns_ledger = budget, False
        else:
            self.ledger, self._owns_ledger = BudgetLedger.owned(budget), True
        kwargs.pop("max_episode_steps", None)  # one-step episodes; gym.make_vec may forward the spec's value
        first = IAPOEnv(budget=self.ledger, **kwargs)  # the first sub-env checks every argument once
        envs = [first] + [IAPOEnv(budget=self.ledger, **kwargs) for _ in range(num_envs - 1)]
        super().__init__([_returns(e) for e in envs], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.iapo_envs: list[IAPOEnv] = envs
        self.on_exhausted = first.on_exhausted

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset every sub-env; a seeded reset starts a new run (clears the ledger the vector env made)."""
        if seed is not None and self._owns_ledger:
            self.ledger.reset()
        return super().reset(seed=seed, options=options)

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step every sub-env; the whole step is checked and charged before any sub-env draws."""
        try:
            acts = whole_array(actions, "actions")
        except (TypeError, ValueError) as err:
            raise ValueError(f"{err}; actions must be {self.num_envs} arm indices (ints)") from None
        first = self.iapo_envs[0]
        if acts.shape != (self.num_envs,) or acts.min() < 0 or acts.max() >= first.n_arms:
            raise ValueError(
                f"actions must be {self.num_envs} arm indices in 0..{first.n_arms - 1}; got {np.asarray(actions)!r}"
            )
        if any(env._weights is None for env in self.iapo_envs):
            raise gym.error.ResetNeeded("call reset() before step()")
        n = acts % first.n_max + 1
        total = int(n.sum())
        if self.on_exhausted == "truncate":
            got = self.ledger.charge_at_most(total)
            before = np.cumsum(n) - n
            charged = np.clip(got - before, 0, n)  # what is left goes to the sub-envs in index order
        else:
            self.ledger.charge(total)  # raises before any sub-env draws when the step does not fit
            charged = n
        for env, c in zip(self.iapo_envs, charged, strict=True):
            env._prepaid = int(c)
        try:
            return super().step(acts)
        finally:
            for env in self.iapo_envs:  # a sub-env that failed before drawing gives its charge back
                if env._prepaid is not None:
                    self.ledger._refund(env._prepaid)
                    env._prepaid = None


def _returns(env: IAPOEnv) -> Callable[[], IAPOEnv]:
    """An env factory that returns the already-made ``env`` (SyncVectorEnv calls factories)."""
    return lambda: env


def make_vector_env(num_envs: int = 1, **kwargs: Any) -> IAPOVectorEnv:
    """The vector entry point of every ``IAPO-*-v0`` id: ``gym.make_vec(ID, num_envs=n, budget=T)``.

    The ``n`` sub-envs share one ledger of ``T`` completions (see :class:`IAPOVectorEnv`).
    """
    return IAPOVectorEnv(num_envs, **kwargs)
