"""Ray executor: scale-out from 1 to 2 workers, and per-cell overhead against the local executor.

Two sweeps, each run by the local executor and by a private Ray instance (``ray.init`` on
127.0.0.1) with 1 and with 2 CPUs, the three interleaved ``--repeats`` times (best wall time kept):

* ``cpu``: a CPU-bound sweep (PSST, Top-K 4 and Uniform on Synth-Categorical at 20k and 50k, 100
  runs in chunks of 25: 24 cells of one to a few seconds) -> speed-up of 2 Ray workers over 1;
* ``small``: many small cells (PSST on Synth-Bernoulli at T = 500, chunks of one seed) -> Ray's
  overhead per cell over the local executor, and as a share of the local wall time.

Wall time covers the whole ``train.py`` call (planning, fitting, exact evaluation, results.csv,
analysis); Ray's start-up (``ray.init`` of the private instance, a fixed cost per sweep) is
reported on its own line.

    python benchmarks/bench_ray.py [--repeats 2] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

SWEEPS = {
    "cpu": ["--env", "IAPO-SynthCategorical-v0", "--agents", "psst,topk4,uniform", "--budgets", "20k,50k",
            "--runs", "100", "--chunk", "25"],
    "small": ["--env", "IAPO-SynthBernoulli-v0", "--agents", "psst", "--budgets", "500", "--runs", "120",
              "--chunk", "1"],
}
QUICK = {"cpu": "25", "small": "30"}  # --runs of --quick


def with_runs(argv: list[str], runs: str) -> list[str]:
    """``argv`` with its ``--runs`` value replaced (train.py refuses an option given twice)."""
    return [runs if prev == "--runs" else tok for prev, tok in zip(["", *argv[:-1]], argv, strict=True)]


def run(argv: list[str], executor: str, cpus: int) -> tuple[float, int, float]:
    """Wall seconds of one ``train.py`` call, the runs it recorded and Ray's start-up seconds."""
    import ray

    from iapo_gym.experiments import train

    with tempfile.TemporaryDirectory() as out:
        extra = ["--executor", executor] if executor == "ray" else []
        t0 = time.perf_counter()
        if executor == "ray":
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            rc = train.main([*argv, *extra, "--out", out, "--no-track", "--no-plots", "--no-progress", "--threads", "1"])
        finally:
            wall = time.perf_counter() - t0
            if executor == "ray":
                ray.shutdown()
        if rc != 0:
            raise SystemExit(f"train.py failed ({rc})")
        rows = sum(1 for _ in open(Path(out) / "results.csv")) - 1
    return wall, rows, startup


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smaller sweeps (a smoke run)")
    args = p.parse_args()
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # warm-up: imports and cached worlds
        run(with_runs(SWEEPS["small"], "2"), "local", 0)
        run(with_runs(SWEEPS["small"], "2"), "ray", 2)
    for name, argv in SWEEPS.items():
        if args.quick:
            argv = with_runs(argv, QUICK[name])
        chunk = int(argv[argv.index("--chunk") + 1])
        best = {k: float("inf") for k in ("local", "ray1", "ray2")}
        startups = []
        for _ in range(args.repeats):  # interleaved: the three modes see the same machine load
            for key, (ex, cpus) in {"local": ("local", 0), "ray1": ("ray", 1), "ray2": ("ray", 2)}.items():
                with contextlib.redirect_stdout(io.StringIO()):
                    wall, n_rows, startup = run(argv, ex, cpus)
                best[key] = min(best[key], wall)
                if ex == "ray":
                    startups.append(startup)
        cells = n_rows // chunk
        print(f"\n{name}: {n_rows} runs in {cells} cells (best of {args.repeats})")
        print(f"  local executor   {best['local']:8.2f} s   (Ray start-up, not included below: "
              f"{min(startups):.1f}-{max(startups):.1f} s per sweep)")
        per_cell = 1e3 * (best["ray1"] - best["local"]) / cells
        print(f"  Ray, 1 worker    {best['ray1']:8.2f} s   overhead {per_cell:7.1f} ms/cell "
              f"({100 * (best['ray1'] / best['local'] - 1):+.1f} % of local)")
        print(f"  Ray, 2 workers   {best['ray2']:8.2f} s   speed-up over 1 worker {best['ray1'] / best['ray2']:.2f}x, "
              f"over local {best['local'] / best['ray2']:.2f}x")


if __name__ == "__main__":
    main()
