"""Throughput of the exact oracle (``iapo_gym.oracle``), cold cache, against naive pure Python.

Run: ``python benchmarks/bench_oracle.py [--repeats 5]``. Prints, as text:

* MATH (the paper's released table; skipped when it is neither in the data directory nor at
  ``../shared/data/published/MATH_final.pkl``): exact MV Q for all 800 arms x 3 contexts over
  316 queries from a cold cache, and the ratio against a naive pure-Python exact computation
  (enumerating every vote-count vector per (prompt, query, N)) timed on a few rows and
  extrapolated to the whole table.
* Synth-Categorical-sized BoN tables (32 prompts x 512 queries x M outcomes, K = 2, 27
  contexts, N_max 32): exact BoN per-query values from a cold cache, and the ratio against a
  pure-Python loop over (context, prompt, query) of the same closed form, timed on a subset and
  extrapolated.
* 1,000 continuous MV contexts on MATH (warm credit cache): one multiply-add.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np

from iapo_gym import oracle
from iapo_gym.contexts import preference_contexts
from iapo_gym.tables.format import OutcomeTable

REPO = Path(__file__).resolve().parents[1]
SHARED_MATH = REPO.parent / "shared" / "data" / "published" / "MATH_final.pkl"


def _timed(fn, repeats: int) -> tuple[float, float, object]:
    """(best, median) seconds of ``fn()`` over ``repeats`` runs, and its last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), out


def load_math() -> OutcomeTable | None:
    """The MATH table from the data directory, else from ../shared; None when absent."""
    try:
        from iapo_gym.tables.store import load_named

        return load_named("MATH")
    except (FileNotFoundError, ImportError):
        pass
    if SHARED_MATH.exists():
        from iapo_gym.tables.importer import import_released

        return import_released(SHARED_MATH)
    return None


# --------------------------------------------------------------------------- naive references
def _naive_mv_row(p: list[float], gold: int, n_max: int) -> list[float]:
    """Exact E[credit] for N = 1..n_max by enumerating every vote-count vector (pure Python)."""

    def comps(n: int, parts: int):
        if parts == 1:
            yield (n,)
            return
        for i in range(n + 1):
            for rest in comps(n - i, parts - 1):
                yield (i, *rest)

    out = []
    for n in range(1, n_max + 1):
        total = 0.0
        for counts in comps(n, len(p)):
            top = max(counts)
            if counts[gold] != top:
                continue
            prob = math.factorial(n)
            for c, pi in zip(counts, p, strict=True):
                prob *= pi**c / math.factorial(c)
            total += prob / counts.count(top)
        out.append(total)
    return out


def _naive_bon_row(scores: list[float], probs: list[float], n_max: int) -> list[float]:
    """``sum_j s_(j) (F_j^N - F_{j-1}^N)`` for N = 1..n_max in pure Python."""
    pairs = sorted(zip(scores, probs, strict=True))
    out = []
    for n in range(1, n_max + 1):
        total, f_prev = 0.0, 0.0
        for s, p in pairs:
            f = f_prev + p
            total += s * (f**n - f_prev**n)
            f_prev = f
        out.append(total)
    return out


# --------------------------------------------------------------------------- benchmarks
def bench_math(repeats: int) -> None:
    table = load_math()
    if table is None:
        print("MATH: skipped (no table in the data directory and no ../shared/data/published/MATH_final.pkl)")
        return
    p, q, a = table.answer_probs.shape

    def cold():
        table.cache.clear()
        return oracle.q_values(table)

    best, med, qv = _timed(cold, repeats)
    arms = oracle.best_arms(qv)
    gold = np.broadcast_to(table.gold[None, :], (p, q)).reshape(-1)
    rows = np.unique(oracle._gold_first(table.answer_probs.reshape(-1, a), gold), axis=0)
    print(f"MATH exact MV oracle, cold cache: {p * table.n_max} arms x {len(table.contexts)} contexts x {q} queries "
          f"({p * q} prompt-query rows, {len(rows)} distinct): best {best * 1e3:.1f} ms, median {med * 1e3:.1f} ms")
    print(f"  oracle ACR {oracle.acr(qv, arms, table.contexts.probs):.4f}; best arms "
          + ", ".join(f"{n}=(p{i // table.n_max}, N{i % table.n_max + 1}) {qv.reshape(len(qv), -1)[c, i]:.4f}"
                      for c, (n, i) in enumerate(zip(table.contexts.names, arms, strict=True))))
    sample = [(0, 0), (4, 7), (12, 100)]
    t0 = time.perf_counter()
    naive = [_naive_mv_row(table.answer_probs[pi, qi].tolist(), int(table.gold[qi]), table.n_max) for pi, qi in sample]
    per_row = (time.perf_counter() - t0) / len(sample)
    exact = oracle.mv_credit(np.stack([table.answer_probs[pi, qi] for pi, qi in sample]),
                             np.array([table.gold[qi] for _, qi in sample]), table.n_max)
    err = float(np.abs(np.array(naive) - exact).max())
    naive_total = per_row * p * q
    print(f"  naive pure-Python enumeration: {per_row:.2f} s per row -> {naive_total / 60:.1f} min extrapolated to "
          f"{p * q} rows; speed-up x{naive_total / best:,.0f} (max abs difference on the sample {err:.1e})")

    w = np.stack([np.ones(1000), np.linspace(0.0, 1.0, 1000)], axis=1)
    best_c, med_c, _ = _timed(lambda: oracle.q_values(table, weights=w), repeats)
    print(f"  1,000 continuous contexts (warm credit cache): best {best_c * 1e3:.2f} ms, median {med_c * 1e3:.2f} ms")


def synth_bon_table(n_outcomes: int, seed: int = 0, n_prompts: int = 32, n_queries: int = 512) -> OutcomeTable:
    """A random table of Synth-Categorical size (values in [0, 4], 27 contexts)."""
    rng = np.random.default_rng(seed)
    p, q, m = n_prompts, n_queries, n_outcomes
    return OutcomeTable(
        task=f"bench-bon-M{m}",
        strategy="bon",
        prompts=tuple(f"p{i}" for i in range(p)),
        query_ids=tuple(f"q{j}" for j in range(q)),
        objectives=("o1", "o2"),
        objective_ranges=np.array([[0.0, 4.0], [0.0, 4.0]]),
        contexts=preference_contexts(("o1", "o2"), {"low": 0.01, "mid": 0.05, "high": 0.2}),
        n_max=32,
        cost=np.broadcast_to(rng.uniform(0.5, 1.5, size=(p, 1)), (p, q)).copy(),
        split=(rng.uniform(size=q) < 0.2).astype(np.int8),
        outcome_values=rng.uniform(0.0, 4.0, size=(p, q, m, 2)),
        outcome_probs=rng.dirichlet(np.ones(m), size=(p, q)),
    )


def bench_bon(repeats: int, n_outcomes: int) -> None:
    table = synth_bon_table(n_outcomes)
    p, q, m = table.outcome_probs.shape
    c = len(table.contexts)

    def cold():
        table.cache.clear()
        return oracle.per_query_values(table)

    best, med, values = _timed(cold, repeats)
    print(f"BoN {p} prompts x {q} queries x M={m} outcomes, {c} contexts, N_max {table.n_max} "
          f"({c * p * q:,} context-prompt-query rows), cold cache: best {best * 1e3:.0f} ms, median {med * 1e3:.0f} ms")
    rng = np.random.default_rng(1)
    picks = [(int(rng.integers(c)), int(rng.integers(p)), int(rng.integers(q))) for _ in range(200)]
    w = table.contexts.weights
    t0 = time.perf_counter()
    naive = []
    for ci, pi, qi in picks:
        scores = (table.outcome_values[pi, qi] @ w[ci, :-1]).tolist()
        emax = _naive_bon_row(scores, table.outcome_probs[pi, qi].tolist(), table.n_max)
        naive.append([e - w[ci, -1] * (n + 1) * table.cost[pi, qi] for n, e in enumerate(emax)])
    per_row = (time.perf_counter() - t0) / len(picks)
    err = float(np.abs(np.array(naive) - np.stack([values[ci, pi, qi] for ci, pi, qi in picks])).max())
    naive_total = per_row * c * p * q
    print(f"  naive pure-Python closed form: {per_row * 1e6:.0f} us per row -> {naive_total:.1f} s extrapolated; "
          f"speed-up x{naive_total / best:,.1f} (max abs difference on the sample {err:.1e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (best and median shown)")
    args = parser.parse_args()
    bench_math(args.repeats)
    for m in (8, 32):
        bench_bon(max(1, args.repeats // 2), m)


if __name__ == "__main__":
    main()
