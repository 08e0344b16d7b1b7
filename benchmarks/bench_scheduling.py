"""The builder's scheduling against a raw continuous stream of the same requests (target >= 0.95x).

Both sides send the same requests (the build's units: same messages, ``n`` and seeds) through the
same :class:`~iapo_gym.live.backends.OpenAIBackend` with ``concurrency`` in flight:

* **raw**: every request submitted at once to the backend's pool, results collected, nothing else
  (the best a hand-written client can do);
* **builder**: :func:`~iapo_gym.live.builder.build_table` into a fresh checkpoint (scheduling,
  scoring, fsync'd checkpoint appends, table assembly included);
* **barrier** (reference): the same requests in batches of ``2 x concurrency``, each batch waited
  for (what the builder did before continuous scheduling, with its default batch size).

Servers:

* ``--server fake`` (default): the local test server with long-tailed latency (lognormal, median
  ``--median`` s, log-sigma ``--sigma``); each request's latency is a hash of its body, so every
  side faces the same latencies.
* ``--server vllm``: starts the real vLLM OpenAI-compatible server (CPU build, SmolLM2-135M,
  float32) for the run and stops it after;
* ``--server URL --model NAME``: a running OpenAI-compatible server.

Runs alternate (raw, builder, barrier, raw, ...) so drift in the machine's load cancels; prints
each run's wall time, mean requests in flight (fake server) and the ratios.

    python benchmarks/bench_scheduling.py --units 600 --concurrency 32 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path


def _start_server(args: argparse.Namespace) -> tuple[str, Callable[[], None]]:
    """The server's URL and how to stop it (see the module docstring)."""
    if args.server == "fake":  # its own process, so it does not compete with the client for the GIL
        proc = subprocess.Popen([sys.executable, "-m", "iapo_gym.live.testserver", "--median", str(args.median),
                                 "--sigma", str(args.sigma), "--max-seconds", "1800"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        return f"http://127.0.0.1:{int(proc.stdout.readline())}", lambda: proc.communicate(timeout=30) and None
    if args.server == "vllm":
        from iapo_gym.live.server import VLLMServer

        vsrv = VLLMServer("smollm2", args=["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024", "--seed", "0",
                                           "--max-num-seqs", "64", "--max-num-batched-tokens", str(64 * 1024),
                                           "--disable-log-stats", "--no-enable-prefix-caching"]).start()
        args.model = vsrv.model
        return vsrv.base_url, vsrv.stop
    return args.server, lambda: None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=600)
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--pool", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--median", type=float, default=0.2)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--server", default="fake")
    ap.add_argument("--model", default="fake-model")
    ap.add_argument("--no-barrier", action="store_true", help="skip the batch-barrier reference runs")
    args = ap.parse_args()

    from iapo_gym.live.backends import OpenAIBackend, SamplingConfig
    from iapo_gym.live.builder import Builder, build_table
    from iapo_gym.live.specs import arithmetic_queries, load_spec

    base = load_spec("smolarith")
    prompts = (base.prompts * (args.prompts // len(base.prompts) + 1))[: args.prompts]
    prompts = tuple(p if i < len(base.prompts) else f"{p} (variant {i})" for i, p in enumerate(prompts))
    spec = base.with_overrides(prompts=prompts, pool=args.pool,
                               sampling=SamplingConfig(0.8, 0.95, args.max_tokens))
    queries = arithmetic_queries(args.units // args.prompts, seed=1)

    url, stop = _start_server(args)
    spans: list[tuple[float, float]] = []

    class Timed(OpenAIBackend):
        def _one(self, request):  # type: ignore[no-untyped-def]
            t0 = time.monotonic()
            try:
                return super()._one(request)
            finally:
                spans.append((t0, time.monotonic()))

    def backend() -> OpenAIBackend:
        return Timed(args.model, url, spec.sampling, concurrency=args.concurrency, max_retries=2, timeout=300)

    with tempfile.TemporaryDirectory() as tmp:
        probe = Builder(spec, backend(), queries, Path(tmp) / "probe.jsonl", progress=False)
        reqs = [probe.request(c) for c in probe.cells()]
        probe.backend.close()
        fake = f"fake lognormal median {args.median:.2f} s sigma {args.sigma:.1f}"
        print(f"{len(reqs)} requests (n={args.pool}, max_tokens={args.max_tokens}), concurrency {args.concurrency}, "
              f"server {fake if args.server == 'fake' else url}")

        def in_flight(t0: float, t1: float) -> float:  # mean requests in flight, client side
            return sum(b - a for a, b in spans if a >= t0 - 1e-6) / (t1 - t0)

        def raw() -> tuple[float, int]:
            be = backend()
            t0 = time.monotonic()
            futs = [be.submit(r) for r in reqs]
            toks = sum(f.result().total_completion_tokens for f in futs)
            dt = time.monotonic() - t0
            be.close()
            return dt, toks

        def builder(rep: int) -> tuple[float, int]:
            be = backend()
            t0 = time.monotonic()
            _, stats = build_table(spec, be, queries, Path(tmp) / f"t{rep}", seed=0, progress=False)
            dt = time.monotonic() - t0
            be.close()
            return dt, stats.completion_tokens

        def barrier() -> tuple[float, int]:
            be = backend()
            t0 = time.monotonic()
            toks = 0
            for s in range(0, len(reqs), 2 * args.concurrency):
                futs = [be.submit(r) for r in reqs[s : s + 2 * args.concurrency]]
                done, _ = wait(futs, return_when=FIRST_COMPLETED)
                toks += sum(f.result().total_completion_tokens for f in futs)
            dt = time.monotonic() - t0
            be.close()
            return dt, toks

        times: dict[str, list[float]] = {"raw": [], "builder": [], "barrier": []}
        for rep in range(args.repeats):
            for name, fn in (("raw", raw), ("builder", lambda rep=rep: builder(rep)), ("barrier", barrier)):
                if name == "barrier" and args.no_barrier:
                    continue
                t0 = time.monotonic()
                dt, toks = fn()
                times[name].append(dt)
                print(f"  rep {rep} {name:8s} {dt:7.2f} s  {toks / dt:9.1f} completion tok/s  "
                      f"in flight {in_flight(t0, t0 + dt):5.1f}")
    stop()
    r, b = statistics.median(times["raw"]), statistics.median(times["builder"])
    print(f"median wall: raw {r:.2f} s, builder {b:.2f} s -> builder throughput = {r / b:.3f} x raw")
    if times["barrier"]:
        print(f"barrier (batch-wait reference): {statistics.median(times['barrier']):.2f} s -> "
              f"{r / statistics.median(times['barrier']):.3f} x raw")


if __name__ == "__main__":
    main()
