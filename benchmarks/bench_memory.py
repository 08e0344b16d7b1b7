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
    args = parser.parse_args()
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
