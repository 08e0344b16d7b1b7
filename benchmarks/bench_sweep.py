"""Time ``train.py --preset reproduction`` in CPU time, every cell class measured, and predict its wall time.

Run::

    python benchmarks/bench_sweep.py [--seeds 25] [--tasks ...] [--agents ...] [--workers 2]
                                     [--analysis runs/reproduction] [--json out.json]

What is measured (CPU time of this process, ``time.process_time``, one BLAS / torch thread as the
preset runs; CPU time is robust to other load on a shared machine, wall time is not):

* **Every cell class.** For every task x agent x budget of the preset, the sweep's own cells for
  the sample seeds ``0 .. --seeds - 1`` are built by the runner (:class:`iapo_gym.experiments.train.Runner`:
  the preset's agent configurations and chunking, i.e. one ``fit_many`` batch of 25 seeds for a
  batched agent, 25 one-seed cells for a sequential one), fitted and scored with
  :func:`iapo_gym.experiments.executors.fit_cell` and appended to a ``results.csv`` by the runner's
  writer (:meth:`Runner.consume`). The 25 sample seeds are exactly the first of the preset's 8
  chunks of every configuration; each class's CPU time is scaled by ``200 / --seeds``.
* **Per-seed set-up, on all 200 seeds** (not sampled): the synthetic worlds (drawn once per task and
  world seed, :func:`iapo_gym.experiments.train.world`) and the exact evaluators (one per task and
  seed, shared by every agent and budget).
* **The analysis** (Wilcoxon tables, figures, the report) when ``--analysis DIR`` names the output
  directory of a finished sweep (its ``results.csv`` and ``contexts.json``): ``train.py --preset
  reproduction --analyse-only`` on a copy of it, in a child process (its CPU time).

Tasks: every task with data here (the synthetic tasks always; real tasks whose table is imported),
and for HelpfulHarmless and Summarization when their tables are absent a stand-in of their
published sizes: a best-of-N table with 20 prompts, N_max = 32 and the 27 preference x cost
contexts (Synth-Categorical's outcome model on 512 queries, one table re-split per seed as a real
task is), registered as its own Gymnasium id.

The prediction: with the local executor (``--executor local``, one process) the wall time is the
CPU total. With ``--workers`` worker processes (``--executor process``) the cells are list-scheduled
in the runner's submission order (every sampled cell repeated for the 7 other chunks of its
configuration) onto the workers, each of which draws its own worlds and builds its own evaluators
for the seeds it meets (the set-up counted once per worker, an upper bound); the makespan assumes a
core per worker, i.e. a machine with nothing else running. Peak memory is this process's maximum
resident set, after every world and evaluator of the 200 seeds of every task has been built and
kept as in the sweep (per worker with ``--executor process``).
"""

from __future__ import annotations

import argparse
import heapq
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

BUDGETS = "1k,2k,5k,10k,20k,50k"
PRESET_RUNS = 200
TASKS = "SynthBernoulli,MATH,CommonsenseQA,SynthCategorical,HelpfulHarmless,Summarization,SmolArith"
STAND_INS = ("HelpfulHarmless", "Summarization")


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


def env_id_of(task: str) -> str | None:
    """The Gymnasium id to time for ``task`` (a registered stand-in for HH / Summarization), or None without data."""
    import gymnasium as gym

    from iapo_gym.env import IAPOEnv
    from iapo_gym.tasks import TASKS as KNOWN
    from iapo_gym.tasks import load_task_table

    env_id = f"IAPO-{task}-v0"
    if KNOWN[task].kind == "synthetic":
        return env_id
    try:
        load_task_table(task)
        return env_id
    except Exception:  # noqa: BLE001 - not imported here
        if task not in STAND_INS:
            return None
    table = stand_in(task)
    stand_id = f"IAPO-{task}Standin-v0"

    def make_env(**kwargs: Any) -> Any:  # one table object for every run, as a registered real task's
        kwargs.pop("world_seed", None)
        return IAPOEnv(table, **kwargs)

    gym.register(stand_id, entry_point=make_env)
    return stand_id


def makespan(durations: list[float], workers: int) -> float:
    """List scheduling in submission order: each cell goes to the first idle worker."""
    free = [0.0] * max(1, workers)
    for d in durations:
        heapq.heapreplace(free, free[0] + d)
    return max(free)


def time_analysis(done: Path, out: Path) -> float:
    """CPU seconds of ``train.py --preset reproduction --analyse-only`` on a copy of a finished sweep."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("results.csv", "contexts.json"):
        shutil.copy(done / name, out / name)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "iapo_gym.experiments.train", "--preset", "reproduction", "--analyse-only",
                    "--out", str(out), "--no-progress"], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    from iapo_gym.experiments.executors import fit_cell
    from iapo_gym.experiments.threads import limit_threads
    from iapo_gym.experiments.train import REPRODUCTION_AGENTS, Runner, make_args, make_plan, world
    from iapo_gym.tasks import TASKS as KNOWN

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=25, help="sample seeds 0..SEEDS-1 of every cell class (a multiple of 25)")
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--agents", default=REPRODUCTION_AGENTS)
    parser.add_argument("--budgets", default=BUDGETS)
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the predicted parallel sweep")
    parser.add_argument("--analysis", default="", help="output directory of a finished sweep: time its analysis")
    parser.add_argument("--json", default="", help="write every measurement to this file")
    args = parser.parse_args()
    scale = PRESET_RUNS / args.seeds
    report: dict[str, Any] = {"seeds": args.seeds, "runs": PRESET_RUNS, "tasks": {}, "cells": []}
    durations: list[float] = []  # per cell of the full sweep, in the runner's order
    setup_total = 0.0
    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    print(f"CPU seconds of the {PRESET_RUNS}-run sweep per task (cells: seeds 0..{args.seeds - 1} scaled x{scale:g}; "
          "worlds and evaluators: all 200 seeds)", flush=True)
    try:
        with limit_threads(1):
            for task in args.tasks.split(","):
                env_id = env_id_of(task)
                if env_id is None:
                    print(f"{task}: no data here, skipped", flush=True)
                    continue
                opts = make_args(preset="reproduction", env=env_id, agents=args.agents, budgets=args.budgets,
                                 runs=args.seeds, out=str(tmp / task), track=False, plots=False, figures="", report="",
                                 progress=False)
                plan = make_plan(opts)
                plan.out.mkdir(parents=True)
                runner = Runner(opts, plan, log=lambda _: None)
                runner.check_env(env_id)
                c0 = time.process_time()
                if KNOWN.get(task) is not None and KNOWN[task].kind == "synthetic":
                    for s in range(PRESET_RUNS):
                        world(task, s)
                c1 = time.process_time()
                for s in range(PRESET_RUNS):
                    runner.evaluator(env_id, s, None)
                c2 = time.process_time()
                worlds, evals = c1 - c0, c2 - c1
                per_agent: dict[str, float] = {}
                for label in plan.agents:
                    for budget in plan.budgets:
                        cpu, n = 0.0, 0
                        for seeds in runner.chunks(env_id, label, budget):
                            cell = runner.cell(env_id, label, budget, seeds)
                            t0 = time.process_time()
                            runner.consume(fit_cell(cell, partial(runner.evaluator, env_id)))
                            d = time.process_time() - t0
                            cpu, n = cpu + d, n + 1
                        durations.extend([cpu / n] * int(round(n * scale)))
                        per_agent[label] = per_agent.get(label, 0.0) + cpu * scale
                        report["cells"].append({"task": task, "agent": label, "budget": budget, "cells": n,
                                                "cpu_s_200": cpu * scale})
                fitting = sum(per_agent.values())
                total = worlds + evals + fitting
                setup_total += worlds + evals
                report["tasks"][task] = {"env": env_id, "worlds_s": worlds, "evaluators_s": evals, "cells_s": fitting,
                                         "total_s": total, "agents_s": per_agent}
                top = sorted(per_agent.items(), key=lambda kv: -kv[1])
                print(f"{task}: {total:.0f} s = worlds {worlds:.1f} + evaluators {evals:.1f} + cells {fitting:.0f} "
                      f"({', '.join(f'{a} {v:.0f}' for a, v in top)})", flush=True)
        analysis = time_analysis(Path(args.analysis), tmp / "analysis") if args.analysis else 0.0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tasks = report["tasks"]
    total = sum(t["total_s"] for t in tasks.values()) + analysis
    agents: dict[str, float] = {}
    for t in tasks.values():
        for a, v in t["agents_s"].items():
            agents[a] = agents.get(a, 0.0) + v
    parallel = makespan(durations, args.workers) + setup_total + analysis  # every worker builds its own set-up
    report.update(total_cpu_s=total, analysis_s=analysis, agents_s=agents, peak_rss_mb=peak,
                  wall_local_s=total, wall_process_s=parallel, workers=args.workers)
    ranked = sorted(agents.items(), key=lambda kv: -kv[1])
    print("\nper agent over all tasks: " + ", ".join(f"{a} {v:.0f} s" for a, v in ranked))
    if args.analysis:
        print(f"analysis (--analyse-only on {args.analysis}): {analysis:.0f} s")
    print(f"total {total:.0f} CPU s = {total / 60:.1f} CPU min")
    print(f"predicted wall: local executor (one process) {total / 60:.1f} min; --executor process with {args.workers} "
          f"workers {parallel / 60:.1f} min (one idle core per worker)")
    print(f"peak RSS of this process (every world and evaluator of the 200 seeds kept): {peak:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
