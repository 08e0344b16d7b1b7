"""Peak memory of many runs: PSST, 2,000 runs at T = 50,000 on a 48-prompt x 1,500-query MV table.

Run: ``python benchmarks/bench_memory.py [--runs 2000] [--budget 50000] [--check 200]``.

Each measurement runs in a fresh process (peak RSS from ``getrusage``) on a synthetic MV table of
the size the issue names (48 prompts, 1,500 queries, N_max = 32, 5 answer categories; every run
re-splits it 80/20 by its seed, like a real task):

1. ``--runs`` runs with the default memory budget (:data:`iapo_gym.runs.DEFAULT_MEMORY_BUDGET`,
   chunked runs and bounded sampler calls);
2. the first ``--check`` of those seeds again *unchunked* (a 64 GiB budget: one batch, one call per
   size class and round), to show that chunking changes no result: each seed's deployed arms,
   spend and diagnostics are hashed and compared, and their exact test ACR is computed;
3. the same ``--runs`` runs through the experiment runner (``iapo_gym.experiments.run_experiment``,
   what ``train.py`` runs: cells of seeds, exact evaluation, ``results.csv``) with the default memory
   budget, the table registered as a Gymnasium id; its recorded ACR of the first ``--check`` seeds
   must equal the unchunked runs' ACR.

``--continuous`` measures instead the memory of exact evaluation with continuous contexts (each run
scored on the 2,000-context held-out sample): a sweep of ``--runs`` and of twice as many runs of
the Random agent (cheap to fit, so evaluation is what holds memory) through the experiment runner
on Synth-Bernoulli (majority vote) and Synth-Categorical (best-of-N), each in a fresh process; the
MB per run is the growth of peak RSS per added run. Run it once with the code to compare on the
``PYTHONPATH`` (e.g. an older checkout) and once without.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time


def _table():
    from iapo_gym.tables.testing import example_table

    return example_table("mv", seed=0, n_prompts=48, n_queries=1500, n_outcomes=5, n_max=32)


def through_runner(runs: int, budget: int) -> dict[str, object]:
    """``runs`` PSST runs through the experiment runner; returns the recorded ACR per seed and peak RSS."""
    import tempfile

    import gymnasium as gym

    from iapo_gym.experiments import run_experiment
    from iapo_gym.experiments.results import Results

    table = _table()

    def make_env(**kwargs: object) -> object:  # one table object for every run, as a registered task's
        from iapo_gym.env import IAPOEnv

        return IAPOEnv(table, **kwargs)  # type: ignore[arg-type]

    gym.register("IAPO-BenchMV-v0", entry_point=make_env)  # (a table in kwargs would be deep-copied per run)
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        run_experiment(env="IAPO-BenchMV-v0", agents="psst", budgets=[budget], runs=runs, out=out, track=False,
                       plots=False, progress=False, log=lambda _: None)
        res = Results.read(f"{out}/results.csv")
    wall = time.perf_counter() - t0
    acr = dict(zip(res.seed.tolist(), res.acr.tolist(), strict=True))
    return {"acr": [acr[s] for s in range(runs)], "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "table_and_imports_mb": base_mb, "wall_s": wall}


def continuous_sweep(env: str, runs: int) -> dict[str, object]:
    """``runs`` Random runs (T = 300), continuous contexts, through the runner: peak RSS, what one evaluator keeps."""
    import tempfile

    from iapo_gym.experiments import run_experiment
    from iapo_gym.experiments.evaluate import ExactEvaluator
    from iapo_gym.experiments.train import env_factory

    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        run_experiment(env=env, contexts="continuous", agents="random", budgets=[300], runs=runs, out=out, track=False,
                       plots=False, progress=False, log=lambda _: None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ev = ExactEvaluator(env_factory(env, 300, "continuous")(0), "continuous", shared_table=False)
    kept = getattr(ev, "nbytes", None)
    kept = kept if kept is not None else ev.q.nbytes + ev.near.nbytes  # before: Q-values and the tie mask
    return {"peak_mb": peak, "before_mb": base_mb, "wall_s": time.perf_counter() - t0, "kept_mb": kept / 1e6}


def fit(runs: int, budget: int, memory_budget: int | None) -> dict[str, object]:
    """Fit ``runs`` PSST runs; returns per-seed hashes and exact test ACR, peak RSS (MB) and wall time."""
    from iapo_gym import oracle
    from iapo_gym.agents import make_agent
    from iapo_gym.env import IAPOEnv

    table = _table()
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    agent = make_agent("psst")
    policies = agent.fit_many(lambda s: IAPOEnv(table, split_seed=s), budget, range(runs), memory_budget=memory_budget)
    wall = time.perf_counter() - t0
    hashes = [
        hashlib.sha256(p.arms.tobytes() + json.dumps(p.info, sort_keys=True).encode()).hexdigest()[:16]  # type: ignore[attr-defined]
        for p in policies
    ]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    acr = []
    if memory_budget is not None:  # the unchunked reference: exact test ACR of each policy
        for s, p in enumerate(policies):
            env = IAPOEnv(table, split_seed=s)
            acr.append(oracle.acr(oracle.q_values(table, env.test_queries), p, env.contexts.probs, env.contexts.weights))
    return {"hashes": hashes, "peak_mb": peak_mb, "table_and_imports_mb": base_mb, "wall_s": wall,
            "used": sum(p.budget_used for p in policies) / len(policies), "acr": acr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--budget", type=int, default=50_000)
    parser.add_argument("--check", type=int, default=200, help="seeds re-fitted unchunked for the identity check")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--runner-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--continuous", action="store_true", help="measure continuous-context evaluation instead")
    parser.add_argument("--continuous-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.continuous_child:
        print(json.dumps(continuous_sweep(args.continuous_child[0], int(args.continuous_child[1]))))
        return
    if args.child:
        runs, budget, mem = (int(x) for x in args.child)
        print(json.dumps(fit(runs, budget, mem or None)))
        return
    if args.runner_child:
        print(json.dumps(through_runner(*(int(x) for x in args.runner_child))))
        return

    def child(*argv: str) -> dict[str, object]:
        out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=True)
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))

    if args.continuous:
        runs = args.runs if "--runs" in sys.argv else 50
        print(f"continuous contexts, Random at T = 300 through the runner: peak RSS at {runs} and {2 * runs} runs")
        for env in ("IAPO-SynthBernoulli-v0", "IAPO-SynthCategorical-v0"):
            one, two = (child("--continuous-child", env, str(n)) for n in (runs, 2 * runs))
            per_run = (float(two["peak_mb"]) - float(one["peak_mb"])) / runs  # type: ignore[arg-type]
            print(f"  {env}: {one['peak_mb']:.0f} MB / {two['peak_mb']:.0f} MB (before the sweep "
                  f"{one['before_mb']:.0f} MB): {per_run:.2f} MB per added run; one run's evaluator keeps "
                  f"{one['kept_mb']:.2f} MB; {two['wall_s']:.0f} s for {2 * runs} runs")
        return
    chunked = child("--child", str(args.runs), str(args.budget), "0")
    whole = child("--child", str(args.check), str(args.budget), str(64 << 30))
    runner = child("--runner-child", str(args.runs), str(args.budget))
    same = chunked["hashes"][: args.check] == whole["hashes"]  # type: ignore[index]
    same_acr = runner["acr"][: args.check] == whole["acr"]  # type: ignore[index]
    print(f"PSST, T = {args.budget}, 48 prompts x 1,500 queries (MV, N_max = 32)")
    print(f"  {args.runs} runs, default memory budget: peak RSS {chunked['peak_mb']:.0f} MB "
          f"(process before fitting: {chunked['table_and_imports_mb']:.0f} MB), {chunked['wall_s']:.1f} s, "
          f"{1e3 * float(chunked['wall_s']) / args.runs:.2f} ms/run, mean spend {chunked['used']:.0f}")  # type: ignore[arg-type]
    print(f"  first {args.check} seeds unchunked (64 GiB budget): peak RSS {whole['peak_mb']:.0f} MB; "
          f"identical policies: {same}")
    print(f"  {args.runs} runs through the experiment runner (train.py's harness, results.csv, exact evaluation): "
          f"peak RSS {runner['peak_mb']:.0f} MB (before: {runner['table_and_imports_mb']:.0f} MB), "
          f"{runner['wall_s']:.1f} s; recorded ACR of the first {args.check} seeds equal to the unchunked runs': {same_acr}")
    if not (same and same_acr):
        raise SystemExit("chunked and unchunked runs differ")


if __name__ == "__main__":
    main()
