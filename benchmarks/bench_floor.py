"""PSST against its compiled floor: a minimal kernel replaying PSST's exact schedule, interleaved.

Run::

    python benchmarks/bench_floor.py [--seeds 200] [--budgets 5000,20000,50000] [--tasks MATH,SynthCategorical]

For each task and budget the benchmark fits ``--seeds`` runs of PSST as one batch
(``fit_many``), recording every pull it makes (run, prompt, query, N). A single-thread kernel then
replays exactly that schedule -- the same pulls, so the same draws and the same nested blocks --
doing the minimal work PSST's statistics need:

* draw each completion by inverse CDF (one uniform each, the kernel's own generator);
* MV: cumulative per-category vote counts along the pull; the credit of EVERY nested block of
  every size ``k = 1..N`` (gold's share of the top of the block's votes, paper Eq. 2) from two
  rows of those counts; BoN: each completion's score under each distinct objective-weight row and
  every block's maximum from a sparse table of running maxima;
* per (run, prompt, k) tallies of gain, count and cost (a pull's per-completion cost is constant,
  so its blocks of size ``k`` cost ``count * k * cost``).

This is the *full-work* floor: every block is scored, as PSST's own definition of nested reuse
does; it skips no block of an arm that is trimmed everywhere, so our PSST (which does) may come
out below it. The kernel does not halve or allocate (that is per-round, not per-completion work),
so it is a lower bound on any implementation of the same schedule. The table reports per-run
CPU milliseconds (``time.process_time``: both are single-threaded, and CPU time is far less
disturbed than wall time on a shared machine) of the kernel and of our PSST (best of
``--repeats``, interleaved, env construction and the recording run not timed) and ours / kernel.

Why numba here and not in the engine: the kernel is the yardstick, so it must be the fastest
simple code (compiled loops, no temporaries): numba gives that from Python source in a few lines.
The engine itself stays numpy: numba would add llvmlite and a JIT warm-up of seconds to every
process (``train.py`` workers, Ray cells, tests) for a kernel that numpy already runs within a
small factor of the floor (see docs/AGENTS.md for the measured table), and a second, compiled code
path would have to reproduce numpy's float summation order bit for bit to keep every seed's
decisions unchanged. Needs ``pip install numba`` (benchmark only; not a dependency of iapo-gym).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - the benchmark's one extra requirement
    raise SystemExit("bench_floor needs numba for its compiled kernel: pip install numba") from None


# ------------------------------------------------------------------------------------- kernels
@numba.njit(cache=False, nogil=True)
def mv_kernel(run, prompt, query, n, cdf, gold, ucost, n_max, gain, cost, count, seed):  # pragma: no cover
    """Full-work MV replay: draws, cumulative votes, credit of every nested block, tallies."""
    np.random.seed(seed)
    a = cdf.shape[2]
    cum = np.zeros((n_max + 1, a), dtype=np.int32)
    recip = np.empty(a + 1)
    for t in range(1, a + 1):
        recip[t] = 1.0 / t
    for b in range(run.size):
        r, p, q, nn = run[b], prompt[b], query[b], n[b]
        g = gold[q]
        for j in range(nn):
            u = np.random.random()
            c = 0
            while c < a - 1 and u >= cdf[p, q, c]:
                c += 1
            rel = (c - g) % a
            for x in range(a):
                cum[j + 1, x] = cum[j, x]
            cum[j + 1, rel] += 1
        uc = ucost[p, q]
        for k in range(1, nn + 1):
            m = nn // k
            s = 0.0
            for i in range(m):
                lo, hi = i * k, i * k + k
                gv = cum[hi, 0] - cum[lo, 0]
                if k <= 2:
                    s += gv / k
                    continue
                ties = 1
                beaten = False
                for x in range(1, a):
                    v = cum[hi, x] - cum[lo, x]
                    if v > gv:
                        beaten = True
                        break
                    if v == gv:
                        ties += 1
                if not beaten:
                    s += recip[ties]
            gain[r, p, k - 1] += s
            count[r, p, k - 1] += m
            cost[r, p, k - 1] += m * k * uc


@numba.njit(cache=False, nogil=True)
def bon_kernel(run, prompt, query, n, cdf, values, obj_w, ucost, n_max, gain, cost, count, seed):  # pragma: no cover
    """Full-work BoN replay: draws, scores per objective row, block maxima by sparse table, tallies."""
    np.random.seed(seed)
    m_out = cdf.shape[2]
    n_u, n_k = obj_w.shape
    levels = 1
    while (1 << levels) <= n_max:
        levels += 1
    table = np.empty((levels, n_max))
    outc = np.empty(n_max, dtype=np.int64)
    for b in range(run.size):
        r, p, q, nn = run[b], prompt[b], query[b], n[b]
        for j in range(nn):
            u = np.random.random()
            c = 0
            while c < m_out - 1 and u >= cdf[p, q, c]:
                c += 1
            outc[j] = c
        uc = ucost[p, q]
        for k in range(1, nn + 1):
            count[r, p, k - 1] += nn // k
            cost[r, p, k - 1] += (nn // k) * k * uc
        for w in range(n_u):
            for j in range(nn):
                sc = 0.0
                for x in range(n_k):
                    sc += obj_w[w, x] * values[p, q, outc[j], x]
                table[0, j] = sc
            lev = 1
            while (1 << lev) <= nn:
                half = 1 << (lev - 1)
                for j in range(nn - (1 << lev) + 1):
                    table[lev, j] = max(table[lev - 1, j], table[lev - 1, j + half])
                lev += 1
            for k in range(1, nn + 1):
                lk = 0
                while (2 << lk) <= k:
                    lk += 1
                s = 0.0
                for i in range(nn // k):
                    lo = i * k
                    s += max(table[lk, lo], table[lk, lo + k - (1 << lk)])
                gain[r, w, p, k - 1] += s


# ------------------------------------------------------------------------------------ schedule
def record_schedule(agent: Any, make_env: Any, budget: int, seeds: list[int]) -> list[dict[str, Any]]:
    """Fit once while recording every drawn pull (run, prompt, query, n), one segment per batch.

    ``fit_many`` may cut the runs into several batches (memory budget), each with its own table
    (synthetic tasks stack their runs' worlds) and run numbering: each becomes one segment.
    """
    from iapo_gym import runs as runs_mod

    segments: dict[int, dict[str, Any]] = {}
    original = runs_mod.RunBatch._draw

    def draw(self: Any, run: Any, prompt: Any, n: Any, col: Any) -> Any:
        pulls = original(self, run, prompt, n, col)
        if id(self) not in segments:  # the segment keeps its batch alive, so ids are never reused
            segments[id(self)] = {"batch": self, "table": self.table, "contexts": self.contexts, "n_runs": self.n_runs}
            segments[id(self)].update(run=[], prompt=[], query=[], n=[])
        seg = segments[id(self)]
        for key, value in (("run", run), ("prompt", pulls.prompt), ("query", pulls.query), ("n", pulls.n)):
            seg[key].append(np.asarray(value, dtype=np.int64).copy())
        return pulls

    runs_mod.RunBatch._draw = draw  # type: ignore[method-assign]
    try:
        agent.fit_many(make_env, budget, seeds)
    finally:
        runs_mod.RunBatch._draw = original  # type: ignore[method-assign]
    return [
        {**seg, **{k: np.concatenate(seg[k]) for k in ("run", "prompt", "query", "n")}} for seg in segments.values()
    ]


def replay(segments: list[dict[str, Any]], seed: int = 0) -> float:
    """Run the kernel on every recorded segment; returns its total CPU time in seconds."""
    total = 0.0
    for sched in segments:
        table, n_runs = sched["table"], sched["n_runs"]
        p_n, n_max = table.n_prompts, table.n_max
        args = (sched["run"], sched["prompt"], sched["query"], sched["n"])
        ucost = np.ascontiguousarray(table.cost, dtype=np.float64)
        cost, count = np.zeros((n_runs, p_n, n_max)), np.zeros((n_runs, p_n, n_max), np.int64)
        if table.strategy == "mv":
            probs, gold = table.mv_arrays()
            cdf = np.cumsum(probs, axis=-1)
            cdf[..., -1] = 1.0
            gain = np.zeros((n_runs, p_n, n_max))
            t0 = time.process_time()
            mv_kernel(*args, cdf, gold.astype(np.int64), ucost, n_max, gain, cost, count, seed)
            total += time.process_time() - t0
            continue
        values, probs = table.bon_arrays()
        cdf = np.cumsum(probs, axis=-1)
        cdf[..., -1] = 1.0
        obj_w = np.ascontiguousarray(np.unique(sched["contexts"].weights[:, :-1], axis=0))
        gain = np.zeros((n_runs, obj_w.shape[0], p_n, n_max))
        vals = np.ascontiguousarray(values, dtype=np.float64)
        t0 = time.process_time()
        bon_kernel(*args, cdf, vals, obj_w, ucost, n_max, gain, cost, count, seed)
        total += time.process_time() - t0
    return total


def n_blocks(segments: list[dict[str, Any]]) -> int:
    """Nested blocks the schedule scores in full (sum over pulls of sum_k floor(N / k))."""
    n = np.concatenate([seg["n"] for seg in segments])
    ks = np.arange(1, int(n.max()) + 1)
    return int((n[:, None] // ks[None, :]).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200, help="runs per batch")
    parser.add_argument("--budgets", default="5000,20000,50000", help="comma-separated budgets in completions")
    parser.add_argument("--tasks", default="MATH,SynthCategorical", help="comma-separated tasks")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (best is reported)")
    args = parser.parse_args()

    from iapo_gym.agents import make_agent
    from iapo_gym.env import IAPOEnv
    from iapo_gym.tasks import TASKS, load_task_table

    seeds = list(range(int(args.seeds)))
    print(f"PSST vs the full-work compiled floor (numba {numba.__version__}), {len(seeds)} runs per batch, ms per run")
    print(f"{'task':>17} {'T':>7} {'draws/run':>10} {'blocks/run':>11} {'kernel':>8} {'ours':>8} {'ours/kern':>10}")
    for task in args.tasks.split(","):
        try:
            if TASKS[task].kind == "synthetic":
                tables = {s: load_task_table(task, world_seed=s) for s in seeds}
                envs = {s: IAPOEnv(tables[s], world_seed=s) for s in seeds}
            else:
                shared = load_task_table(task)
                envs = {s: IAPOEnv(shared, split_seed=s) for s in seeds}
        except Exception as exc:  # the task's data is absent here
            print(f"{task:>17} skipped: {type(exc).__name__}: {exc}")
            continue
        agent = make_agent("psst")
        for budget in (int(b) for b in args.budgets.split(",")):
            sched = record_schedule(agent, envs.__getitem__, budget, seeds)
            replay([{**seg, **{k: seg[k][:1] for k in ("run", "prompt", "query", "n")}} for seg in sched[:1]])  # compile
            kern, ours = [], []
            for _ in range(max(1, args.repeats)):
                kern.append(replay(sched))
                t0 = time.process_time()
                agent.fit_many(envs.__getitem__, budget, seeds)
                ours.append(time.process_time() - t0)
            k_ms, o_ms = 1e3 * min(kern) / len(seeds), 1e3 * min(ours) / len(seeds)
            draws = sum(int(seg["n"].sum()) for seg in sched) / len(seeds)
            print(
                f"{task:>17} {budget:>7} {draws:>10.0f} {n_blocks(sched) / len(seeds):>11.0f}"
                f" {k_ms:>8.3f} {o_ms:>8.3f} {o_ms / k_ms:>10.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
