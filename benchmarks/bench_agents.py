"""Throughput of the agent zoo: runs per second of one (task, agent, budget) configuration.

Run: ``python benchmarks/bench_agents.py [--seeds 200] [--agents psst,topk4,...] [--budgets 5000,50000]``.

For every task (MATH -- the paper's released table, skipped when it is neither in the data
directory nor at ``../shared/data/published/MATH_final.pkl`` -- and Synth-Categorical), agent and
budget it fits ``--seeds`` runs as ONE vectorised batch (``Agent.fit_many``; real tasks: one shared
table with per-seed 80/20 splits; synthetic tasks: one world per seed, built before timing) and
prints the wall time per run (best of ``--repeats`` batches, fresh envs each; also the median and
the process-CPU rate, since a shared machine's load moves wall times), runs per second, the mean
budget used, and the speed-up over the paper authors' implementation: ~0.45 s per PSST run at
T = 5,000 and ~3.8 s at T = 50,000 on MATH
(single-threaded pure Python/numpy; the reference applies to every agent for comparison, but is
measured for PSST). Env construction is not timed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from iapo_gym.agents import make_agent
from iapo_gym.env import IAPOEnv

REPO = Path(__file__).resolve().parents[1]
SHARED_MATH = REPO.parent / "shared" / "data" / "published" / "MATH_final.pkl"
REFERENCE_S = {5_000: 0.45, 50_000: 3.8}  # authors' PSST, seconds per run on MATH


def math_table():
    """MATH from the data directory, else from ../shared; ``None`` when absent."""
    try:
        from iapo_gym.tasks import load_task_table

        return load_task_table("MATH")
    except Exception:
        if not SHARED_MATH.exists():
            return None
        from iapo_gym.tables.importer import import_released

        t = import_released(SHARED_MATH)
        return t[0] if isinstance(t, list) else t


def bench(task: str, agents: list[str], budgets: list[int], seeds: int, warmup: bool = True, repeats: int = 3) -> None:
    """Time every (agent, budget) on ``task``: ``repeats`` batches of ``seeds`` runs, fresh envs each.

    Reports the best and the median wall time over the repeats (the best is the least disturbed by
    other load on a shared machine) and the process CPU time of the best repeat.
    """
    seed_list = list(range(seeds))
    if task == "MATH":
        table = math_table()
        if table is None:
            print(f"MATH: skipped (no table in the data directory or at {SHARED_MATH})")
            return
        make = lambda s: IAPOEnv(table, split_seed=s)  # noqa: E731
    else:
        from iapo_gym.tasks import load_task_table

        worlds = {s: load_task_table(task, world_seed=s) for s in seed_list}
        make = lambda s: IAPOEnv(worlds[s], world_seed=s)  # noqa: E731
    print(f"\n{task}: {seeds} seeds per batch, best of {repeats} batches")
    print(f"{'agent':>15} {'T':>7} {'ms/run':>9} {'runs/s':>9} {'median':>9} {'cpu r/s':>9} {'used':>8} {'x ref':>8}")
    for name in agents:
        agent = make_agent(name)
        if warmup:
            agent.fit_many(make, 500, [0])
        for budget in budgets:
            walls, cpus = [], []
            for _ in range(max(1, repeats)):
                envs = [make(s) for s in seed_list]  # built outside the timed region
                t0, c0 = time.perf_counter(), time.process_time()
                policies = agent.fit_many(lambda s, envs=envs: envs[s], budget, seed_list)
                walls.append((time.perf_counter() - t0) / seeds)
                cpus.append((time.process_time() - c0) / seeds)
            best = int(np.argmin(walls))
            dt, med = walls[best], float(np.median(walls))
            used = np.mean([p.budget_used for p in policies])
            ref = REFERENCE_S.get(budget)
            ratio = f"{ref / dt:8.0f}" if ref else "       -"
            print(
                f"{name:>15} {budget:>7} {dt * 1e3:9.2f} {1 / dt:9.1f} {1 / med:9.1f} {1 / cpus[best]:9.1f} "
                f"{used:8.0f} {ratio}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200, help="runs per batch")
    parser.add_argument(
        "--agents", default="psst,topk1,topk4,topk8,uniform,triple_n1,triple_nrandom,seqhalving,ucb,egreedy,softmax,random",
        help="comma-separated agent names (SB3 agents are per-seed and slow; add them explicitly)",
    )
    parser.add_argument("--budgets", default="5000,50000", help="comma-separated budgets in completions")
    parser.add_argument("--tasks", default="MATH,SynthCategorical", help="comma-separated tasks")
    parser.add_argument("--repeats", type=int, default=3, help="batches timed per configuration (best is reported)")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    for task in args.tasks.split(","):
        bench(task, args.agents.split(","), budgets, args.seeds, repeats=args.repeats)


if __name__ == "__main__":
    main()
