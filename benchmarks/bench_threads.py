"""Per-run fit time of the torch agents under CPU contention, with and without ``--threads 1``.

Run: ``python benchmarks/bench_threads.py [--pairs 3] [--load 1]``. While ``--load`` CPU-bound
busy processes run (what a second experiment, a test suite or a build does on a shared machine),
each trial runs ``train.py`` in a fresh process for PPO (Synth-Bernoulli, T = 2,000) and the
neural agent (Synth-Categorical, continuous contexts, T = 2,000) with ``--threads 0`` (the
libraries' defaults: one torch thread per core, what the runner did before ``--threads``) and
``--threads 1`` (the new default), interleaved ``--pairs`` times so both see the same load. It
prints the per-run fit seconds (``wall_s`` of results.csv) of every trial and the median ratio.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "ppo": ["--env", "IAPO-SynthBernoulli-v0", "--agents", "ppo", "--budgets", "2000", "--runs", "2"],
    "neural": ["--env", "IAPO-SynthCategorical-v0", "--contexts", "continuous", "--agents", "neural",
               "--budgets", "2000", "--runs", "2"],
}
BUSY = "import time\nt = time.monotonic() + {secs}\nwhile time.monotonic() < t:\n    sum(i * i for i in range(10000))\n"


def trial(case: str, threads: int, out: Path) -> float:
    """Mean per-run fit seconds of one fresh ``train.py`` process."""
    cmd = [sys.executable, "-m", "iapo_gym.experiments.train", *CASES[case], "--threads", str(threads),
           "--out", str(out), "--no-progress", "--no-plots", "--no-track"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=1800)
    with open(out / "results.csv", newline="") as fh:
        return statistics.mean(float(r["wall_s"]) for r in csv.DictReader(fh))


def main() -> None:
    """Run the interleaved trials and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=3, help="interleaved (threads 0, threads 1) pairs per agent")
    ap.add_argument("--load", type=int, default=1, help="CPU-bound busy processes running meanwhile")
    ap.add_argument("--cases", default="ppo,neural")
    args = ap.parse_args()
    busy = [subprocess.Popen([sys.executable, "-c", BUSY.format(secs=3600)]) for _ in range(args.load)]
    try:
        time.sleep(1.0)
        with tempfile.TemporaryDirectory() as tmp:
            for case in args.cases.split(","):
                times: dict[int, list[float]] = {0: [], 1: []}
                for i in range(args.pairs):
                    for threads in (0, 1):
                        t = trial(case, threads, Path(tmp) / f"{case}-{threads}-{i}")
                        times[threads].append(t)
                        print(f"{case:<7} --threads {threads}: {t:7.2f} s per run", flush=True)
                before, after = statistics.median(times[0]), statistics.median(times[1])
                print(f"{case:<7} median per run: --threads 0 (before) {before:.2f} s, --threads 1 (after) {after:.2f} s, "
                      f"{before / after:.1f}x faster", flush=True)
    finally:
        for p in busy:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
