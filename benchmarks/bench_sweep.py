"""Estimate the wall time of ``train.py --preset reproduction`` from per-cell CPU time on a sample of seeds.

Run::

    python benchmarks/bench_sweep.py [--seeds 25] [--tasks ...] [--agents ...] [--cores 2]

For every task with data here (the synthetic tasks always; real tasks whose table is imported) and
two stand-ins for HelpfulHarmless and Summarization when their tables are absent -- a synthetic
best-of-N table of their published sizes (20 prompts, N_max = 32, the 27 preference x cost
contexts; Synth-Categorical's outcome model on 512 queries, one table re-split per seed as a real
task is) -- it fits every agent of the preset at every budget on ``--seeds`` runs as the sweep does
(one ``fit_many`` batch, then the exact evaluation of each run; a synthetic task's worlds drawn once
per seed, as :func:`iapo_gym.experiments.train.world` does) and records the process CPU time.

The estimate scales each cell to the preset's 200 runs (CPU per run x 200; batches of 200 are at
least as fast per run as the sample's smaller ones, so this errs high), adds the per-seed
evaluator set-up, and divides by ``--cores`` times the parallel efficiency measured for the Ray
executor (``--efficiency``; benchmarks/bench_ray.py: 1.45x on 2 workers). Peak memory is the
process's maximum resident set. CPU time is robust to other load on the machine; the wall time of
an actual sweep is not.
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

import numpy as np

BUDGETS = (1_000, 2_000, 5_000, 10_000, 20_000, 50_000)
PRESET_RUNS = 200


def stand_in(name: str) -> Any:
    """A synthetic BoN table of HelpfulHarmless / Summarization's published sizes (20 prompts, 27 contexts)."""
    from dataclasses import replace

    from iapo_gym.tasks.synthetic import make_synth_categorical

    base = make_synth_categorical(1_000 + len(name))
    keep = np.arange(20)
    return replace(
        base,
        task=f"{name}-standin",
        prompts=tuple(base.prompts[i] for i in keep),
        cost=base.cost[keep],
        outcome_values=base.outcome_values[keep],
        outcome_probs=base.outcome_probs[keep],
    )


def task_envs(task: str) -> tuple[Any, bool] | None:
    """``(make_env(seed), shared_table)`` for a task, or None when its data is absent."""
    from iapo_gym.env import IAPOEnv
    from iapo_gym.experiments.train import world
    from iapo_gym.tasks import TASKS, load_task_table

    if task in ("HelpfulHarmless", "Summarization"):
        try:
            table = load_task_table(task)
        except Exception:  # noqa: BLE001 - the real table is absent: its stand-in
            table = stand_in(task)
        return (lambda s, t=table: IAPOEnv(t, split_seed=s)), True
    if TASKS[task].kind == "synthetic":
        return (lambda s: IAPOEnv(world(task, s), split_seed=s, world_seed=s)), False
    try:
        table = load_task_table(task)
    except Exception:  # noqa: BLE001 - not imported here
        return None
    return (lambda s, t=table: IAPOEnv(t, split_seed=s)), True


def main() -> None:
    from iapo_gym.agents import make_agent
    from iapo_gym.experiments.evaluate import ExactEvaluator
    from iapo_gym.experiments.train import REPRODUCTION_AGENTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=25, help="runs per sampled cell")
    parser.add_argument("--tasks", default="SynthBernoulli,MATH,CommonsenseQA,SynthCategorical,HelpfulHarmless,Summarization")
    parser.add_argument("--agents", default=REPRODUCTION_AGENTS)
    parser.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS))
    parser.add_argument("--cores", type=int, default=2, help="worker processes of the sweep")
    parser.add_argument("--efficiency", type=float, default=1.45 / 2, help="speed-up per core of the Ray executor")
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    budgets = [int(b) for b in args.budgets.split(",")]
    total = 0.0
    print(f"CPU seconds for {PRESET_RUNS} runs (scaled from {args.seeds}), per task and agent, over budgets {budgets}")
    for task in args.tasks.split(","):
        found = task_envs(task)
        if found is None:
            print(f"{task}: no data here, skipped")
            continue
        make_env, shared = found
        # the first evaluator of a shared table also fills the table's oracle cache (once per task)
        c0 = time.process_time()
        evaluators = {seeds[0]: ExactEvaluator(make_env(seeds[0]), "finite", shared_table=shared)}
        c1 = time.process_time()
        evaluators |= {s: ExactEvaluator(make_env(s), "finite", shared_table=shared) for s in seeds[1:]}
        per_seed = (time.process_time() - c1) / max(1, len(seeds) - 1)
        setup = (c1 - c0) + per_seed * (PRESET_RUNS - 1)
        task_total = setup
        parts = []
        for name in args.agents.split(","):
            agent = make_agent(name)
            cpu = 0.0
            for budget in budgets:
                c0 = time.process_time()
                policies = agent.fit_many(make_env, budget, seeds)
                for s, p in zip(seeds, policies, strict=True):
                    evaluators[s].evaluate(p)
                cpu += time.process_time() - c0
            scaled = cpu / len(seeds) * PRESET_RUNS
            task_total += scaled
            parts.append(f"{name} {scaled:.0f}")
        total += task_total
        print(f"{task}: {task_total:.0f} s (evaluator set-up {setup:.0f}; {', '.join(parts)})", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall = total / max(1.0, args.cores * args.efficiency)
    print(f"\ntotal {total:.0f} CPU s = {total / 60:.1f} CPU min; on {args.cores} cores at {args.efficiency:.2f} "
          f"per core: about {wall / 60:.1f} min wall; peak RSS of this process {peak:.0f} MB")


if __name__ == "__main__":
    main()
