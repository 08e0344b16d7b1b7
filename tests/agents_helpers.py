"""Tables and env factories shared by the agent tests (real components: OutcomeTable + IAPOEnv)."""

from __future__ import annotations

from functools import cache

import numpy as np

from iapo_gym.contexts import cost_contexts
from iapo_gym.tables.format import OutcomeTable
from iapo_gym.tables.testing import example_table


def make_env(table: OutcomeTable, seed: int, budget: int | None = None):
    """An IAPOEnv on ``table`` whose train/test split comes from ``seed``."""
    from iapo_gym.env import IAPOEnv

    return IAPOEnv(table, budget=budget, split_seed=seed, world_seed=seed)


@cache
def small_table(strategy: str, n_prompts: int = 4, n_max: int = 6, n_queries: int = 20, seed: int = 0) -> OutcomeTable:
    """A small random table of either strategy (iapo_gym.tables.testing.example_table)."""
    return example_table(strategy, seed=seed, n_prompts=n_prompts, n_queries=n_queries, n_max=n_max)


@cache
def easy_mv_table() -> OutcomeTable:
    """Four prompts with clear gaps; every query has the same answer distribution (train Q = test Q).

    Binary answers (gold = category 0) with success rates 0.6, 0.7, 0.4, 0.3 and ``N_max = 7``;
    cost 0.1 per completion. The optimal arms are (p1, N=7) in the free context (Q 0.874 vs 0.837)
    and (p1, N=1) in the expensive one (Q 0.6 vs 0.5), with gaps of at least 0.037.
    """
    rates = np.array([0.6, 0.7, 0.4, 0.3])
    q = 24
    probs = np.repeat(np.stack([rates, 1 - rates], axis=1)[:, None, :], q, axis=1)
    return OutcomeTable(
        task="EasyMV",
        strategy="mv",
        prompts=tuple(f"p{i}" for i in range(4)),
        query_ids=tuple(f"q{j}" for j in range(q)),
        objectives=("correct",),
        objective_ranges=np.array([[0.0, 1.0]]),
        contexts=cost_contexts({"free": 0.0, "expensive": 1.0}),
        n_max=7,
        cost=np.full((4, q), 0.1),
        split=np.r_[np.zeros(q - 6, np.int8), np.ones(6, np.int8)],
        answer_probs=probs,
        gold=np.zeros(q, np.int64),
    )
