"""Helpers shared by the batch-capable agents: the batch base class, halving, final arm choice."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from iapo_gym.agents._runs import Runs
from iapo_gym.agents.base import Agent, Policy, TablePolicy

UNSEEN = -1e300  # rank of an active arm without data: below every seen arm, above inactive arms


class BatchAgent(Agent):
    """An agent whose :meth:`fit` is a batch of one: subclasses implement :meth:`_fit_runs`.

    ``fit_many(make_env, budget, seeds)`` builds one env per seed and runs all seeds as one
    vectorised batch (see :mod:`iapo_gym.agents._runs`).
    """

    def fit(self, env: Any, budget: int, seed: int) -> Policy:
        return self._fit_runs(Runs([env], budget, [seed], self.name))[0]

    def fit_many(self, make_env: Callable[[int], Any], budget: int, seeds: Sequence[int]) -> list[Policy]:
        seeds = list(seeds)
        if not seeds:
            return []
        envs = [make_env(s) for s in seeds]
        policies: list[Policy] = []
        for lo, hi in _chunks(envs):
            policies += self._fit_runs(Runs(envs[lo:hi], budget, seeds[lo:hi], self.name))
        return policies

    def _fit_runs(self, runs: Runs) -> list[Policy]:  # pragma: no cover - abstract
        raise NotImplementedError


#: Largest stacked table (bytes) one batch builds when every run has its own table (synthetic worlds).
STACK_BYTES = 256 * 2**20


def _table_bytes(table: Any) -> int:
    return sum(
        a.nbytes for a in (table.answer_probs, table.gold, table.outcome_values, table.outcome_probs, table.cost)
        if a is not None
    )


def _chunks(envs: Sequence[Any]) -> list[tuple[int, int]]:
    """Split a batch so that stacking per-run tables never exceeds :data:`STACK_BYTES`.

    Runs that share one table (real tasks) stay one batch; per-seed worlds of a large synthetic
    task (Synth-Categorical: ~3 MB each) run in chunks of ``STACK_BYTES // table size`` seeds.
    """
    tables = [getattr(getattr(e, "unwrapped", e), "table", None) for e in envs]
    if len(envs) <= 1 or any(t is None for t in tables) or all(t is tables[0] for t in tables):
        return [(0, len(envs))]
    size = max(1, STACK_BYTES // max(1, _table_bytes(tables[0])))
    return [(lo, min(lo + size, len(envs))) for lo in range(0, len(envs), size)]


def ranking_key(active: NDArray[np.bool_], mean: NDArray[np.float64]) -> NDArray[np.float64]:
    """Sort key over arms: the mean for seen active arms, ``UNSEEN`` for unseen active ones, -inf otherwise."""
    return np.where(active, np.where(np.isnan(mean), UNSEEN, mean), -np.inf)


def _top_k_mask(key: NDArray[np.float64], k: int) -> NDArray[np.bool_]:
    """Rows of ``key (R, A)``: True for the first ``k`` entries of a stable descending sort.

    No sort (``O(A)`` per row): the ``k``-th largest key comes from ``np.partition``; entries above
    it are kept, and entries equal to it are kept in index order until ``k`` are kept.
    """
    thr = -np.partition(-key, k - 1, axis=-1)[:, k - 1 : k]
    above = key > thr
    tied = key == thr
    room = k - above.sum(axis=-1, keepdims=True)
    return above | (tied & (np.cumsum(tied, axis=-1) <= room))


def halve(active: NDArray[np.bool_], mean: NDArray[np.float64], runs: NDArray[np.bool_]) -> None:
    """Per (run, context) remove the bottom ``ceil(n/2)`` of the ``n`` active arms, keeping at least one.

    ``active`` and ``mean`` are ``(S, C, A)``; only runs where ``runs`` is True are trimmed (in
    place). Ranking is by empirical mean, descending; ties keep the lower flat arm index (the
    authors' stable sort over the p-major, N-ascending arm list).
    """
    idx = None if bool(np.all(runs)) else np.flatnonzero(runs)
    if idx is not None and idx.size == 0:
        return
    a = active if idx is None else active[idx]
    m = mean if idx is None else mean[idx]
    n_arms = a.shape[-1]
    flat_a = a.reshape(-1, n_arms)
    flat_m = m.reshape(-1, n_arms)
    n_active = flat_a.sum(axis=-1)
    new = np.zeros_like(flat_a)
    counts = np.unique(n_active)
    for n0 in counts.tolist():  # rows with the same number of active arms: rank only those arms
        if n0 == 0:
            continue
        k = max(1, n0 // 2)
        rows = None if counts.size == 1 else np.flatnonzero(n_active == n0)
        fa = flat_a if rows is None else flat_a[rows]
        fm = flat_m if rows is None else flat_m[rows]
        if n0 == n_arms:
            winners = (np.flatnonzero(_top_k_mask(ranking_key(fa, fm), k)) % n_arms).reshape(-1, k)
        else:
            arm_idx = np.nonzero(fa)[1].reshape(-1, n0)  # ascending arm order per row
            sub = np.take_along_axis(fm, arm_idx, axis=1)
            winners = arm_idx[_top_k_mask(np.where(np.isnan(sub), UNSEEN, sub), k)].reshape(-1, k)
        if rows is None:
            np.put_along_axis(new, winners, True, axis=1)
        else:
            new[rows[:, None], winners] = True
    if idx is None:
        active[...] = new.reshape(active.shape)
    else:
        active[idx] = new.reshape(a.shape)


def best_arms(active: NDArray[np.bool_], mean: NDArray[np.float64]) -> NDArray[np.int64]:
    """``(S, C)`` the active arm with the highest mean (seen arms first; ties -> lowest index)."""
    return np.argmax(ranking_key(active, mean), axis=-1).astype(np.int64)


def table_policies(runs: Runs, arms: NDArray[np.int64], infos: list[dict[str, Any]]) -> list[Policy]:
    """One :class:`TablePolicy` per run from ``arms (S, C)``."""
    return [
        TablePolicy(runs.contexts, arms[s], runs.n_max, budget_used=int(runs.spent[s]), info=infos[s])
        for s in range(runs.n_runs)
    ]
