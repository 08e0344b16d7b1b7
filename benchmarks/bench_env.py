"""Throughput of the simulated environment: batched pulls and ``env.step``.

Run: ``python benchmarks/bench_env.py [--batch 1024] [--n 32] [--repeats 5]``. Prints, as text:

* simulated completions per second of the batched structural API (``env.unwrapped.pull``,
  ``B`` pulls of ``N`` completions each, ledger charged) plus scoring them under every context,
  on MATH (the paper's released table; skipped when it is neither in the data directory nor at
  ``../shared/data/published/MATH_final.pkl``) and on Synth-Categorical;
* ``env.step`` per second through ``gym.make`` (reset + step, one-step episodes), and the
  ratio of batched to stepped completion throughput;
* seeding a batch of runs' generators (``--runs``, each ``Generator(PCG64(SeedSequence([seed,
  salt])))``): numpy's per-run construction against :func:`iapo_gym._seeding.generators` (the
  same generators), CPU time per run, interleaved, best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import iapo_gym  # noqa: F401  (registers the ids)
from iapo_gym import _seeding
from iapo_gym.env import IAPOEnv
from iapo_gym.tables.format import OutcomeTable

REPO = Path(__file__).resolve().parents[1]
SHARED_MATH = REPO.parent / "shared" / "data" / "published" / "MATH_final.pkl"


def _math_table() -> tuple[OutcomeTable | None, bool]:
    """The MATH table and whether it is in the data directory (so ``gym.make`` can load it)."""
    from iapo_gym.tables.store import TableNotFoundError, load_named

    try:
        return load_named("MATH"), True
    except TableNotFoundError:
        if not SHARED_MATH.exists():
            return None, False
        from iapo_gym.tables.importer import import_released

        return import_released(SHARED_MATH), False


def bench_pulls(env: IAPOEnv, batch: int, n: int, repeats: int) -> tuple[float, float]:
    """(completions/s of pull, completions/s of pull + score) — best of ``repeats``."""
    env.reset(seed=0)
    prompts = np.arange(batch) % env.n_prompts
    best_pull = best_all = float("inf")
    for _ in range(repeats):
        env.ledger.reset()
        t0 = time.perf_counter()
        pulls = env.pull(prompts, np.full(batch, n))
        t1 = time.perf_counter()
        env.score(pulls)
        t2 = time.perf_counter()
        best_pull, best_all = min(best_pull, t1 - t0), min(best_all, t2 - t0)
    return batch * n / best_pull, batch * n / best_all


def bench_steps(env: gym.Env, steps: int) -> float:
    """``env.step`` calls per second (each followed by the next one-step episode's reset), N = 1."""
    env.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step(0)
        env.reset()
    return steps / (time.perf_counter() - t0)


def bench_seeding(runs: int, repeats: int) -> tuple[float, float]:
    """(us per run numpy's way, us per run batched) to seed ``runs`` generators; best of ``repeats``, interleaved."""
    seeds, salt = list(range(runs)), 0x1234ABCD

    def numpys() -> list[np.random.Generator]:
        return [np.random.Generator(np.random.PCG64(np.random.SeedSequence([s, salt]))) for s in seeds]

    def batched() -> list[np.random.Generator]:
        return _seeding.generators(seeds, [salt])

    best = [float("inf"), float("inf")]
    loops = max(1, 20_000 // max(runs, 1))
    for _ in range(repeats):
        for i, fn in enumerate((numpys, batched)):
            t0 = time.process_time()
            for _ in range(loops):
                fn()
            best[i] = min(best[i], (time.process_time() - t0) / loops / runs * 1e6)
    return best[0], best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024, help="pulls per batch")
    parser.add_argument("--n", type=int, default=32, help="completions per pull")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (best is reported)")
    parser.add_argument("--steps", type=int, default=5000, help="env.step calls to time")
    parser.add_argument("--runs", type=int, default=200, help="runs whose generators are seeded together")
    args = parser.parse_args()

    math_table, math_stored = _math_table()
    tasks = [("MATH", math_table, math_stored), ("SynthCategorical", None, True)]
    print(f"batched pulls: B={args.batch} x N={args.n} completions, best of {args.repeats}")
    for name, table, makeable in tasks:
        if name == "MATH" and table is None:
            print("  MATH: skipped (table not imported and ../shared/data absent)")
            continue
        task = table if table is not None else name
        env = IAPOEnv(task)
        pull_rate, all_rate = bench_pulls(env, args.batch, args.n, args.repeats)
        print(f"  {name:<17} {pull_rate / 1e6:8.2f} M completions/s drawn   "
              f"{all_rate / 1e6:8.2f} M/s drawn + scored under {len(env.contexts)} contexts")
        raw = bench_steps(IAPOEnv(task), args.steps)
        made = (
            f"{bench_steps(gym.make(f'IAPO-{name}-v0'), args.steps):,.0f}" if makeable else "n/a (not in the data directory)"
        )
        print(f"  {'':<17} env.step (N=1): {raw:,.0f} steps/s unwrapped, {made} through gym.make; "
              f"batched / stepped completions: {pull_rate / raw:,.0f}x")
    old, new = bench_seeding(args.runs, args.repeats)
    print(f"seeding {args.runs} runs' generators: {old:.2f} us/run numpy's way, {new:.2f} us/run batched "
          f"(iapo_gym._seeding): {old / new:.1f}x")

if __name__ == "__main__":
    main()
