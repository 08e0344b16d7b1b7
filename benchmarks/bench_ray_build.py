"""Builds on Ray against local builds: the driver's per-request overhead and two-endpoint scale-out.

Two local OpenAI-compatible test servers, each in its own process (fixed latency ``--latency`` s
per request, so a server is latency-bound like a remote endpoint), and the same build (the
SmolArith spec over ``--queries`` x 3 prompts, pool 4) run three ways, alternating so drift in the
machine's load cancels:

* **local**: one process, one endpoint, ``--concurrency`` requests in flight;
* **ray, 1 endpoint**: ``--executor ray`` with one worker on the same endpoint and the same
  concurrency: the difference to *local* is Ray's cost per request (dispatch, the actor call,
  pickling the generation back);
* **ray, 2 endpoints**: two workers, one per server, ``--concurrency`` each: the scale-out.

Every build writes a fresh checkpoint and table (scoring, fsync'd appends and assembly included).
Ray's start-up (a private instance, the actors) is timed apart. Prints each run and the medians.

    python benchmarks/bench_ray_build.py --queries 100 --latency 0.05 --concurrency 8 --repeats 2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _server(latency: float) -> tuple[str, subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-m", "iapo_gym.live.testserver", "--median", str(latency), "--sigma", "0",
                             "--max-seconds", "1800"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return f"http://127.0.0.1:{int(proc.stdout.readline())}", proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds per request at each test server")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight per endpoint")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import ray

    from iapo_gym.live.backends import OpenAIBackend
    from iapo_gym.live.builder import build_table
    from iapo_gym.live.ray_build import RayBackend, endpoint_workers
    from iapo_gym.live.specs import load_queries, load_spec

    spec = load_spec("smolarith")
    spec = spec.with_overrides(prompts=spec.prompts[:3], pool=4)
    queries = load_queries(spec, limit=args.queries)
    units = len(queries) * 3
    (url_a, pa), (url_b, pb) = _server(args.latency), _server(args.latency)
    times: dict[str, list[float]] = {"local": [], "ray, 1 endpoint": [], "ray, 2 endpoints": []}
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-build-"))
    try:
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        print(f"Ray start-up {time.perf_counter() - t0:.1f} s; {units} units, latency {args.latency} s, "
              f"concurrency {args.concurrency} per endpoint")
        for r in range(args.repeats):
            for name in times:
                if name == "local":
                    backend = OpenAIBackend("m", url_a, spec.sampling, concurrency=args.concurrency)
                else:
                    urls = [url_a] if "1" in name else [url_a, url_b]
                    t1 = time.perf_counter()
                    backend = RayBackend("m", spec.sampling, endpoint_workers(urls, args.concurrency))
                    startup = time.perf_counter() - t1
                out = tmp / f"{r}-{name.replace(' ', '').replace(',', '-')}"
                t1 = time.perf_counter()
                build_table(spec, backend, queries, out, seed=0, progress=False)
                dt = time.perf_counter() - t1
                backend.close()
                times[name].append(dt)
                extra = f" (actors started in {startup:.1f} s, apart)" if name != "local" else ""
                print(f"  {name:17s} {dt:6.2f} s  {units / dt:6.1f} units/s{extra}", flush=True)
    finally:
        ray.shutdown()
        for p in (pa, pb):
            p.communicate(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    per = (med["ray, 1 endpoint"] - med["local"]) / units * args.concurrency
    print(f"medians: local {med['local']:.2f} s, ray 1 endpoint {med['ray, 1 endpoint']:.2f} s "
          f"({med['ray, 1 endpoint'] / med['local'] - 1:+.1%}; about {per * 1000:.1f} ms per request at {args.concurrency} "
          f"in flight), ray 2 endpoints {med['ray, 2 endpoints']:.2f} s "
          f"({med['ray, 1 endpoint'] / med['ray, 2 endpoints']:.2f}x over 1 endpoint)")


if __name__ == "__main__":
    main()
