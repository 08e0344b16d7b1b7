"""Peak memory of many runs: PSST, 2,000 runs at T = 50,000 on a 48-prompt x 1,500-query MV table.

Run: ``python benchmarks/bench_memory.py [--runs 2000] [--budget 50000] [--check 200]``.

Each measurement runs in a fresh process (peak RSS from ``getrusage``) on a synthetic MV table of
the size the issue names (48 prompts, 1,500 queries, N_max = 32, 5 answer categories; every run
re-splits it 80/20 by its seed, like a real task):

1. ``--runs`` runs with the default memory budget (:data:`iapo_gym.runs.DEFAULT_MEMORY_BUDGET`,
   chunked runs and bounded sampler calls);
2. the first ``--check`` of those seeds again *unchunked* (a 64 GiB budget: one batch, one call per
   size class and round), to show that chunking changes no result: each seed's deployed arms,
   spend and diagnostics are hashed and compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time


def fit(runs: int, budget: int, memory_budget: int | None) -> dict[str, object]:
    """Fit ``runs`` PSST runs; returns per-seed hashes, peak RSS (MB) and wall time."""
    from iapo_gym.agents import make_agent
    from iapo_gym.env import IAPOEnv
    from iapo_gym.tables.testing import example_table

    table = example_table("mv", seed=0, n_prompts=48, n_queries=1500, n_outcomes=5, n_max=32)
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
    return {"hashes": hashes, "peak_mb": peak_mb, "table_and_imports_mb": base_mb, "wall_s": wall,
            "used": sum(p.budget_used for p in policies) / len(policies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--budget", type=int, default=50_000)
    parser.add_argument("--check", type=int, default=200, help="seeds re-fitted unchunked for the identity check")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        runs, budget, mem = (int(x) for x in args.child)
        print(json.dumps(fit(runs, budget, mem or None)))
        return

    def child(runs: int, mem: int) -> dict[str, object]:
        out = subprocess.run([sys.executable, __file__, "--child", str(runs), str(args.budget), str(mem)],
                             capture_output=True, text=True, check=True)
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))

    chunked = child(args.runs, 0)
    whole = child(args.check, 64 << 30)
    same = chunked["hashes"][: args.check] == whole["hashes"]  # type: ignore[index]
    print(f"PSST, T = {args.budget}, 48 prompts x 1,500 queries (MV, N_max = 32)")
    print(f"  {args.runs} runs, default memory budget: peak RSS {chunked['peak_mb']:.0f} MB "
          f"(process before fitting: {chunked['table_and_imports_mb']:.0f} MB), {chunked['wall_s']:.1f} s, "
          f"{1e3 * float(chunked['wall_s']) / args.runs:.2f} ms/run, mean spend {chunked['used']:.0f}")  # type: ignore[arg-type]
    print(f"  first {args.check} seeds unchunked (64 GiB budget): peak RSS {whole['peak_mb']:.0f} MB; "
          f"identical policies: {same}")
    if not same:
        raise SystemExit("chunked and unchunked runs differ")


if __name__ == "__main__":
    main()
