"""The agent interface: ``Agent.fit(env, budget, seed) -> Policy`` and ``Policy(context) -> arm``.

An agent explores an :class:`iapo_gym.env.IAPOEnv` under a budget of completions and returns a
deployment :class:`Policy`. A policy maps context weight vectors to flat arm indices
(``prompt * n_max + N - 1``). Agents that can run many seeds of one configuration at once override
:meth:`Agent.fit_many`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from iapo_gym._checks import finite_weights
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

    def arm_probs(self, weights: ArrayLike, n_arms: int) -> NDArray[np.float64]:
        """Deployment distribution over the ``n_arms`` flat arms per context, ``(B, n_arms)``.

        Deterministic policies (the default) put mass 1 on :meth:`act`; stochastic ones (TRIPLE
        with a random N, Random) override this so their exact ACR is an average over arms (see
        :func:`iapo_gym.oracle.acr`).
        """
        arms = self.act(np.atleast_2d(np.asarray(weights, dtype=np.float64)))
        out = np.zeros((arms.shape[0], int(n_arms)))
        out[np.arange(arms.shape[0]), arms] = 1.0
        return out

    def save(self, path: Any, task: Any, **provenance: Any) -> Any:
        """Write this policy as a versioned document; ``iapo_gym.load_policy(path)`` reads it back.

        ``task`` is the table or env it was learnt on; ``provenance`` takes ``agent``, ``budget``,
        ``seed``, ``overwrite`` (see :func:`iapo_gym.deploy.policy_io.save_policy`).
        """
        from iapo_gym.deploy.policy_io import save_policy

        return save_policy(self, path, task, **provenance)


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
        """The fitted arm of each context row of ``weights``."""
        idx = np.atleast_1d(self.contexts.index_of(finite_weights(weights, self.contexts.n_objectives)))
        return self.arms[idx]


@dataclass(eq=False)
class StochasticPolicy(Policy):
    """A fixed distribution over arms per context of a finite set (nearest context elsewhere).

    :meth:`act` samples from it with the policy's own seeded generator (a deployment draws a fresh
    arm per query, reproducibly); :meth:`arm_probs` returns the exact distribution, which
    :func:`iapo_gym.oracle.acr` averages to give the exact ACR.
    """

    contexts: ContextSet
    probs: NDArray[np.float64]  # (C, n_arms), rows sum to 1
    n_max: int
    seed: int = 0
    budget_used: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    # built on the first act, as the generator (a batch builds many policies); the class-level
    # defaults (and ``info``'s, below the class) let a batch's copies (Random's fit_many) leave them unset
    _cdf: NDArray[np.float64] | None = field(default=None, init=False, repr=False)
    _rng: np.random.Generator | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.probs = np.asarray(self.probs, dtype=np.float64)
        if self.probs.ndim != 2 or self.probs.shape[0] != len(self.contexts):
            raise ValueError(f"need one distribution per context ({len(self.contexts)}); got shape {self.probs.shape}")
        # np.allclose(sums, 1.0)'s rule (|sum - 1| <= 1e-8 + 1e-5; NaN fails), without its overhead
        if not bool(np.all(np.abs(self.probs.sum(axis=1) - 1.0) <= 1e-8 + 1e-5)):
            raise ValueError("each context's arm distribution must sum to 1")

    def act(self, weights: ArrayLike) -> NDArray[np.int64]:
        """One arm per context row of ``weights``, drawn from that context's distribution."""
        idx = np.atleast_1d(self.contexts.index_of(finite_weights(weights, self.contexts.n_objectives)))
        if self._rng is None:
            self._rng = np.random.default_rng(self.seed)
        if self._cdf is None:
            self._cdf = np.cumsum(self.probs, axis=1)
        u = self._rng.random(idx.size)
        arms = (u[:, None] >= self._cdf[idx]).sum(axis=1)
        return np.minimum(arms, self.probs.shape[1] - 1).astype(np.int64)

    def arm_probs(self, weights: ArrayLike, n_arms: int) -> NDArray[np.float64]:
        """The fitted ``(B, n_arms)`` arm distribution of each context row of ``weights``."""
        if int(n_arms) != self.probs.shape[1]:
            raise ValueError(f"this policy is over {self.probs.shape[1]} arms, not {n_arms}")
        idx = np.atleast_1d(self.contexts.index_of(finite_weights(weights, self.contexts.n_objectives)))
        return self.probs[idx]


class _InfoOnFirstRead:
    """``StochasticPolicy.info`` of a policy made without its constructor: its own ``{"budget_used": ...}``.

    A batch that makes many policies without ``__init__`` (Random's ``fit_many``) leaves ``info``
    unset, and this builds it on the first read and stores it on the policy, as
    :class:`functools.cached_property` does. One small dict per run is a fifth of a no-op run's cost
    (alloc and free), and the runner never reads it. A non-data descriptor: the constructor's (or
    anyone's) ``policy.info = ...`` shadows it. Stored with ``dict.setdefault`` (atomic), so two
    threads racing on the first read get the same dict.
    """

    def __get__(self, policy: StochasticPolicy | None, owner: type | None = None) -> Any:
        if policy is None:  # read on the class: the descriptor itself
            return self
        return vars(policy).setdefault("info", {"budget_used": policy.budget_used})


# set after the dataclass is built: in the class body it would become the field's default
setattr(StochasticPolicy, "info", _InfoOnFirstRead())  # noqa: B010


def policy_acr(policy: Policy, q: ArrayLike, contexts: ContextSet) -> float:
    """Deprecated: use ``iapo_gym.oracle.acr(q, policy, contexts.probs, contexts.weights)``.

    Kept as an alias of the project's one exact-ACR function (same value, bit for bit).
    """
    import warnings

    from iapo_gym import oracle

    warnings.warn(
        "policy_acr(policy, q, contexts) is deprecated; use iapo_gym.oracle.acr(q, policy, contexts.probs, "
        "contexts.weights)",
        DeprecationWarning,
        stacklevel=2,
    )
    return float(oracle.acr(q, policy, contexts.probs, contexts.weights))


class Agent(ABC):
    """Base class of every agent in the zoo (and of users' agents).

    Subclasses set :attr:`name` and implement :meth:`fit`. An agent must never spend more than
    ``budget`` completions (the env's ledger raises if it tries), must return the same policy for
    the same seed, and must return a valid arm for every context (``iapo_gym.agents.testing`` checks all
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


class BatchAgent(Agent):
    """An agent that fits many runs as one vectorised batch: subclasses implement :meth:`fit_runs`.

    :meth:`fit` is a batch of one; :meth:`fit_many` builds the envs lazily and fits them in chunks
    that fit the memory budget (:func:`iapo_gym.runs.iter_chunks`). ``fit_runs`` receives an
    :class:`iapo_gym.runs.RunBatch` and must draw every random number from ``batch.streams`` and
    every pull through ``batch.pull``: then a run's policy depends on its seed only, whatever the
    batch (``iapo_gym.agents.testing.check_invariance`` checks it).
    """

    def fit(self, env: Any, budget: int, seed: int) -> Policy:
        """One run: a batch of one (the same bits as inside any batch; see :meth:`fit_runs`)."""
        from iapo_gym.runs import RunBatch

        return self.fit_runs(RunBatch([env], budget, [seed], self.name))[0]

    def fit_many(
        self,
        make_env: Callable[[int], Any],
        budget: int,
        seeds: Sequence[int],
        memory_budget: int | None = None,
    ) -> list[Policy]:
        """Fit every seed; runs are batched in chunks within ``memory_budget`` bytes (see :mod:`iapo_gym.runs`)."""
        from iapo_gym.runs import RunBatch, iter_chunks, resolve_memory_budget

        mem = resolve_memory_budget(memory_budget)
        policies: list[Policy] = []
        for envs, chunk in iter_chunks(make_env, list(seeds), mem):
            policies += self.fit_runs(RunBatch(envs, budget, chunk, self.name, memory_budget=mem))
        return policies

    def fit_runs(self, batch: Any) -> list[Policy]:
        """One policy per run of ``batch`` (an :class:`iapo_gym.runs.RunBatch`), in run order."""
        return self._fit_runs(batch)

    def _fit_runs(self, runs: Any) -> list[Policy]:  # pragma: no cover - the zoo's older name
        raise NotImplementedError(f"{type(self).__name__} must implement fit_runs(batch)")
