"""The agent interface: ``Agent.fit(env, budget, seed) -> Policy`` and ``Policy(context) -> arm``.

An agent explores an :class:`iapo_gym.env.IAPOEnv` under a budget of completions and returns a
deployment :class:`Policy`. A policy maps context weight vectors to flat arm indices
(``prompt * n_max + N - 1``). Agents that can run many seeds of one configuration at once override
:meth:`Agent.fit_many`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from iapo_gym.contexts import ContextSet


class Policy(ABC):
    """A deployment policy ``pi: context -> arm``.

    Attributes:
        n_max: the task's largest N (to decode arms).
        budget_used: completions the agent spent to learn this policy.
        info: free-form diagnostics (rounds, survivors, ...), JSON-serialisable.
    """

    n_max: int
    budget_used: int
    info: dict[str, Any]

    @abstractmethod
    def act(self, weights: ArrayLike) -> NDArray[np.int64]:
        """Flat arms for context weight vectors ``(B, K + 1)`` -> ``(B,)``."""

    def __call__(self, context: ArrayLike) -> int:
        """Flat arm for one context weight vector ``(K + 1,)``."""
        w = np.asarray(context, dtype=np.float64)
        return int(self.act(w[None, :])[0])


@dataclass(eq=False)
class TablePolicy(Policy):
    """One arm per context of a finite set; any other weight vector uses the nearest context.

    Nearest-context deployment is also what a grid-discretised agent does on continuous contexts.
    """

    contexts: ContextSet
    arms: NDArray[np.int64]
    n_max: int
    budget_used: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.arms = np.asarray(self.arms, dtype=np.int64)
        if self.arms.shape != (len(self.contexts),):
            raise ValueError(f"need one arm per context ({len(self.contexts)}); got shape {self.arms.shape}")

    def act(self, weights: ArrayLike) -> NDArray[np.int64]:
        idx = np.atleast_1d(self.contexts.index_of(np.atleast_2d(np.asarray(weights, dtype=np.float64))))
        return self.arms[idx]


class Agent(ABC):
    """Base class of every agent in the zoo (and of users' agents).

    Subclasses set :attr:`name` and implement :meth:`fit`. An agent must never spend more than
    ``budget`` completions (the env's ledger raises if it tries), must return the same policy for
    the same seed, and must return a valid arm for every context (``agents.testing`` checks all
    three). Agents that choose which training query each pull uses set
    :attr:`uses_query_control`.
    """

    name: ClassVar[str] = "agent"
    uses_query_control: ClassVar[bool] = False

    @abstractmethod
    def fit(self, env: Any, budget: int, seed: int) -> Policy:
        """Explore ``env`` (an unwrapped ``IAPOEnv``) with at most ``budget`` completions."""

    def fit_many(self, make_env: Callable[[int], Any], budget: int, seeds: Sequence[int]) -> list[Policy]:
        """Fit one policy per seed; ``make_env(seed)`` builds that run's env (split / world).

        The default runs :meth:`fit` per seed; batch-capable agents override this with one
        vectorised run over all seeds.
        """
        return [self.fit(make_env(s), budget, s) for s in seeds]

    def config(self) -> dict[str, Any]:
        """Hyper-parameters, for logging."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}
