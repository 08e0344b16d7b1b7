"""Uniform exact-knowledge reference for docs/BEYOND.md: the best arm on the exact Q of T / |P| train queries.

    python scripts/exact_reference.py IAPO-MATH-v0 --runs 50 --budgets 1k,5k,20k

For run ``seed`` (the split / world of ``train.py``'s protocol) and budget ``T``, draw
``k = min(n_train, T // |P|)`` random train queries (5 draws per run), take the arm that is best on
the exact Q averaged over them, and report its mean exact test regret, next to the train-oracle
floor (``k`` = every train query). It is as if one completion of each prompt on a query revealed
that query's exact value: not a lower bound for adaptive agents, but it separates query coverage
from per-query sampling noise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from iapo_gym import oracle
    from iapo_gym.experiments import ArgumentError, env_factory, parse_budgets
    from iapo_gym.experiments.evaluate import query_subtable

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("task")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--budgets", default="1k,5k,20k")
    args = ap.parse_args(argv)
    try:
        budgets = parse_budgets(args.budgets)
    except ArgumentError as exc:
        ap.error(str(exc))
    make = env_factory(args.task, 1)
    reg: dict[int, list[float]] = {b: [] for b in budgets}
    floor, n_train, n_prompts = [], 0, 1
    for seed in range(args.runs):
        env = make(seed)
        per_query = oracle.per_query_values(query_subtable(env.table, env.train_queries))  # (C, P, Q, N)
        q_test = oracle.q_values(query_subtable(env.table, env.test_queries))
        probs = env.contexts.probs
        n_train, n_prompts = per_query.shape[2], env.n_prompts
        floor.append(float(oracle.regret(q_test, oracle.best_arms(per_query.mean(axis=2)), probs)))
        rng = np.random.default_rng(seed)
        for b in budgets:
            k = min(n_train, max(1, b // n_prompts))
            draws = [rng.choice(n_train, size=k, replace=False) for _ in range(5)]
            values = [oracle.regret(q_test, oracle.best_arms(per_query[:, :, d].mean(axis=2)), probs) for d in draws]
            reg[b].append(float(np.mean(values)))
    print(f"{args.task}: train-oracle floor {np.mean(floor):.4f} ({args.runs} runs)")
    for b in budgets:
        print(f"  T = {b:>6,}: k = {min(n_train, b // n_prompts):>4} queries, mean test regret {np.mean(reg[b]):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
