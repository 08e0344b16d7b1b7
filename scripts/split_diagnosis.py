"""Where a task's test regret comes from: which prompt each run deploys, against the train split's best and the table's.

    python scripts/split_diagnosis.py SmolArith --runs 200 --cells psst_model@5k,psst@50k

(a task name or its env id; ``--cells`` lists ``agent@budget`` items, each agent a ``[label=]target``
item of ``train.py``'s ``--agents``, configured with ``--agent-args`` as there:
``--cells psst_model@5k,ney=psst_model@5k --agent-args "ney:neyman=True"``.)

A run splits its task's queries into a train split, which the agent learns from, and a test split,
its complement, on which the exact regret is measured. For any arm the three exact values are tied:
``n_test * test = n * all - n_train * train`` (``all``: the value over every query of the run's
table), so whatever the train split over-rates, the test split under-rates ``n_train / n_test``
times. On a small real table (SmolArith: 19 train and 5 test queries out of 24) that makes the test
regret mostly a matter of which prompt is deployed.

For each cell (agent, budget), over every (run, context), weighted by the context's probability (as
a run's regret weighs them): **agree**, the share deploying the prompt of
the exact train-best arm; **top**, the share deploying the prompt of the best arm over all the run's
queries (the table's best); the mean exact **test regret**, and that mean over the (run, context)
pairs that deploy the table's best prompt and over the others. The first row is the **train
oracle** (the exact train-best arm of every context: the train-oracle floor), with its train and
test values' mean excess over their all-query value. Seeds are the reports' runs (the same split
and world as ``train.py``'s run ``seed``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass
class Cell:
    """One row of the diagnosis: per (run, context) arrays, flattened run-major; ``weight`` is the context's probability."""

    label: str
    weight: np.ndarray
    regret: np.ndarray
    agree: np.ndarray
    top: np.ndarray
    train_excess: np.ndarray | None = None
    test_excess: np.ndarray | None = None

    def mean(self, values: np.ndarray, where: np.ndarray | None = None) -> float:
        """The context-weighted mean of ``values`` (over the pairs in ``where``): a run's regret weighs its contexts so."""
        w = self.weight if where is None else np.where(where, self.weight, 0.0)
        return float(np.sum(w * values) / np.sum(w)) if np.sum(w) > 0 else float("nan")


def parse_cells(text: str) -> list[tuple[str, int]]:
    """``"psst_model@5k,psst@50k"`` -> ``[("psst_model", 5000), ("psst", 50000)]``; a bad item exits with one line."""
    from iapo_gym.experiments import ArgumentError, parse_budgets

    cells = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        agent, sep, budget = item.rpartition("@")
        if not sep or not agent:
            raise ArgumentError(f"--cells: {item!r} is not agent@budget (e.g. psst_model@5k)")
        try:
            cells.append((agent, parse_budgets(budget)[0]))
        except ArgumentError:
            raise ArgumentError(f"--cells: the budget of {item!r} is not a number (e.g. psst_model@5k)") from None
    if not cells:
        raise ArgumentError("--cells is empty; give agent@budget items, e.g. psst_model@5k,psst@50k")
    return cells


def _values(env: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ``(all, train, test)`` values ``(C, P, N)`` of a run's arms."""
    from iapo_gym import oracle

    per_query = oracle.per_query_values(env.table)  # (C, P, Q, N); cached on a shared table
    train, test = np.asarray(env.train_queries), np.asarray(env.test_queries)
    return per_query.mean(axis=2), per_query[:, :, train].mean(axis=2), per_query[:, :, test].mean(axis=2)


def diagnose(task: str, seeds: list[int], cells: list[tuple[str, int]], agent_args: str = "") -> list[Cell]:
    """The train oracle's row and one row per ``(agent, budget)`` cell, over ``seeds``."""
    from iapo_gym import oracle
    from iapo_gym.experiments import env_factory
    from iapo_gym.experiments.agentspec import AgentSpecError, resolve_agents

    names = list(dict.fromkeys(a for a, _ in cells))  # each a [label=]target item of --agents
    try:
        resolved = resolve_agents(",".join(names), agent_args)[0]
    except AgentSpecError as exc:
        raise AgentSpecError(str(exc).replace("--agents:", "--cells:", 1)) from None
    specs = dict(zip(names, resolved, strict=True))
    fitted = {
        f"{specs[agent].label} at {budget:,}": specs[agent].build().fit_many(env_factory(task, budget), budget, seeds)
        for agent, budget in cells
    }
    make = env_factory(task, 1)
    rows: dict[str, dict[str, list[np.ndarray]]] = {}
    for i, seed in enumerate(seeds):  # each run's exact values once, for every row
        env = make(seed)
        q_all, q_train, q_test = _values(env)
        n_max = q_all.shape[-1]
        best_train, best_all = oracle.best_arms(q_train), oracle.best_arms(q_all)
        top_test = q_test.reshape(q_test.shape[0], -1).max(axis=1)
        at = (np.arange(best_train.size), best_train // n_max, best_train % n_max)
        deployed = {"train oracle": best_train} | {
            label: np.asarray(policies[i].act(env.contexts.weights)) for label, policies in fitted.items()
        }
        for label, arms in deployed.items():
            parts = {
                "weight": np.asarray(env.contexts.probs, dtype=np.float64),
                "regret": top_test - oracle.context_values(q_test, arms),
                "agree": arms // n_max == best_train // n_max,
                "top": arms // n_max == best_all // n_max,
            }
            if label == "train oracle":
                parts |= {"train_excess": q_train[at] - q_all[at], "test_excess": q_test[at] - q_all[at]}
            for key, value in parts.items():
                rows.setdefault(label, {}).setdefault(key, []).append(value)
    return [Cell(label, **{k: np.concatenate(v) for k, v in parts.items()}) for label, parts in rows.items()]


def render(task: str, seeds: list[int], result: list[Cell]) -> str:
    """The diagnosis as a Markdown table, with the train oracle's excess line."""
    lines = [
        f"{task}, seeds {seeds[0]}-{seeds[-1]} ({len(seeds)} runs); over (run, context) pairs:",
        "",
        "| cell | agree (train-best prompt) | top (table's best prompt) | test regret | when top | otherwise |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in result:
        when = f"{c.mean(c.regret, c.top):.4f}" if c.top.any() else "-"
        other = f"{c.mean(c.regret, ~c.top):.4f}" if (~c.top).any() else "-"
        share = f"{c.mean(c.agree):.3f} | {c.mean(c.top):.3f}"
        lines.append(f"| {c.label} | {share} | {c.mean(c.regret):.4f} | {when} | {other} |")
    oracle_row = result[0]
    assert oracle_row.train_excess is not None and oracle_row.test_excess is not None
    above = oracle_row.mean(oracle_row.train_excess), oracle_row.mean(oracle_row.test_excess)
    lines += ["", f"The train-best arm's exact value above its all-query value: train {above[0]:+.4f}, test {above[1]:+.4f}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from iapo_gym.experiments import ArgumentError
    from iapo_gym.experiments.agentspec import AgentSpecError
    from iapo_gym.tasks import TASKS, task_name

    ap = argparse.ArgumentParser(prog="split_diagnosis.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("task", help="a task name (SmolArith) or its env id")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cells", default="psst_model@5k,psst@50k", help="agent@budget items")
    ap.add_argument("--agent-args", default="", help="as train.py's, keyed by agent name")
    args = ap.parse_args(argv)
    try:
        task = TASKS[task_name(args.task)].env_id
    except KeyError:
        ap.error(f"task {args.task!r} is unknown; give a task name or env id of: {', '.join(TASKS)}")
    if args.runs < 1:
        ap.error(f"--runs must be >= 1; got {args.runs}")
    seeds = list(range(args.seed, args.seed + args.runs))
    try:
        result = diagnose(task, seeds, parse_cells(args.cells), args.agent_args)
    except (ArgumentError, AgentSpecError) as exc:
        ap.error(str(exc))
    print(render(task, seeds, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
