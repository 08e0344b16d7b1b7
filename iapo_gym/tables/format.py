"""The in-memory outcome table: what one task's LLM does, per prompt and query.

An :class:`OutcomeTable` is the single data structure every other part of the project reads
(sampler, utilities, oracle, environment, agents). It is immutable once built.

Strategies:

* ``"mv"`` (majority voting): per (prompt, query) a categorical distribution over ``A`` answer
  categories, ``answer_probs (P, Q, A)``, and the gold category ``gold (Q,)``. One objective,
  ``"correct"`` in [0, 1].
* ``"bon"`` (best-of-N): per (prompt, query) ``M`` discrete outcomes with ``K`` objective values
  ``outcome_values (P, Q, M, K)`` and probabilities ``outcome_probs (P, Q, M)``. A raw sample pool
  of ``M`` completions is the case ``outcome_probs = 1/M``.

Both carry ``cost (P, Q)``: the expected cost of one completion in ``cost_unit`` units (the paper's
tables use a per-prompt constant; live-built tables use mean tokens times a scale). Utilities are
linear in cost, so the expected cost is exact for Q-values; the sampler charges it per completion.

``split (Q,)`` holds the source's own split (0 = train, 1 = test); runs of real tasks re-split the
pooled queries from a seed (:func:`iapo_gym.tables.format.resplit`).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from iapo_gym.contexts import ContextSet

#: ids of freshly made arrays a table being built may adopt without copying (set by concat_queries only).
_FRESH: ContextVar[frozenset[int]] = ContextVar("_FRESH", default=frozenset())

SCHEMA_VERSION = 1
Strategy = Literal["mv", "bon"]
STRATEGIES: tuple[str, ...] = ("mv", "bon")


#: Oracle cache entries that do not depend on the context set (kept by :meth:`OutcomeTable.with_contexts`).
CONTEXT_FREE_CACHE_KEYS = frozenset({"oracle/mv_credit", "sampling/cdf"})


@dataclass(frozen=True, eq=False)
class OutcomeTable:
    """Outcome distributions of one task (see the module docstring for the layout).

    Attributes:
        task: task name, e.g. ``"MATH"``.
        strategy: ``"mv"`` or ``"bon"``.
        prompts: ``P`` prompt texts or ids.
        query_ids: ``Q`` query ids.
        objectives: ``K`` objective names (MV: ``("correct",)``).
        objective_ranges: ``(K, 2)`` lower/upper bound of each objective.
        contexts: the task's finite context set (weights ``(C, K + 1)``).
        n_max: largest number of completions per pull.
        cost: ``(P, Q)`` expected cost per completion.
        split: ``(Q,)`` int8, 0 = train, 1 = test, as released.
        answer_probs, gold: MV arrays (``None`` for BoN).
        outcome_values, outcome_probs: BoN arrays (``None`` for MV).
        cost_unit: what one cost unit means, e.g. ``"tokens/1000"``.
        provenance: model, sampling parameters, date, build command, source file ...
        pool_size: ``M`` when the table is a raw pool of equally likely samples, else ``None``.
    """

    task: str
    strategy: Strategy
    prompts: tuple[str, ...]
    query_ids: tuple[str, ...]
    objectives: tuple[str, ...]
    objective_ranges: NDArray[np.float64]
    contexts: ContextSet
    n_max: int
    cost: NDArray[np.float64]
    split: NDArray[np.int8]
    answer_probs: NDArray[np.float64] | None = None
    gold: NDArray[np.int64] | None = None
    outcome_values: NDArray[np.float64] | None = None
    outcome_probs: NDArray[np.float64] | None = None
    cost_unit: str = "cost"
    provenance: dict[str, Any] = field(default_factory=dict)
    pool_size: int | None = None
    # Per-table memo behind :attr:`cache`; not an init argument, so ``replace`` starts a fresh one.
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Freeze every array so a table can be shared between envs, seeds and caches safely.
        # (Arrays :func:`concat_queries` just made, and nobody else holds, are adopted without a copy.)
        fresh = _FRESH.get()
        for name in ("objective_ranges", "cost", "split", "answer_probs", "gold", "outcome_values", "outcome_probs"):
            arr = getattr(self, name)
            if arr is not None:
                if id(arr) not in fresh:
                    arr = np.array(arr, copy=True)
                arr.setflags(write=False)
                object.__setattr__(self, name, arr)
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "query_ids", tuple(self.query_ids))
        object.__setattr__(self, "objectives", tuple(self.objectives))

    # ------------------------------------------------------------------ sizes
    @property
    def n_prompts(self) -> int:
        """P."""
        return len(self.prompts)

    @property
    def n_queries(self) -> int:
        """Q."""
        return len(self.query_ids)

    @property
    def n_objectives(self) -> int:
        """K (MV: 1)."""
        return len(self.objectives)

    @property
    def n_arms(self) -> int:
        """Arms per context, ``P * n_max``."""
        return self.n_prompts * self.n_max

    @property
    def n_outcomes(self) -> int:
        """Categories ``A`` (MV) or outcomes ``M`` (BoN) per (prompt, query)."""
        arr = self.mv_arrays()[0] if self.strategy == "mv" else self.bon_arrays()[1]
        return int(arr.shape[2])

    def mv_arrays(self) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        """``(answer_probs, gold)`` of a majority-voting table; ``ValueError`` for any other table."""
        if self.answer_probs is None or self.gold is None:
            raise ValueError(f"table {self.task!r} ({self.strategy}) has no answer_probs/gold: not a majority-voting table")
        return self.answer_probs, self.gold

    def bon_arrays(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``(outcome_values, outcome_probs)`` of a best-of-N table; ``ValueError`` for any other table."""
        if self.outcome_values is None or self.outcome_probs is None:
            raise ValueError(f"table {self.task!r} ({self.strategy}) has no outcome_values/probs: not a best-of-N table")
        return self.outcome_values, self.outcome_probs

    def train_queries(self) -> NDArray[np.int64]:
        """Indices of the released train split."""
        return np.flatnonzero(self.split == 0)

    def test_queries(self) -> NDArray[np.int64]:
        """Indices of the released test split."""
        return np.flatnonzero(self.split == 1)

    @property
    def cache(self) -> dict[str, Any]:
        """Per-table memo (exact per-query values are stored here by the oracle)."""
        return self._cache

    def with_contexts(self, contexts: ContextSet) -> OutcomeTable:
        """The same outcomes under another context set.

        The new table gets its own oracle cache holding only context-free entries (the exact MV
        credit per prompt, query and N); values that depend on the contexts (BoN's per-query
        values under the table's contexts) are recomputed for the new ones.
        """
        if contexts.n_objectives != self.n_objectives:
            raise ValueError(f"contexts weight {contexts.n_objectives} objectives; the table has {self.n_objectives}")
        table = replace(self, contexts=contexts)
        context_free = {k: v for k, v in self._cache.items() if k in CONTEXT_FREE_CACHE_KEYS}
        object.__setattr__(table, "_cache", context_free)
        return table


def concat_queries(tables: list[OutcomeTable], task: str | None = None) -> OutcomeTable:
    """Stack tables with the same prompts, outcomes and contexts along the query axis.

    Used to run many synthetic worlds (one per seed) as one vectorised batch: world ``s`` owns the
    query range ``offsets[s]:offsets[s + 1]``, recorded in ``provenance["world_offsets"]``.
    """
    if not tables:
        raise ValueError("concat_queries needs at least one table")
    first = tables[0]
    for t in tables[1:]:
        if (t.strategy, t.n_prompts, t.n_max, t.n_outcomes, t.n_objectives) != (
            first.strategy, first.n_prompts, first.n_max, first.n_outcomes, first.n_objectives
        ):
            raise ValueError("tables to stack must share strategy, prompts, n_max and outcome shapes")

    def cat(name: str, axis: int) -> NDArray[Any] | None:
        arrs = [getattr(t, name) for t in tables]
        return None if arrs[0] is None else np.concatenate(arrs, axis=axis)

    sizes = [t.n_queries for t in tables]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    arrays: dict[str, Any] = {
        "cost": np.concatenate([t.cost for t in tables], axis=1),
        "split": np.concatenate([t.split for t in tables], axis=0),
        "answer_probs": cat("answer_probs", 1),
        "gold": cat("gold", 0),
        "outcome_values": cat("outcome_values", 1),
        "outcome_probs": cat("outcome_probs", 1),
    }
    # The concatenations are new arrays nobody else holds: the table adopts them without a copy.
    token = _FRESH.set(frozenset(id(a) for a in arrays.values() if a is not None))
    try:
        return replace(
            first,
            task=task or first.task,
            query_ids=tuple(f"w{s}:{q}" for s, t in enumerate(tables) for q in t.query_ids),
            provenance={**first.provenance, "world_offsets": offsets},
            **arrays,
        )
    finally:
        _FRESH.reset(token)


def resplit(n_queries: int, seed: int, train_fraction: float = 0.8) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Shuffle all query indices with ``seed`` and cut them ``train_fraction`` / rest.

    Returns sorted ``(train, test)`` index arrays, each non-empty (the paper's 80/20 re-split per run).
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie strictly between 0 and 1; got {train_fraction}")
    if n_queries < 2:
        raise ValueError("a split needs at least 2 queries")
    perm = np.random.default_rng(seed).permutation(n_queries)
    n_train = min(max(int(np.floor(train_fraction * n_queries)), 1), n_queries - 1)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])
