"""Router overhead: ``iapo-gym serve`` in front of a fixed-latency upstream vs calling the upstream directly.

Three processes on 127.0.0.1: a scripted OpenAI-compatible upstream that answers every chat
request after ``--latency`` seconds (:class:`iapo_gym.deploy.testing.FakeUpstream`), the router
(``iapo-gym serve`` with a policy whose arm is ``N = --n`` for every context), and this load
generator (``aiohttp``, keep-alive, ``C`` requests in flight). For each concurrency level the
direct path (the same chat request with ``"n": N`` sent to the upstream) and the router path
alternate in ``--rounds`` blocks of ``--requests`` x C requests each (interleaved, so a load change
on a shared machine hits both), and the script reports per-request latency p50/p99 of each path,
the router's overhead (router minus direct), and the throughput ratio router / direct.

    python benchmarks/bench_router.py                     # latency 0.25 s, N = 4, C = 1, 16, 64
    python benchmarks/bench_router.py --latency 0.5 --json out.json

Needs the ``serve`` extra and ``aiohttp`` (installed with vLLM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

MODEL = "iapo-smolarith"
QUERY = "What is 12 + 30?"


def run_upstream(port: int, latency: float, seconds: float) -> None:
    """Serve the scripted upstream on ``port`` for at most ``seconds``."""
    import uvicorn

    from iapo_gym.deploy.testing import FakeUpstream, numeric_responder

    up = FakeUpstream(numeric_responder(), latency=latency, max_seconds=seconds)
    config = uvicorn.Config(up.app(), host="127.0.0.1", port=port, log_level="warning", access_log=False, backlog=4096)
    server = uvicorn.Server(config)

    async def serve_bounded() -> None:
        task = asyncio.create_task(server.serve())
        t0 = time.monotonic()
        while not task.done():
            if time.monotonic() - t0 > seconds:
                server.should_exit = True
            await asyncio.sleep(0.2)

    asyncio.run(serve_bounded())


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up") from None
            time.sleep(0.2)


async def block(url: str, body: dict, concurrency: int, total: int) -> tuple[np.ndarray, float]:
    """``total`` requests with ``concurrency`` in flight; returns (latencies s, wall s).

    aiohttp, not httpx: httpx's connection pool was itself the bottleneck at 64 connections here
    (p90 3.7 s against a 0.25 s server, where aiohttp measures 0.27 s).
    """
    import aiohttp

    lat = np.zeros(total)
    counter = iter(range(total))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def worker() -> None:
            for i in counter:
                t0 = time.perf_counter()
                async with session.post(url, json=body) as r:
                    text = await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{url}: HTTP {r.status} {text[:200]!r}")
                lat[i] = time.perf_counter() - t0

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return lat, time.perf_counter() - t0


def measure(paths: dict[str, tuple[str, dict]], levels: list[int], requests: int, rounds: int) -> dict[int, dict]:
    """Interleaved blocks per level; p50/p99 latency, throughput and the router's overhead."""
    results = {}
    for c in levels:
        lat: dict[str, list[np.ndarray]] = {k: [] for k in paths}
        wall = {k: 0.0 for k in paths}
        for r in range(rounds):
            for name in list(paths) if r % 2 == 0 else list(paths)[::-1]:
                url, body = paths[name]
                ls, w = asyncio.run(block(url, body, c, c * requests))
                lat[name].append(ls)
                wall[name] += w
        row: dict = {}
        for name in paths:
            ls = np.concatenate(lat[name]) * 1e3
            row[name] = {"p50_ms": float(np.percentile(ls, 50)), "p99_ms": float(np.percentile(ls, 99)),
                         "rps": ls.size / wall[name], "requests": int(ls.size)}
        row["overhead_p50_ms"] = row["router"]["p50_ms"] - row["direct"]["p50_ms"]
        row["overhead_p99_ms"] = row["router"]["p99_ms"] - row["direct"]["p99_ms"]
        row["throughput_ratio"] = row["router"]["rps"] / row["direct"]["rps"]
        results[c] = row
        print(f"C={c:3d}  direct p50 {row['direct']['p50_ms']:7.1f} p99 {row['direct']['p99_ms']:7.1f} ms "
              f"{row['direct']['rps']:7.1f} req/s | router p50 {row['router']['p50_ms']:7.1f} "
              f"p99 {row['router']['p99_ms']:7.1f} ms {row['router']['rps']:7.1f} req/s | overhead p50 "
              f"{row['overhead_p50_ms']:+.1f} ms p99 {row['overhead_p99_ms']:+.1f} ms | throughput x"
              f"{row['throughput_ratio']:.3f}", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.25, help="upstream latency per request, s")
    ap.add_argument("--n", type=int, default=4, help="completions per request (the deployed N)")
    ap.add_argument("--levels", default="1,16,64", help="concurrent clients")
    ap.add_argument("--requests", type=int, default=30, help="requests per client per block")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved direct/router blocks per level")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--upstream-only", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.upstream_only is not None:
        run_upstream(args.upstream_only, args.latency, 1800)
        return

    import iapo_gym
    from iapo_gym.agents.base import TablePolicy
    from iapo_gym.live.server import free_port
    from iapo_gym.live.specs import Query, load_spec
    from iapo_gym.tasks import load_task_table

    levels = [int(x) for x in args.levels.split(",")]
    table = load_task_table("SmolArith")
    spec = load_spec("smolarith")
    tmp = Path(tempfile.mkdtemp(prefix="bench-router-"))
    policy = TablePolicy(table.contexts, np.full(len(table.contexts), args.n - 1), table.n_max)  # prompt 0, N
    path = policy.save(tmp / "policy.json", table)
    assert iapo_gym.load_policy(path, spec=spec).arms.tolist() == [args.n - 1] * len(table.contexts)
    up_port, router_port = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    try:
        up = subprocess.Popen([sys.executable, __file__, "--upstream-only", str(up_port), "--latency", str(args.latency)])
        procs.append(up)
        wait_ready(f"http://127.0.0.1:{up_port}/v1/models", up)
        router = subprocess.Popen([sys.executable, "-m", "iapo_gym.cli", "serve", str(path), "--upstream",
                                   f"http://127.0.0.1:{up_port}", "--upstream-model", "fake-model", "--port",
                                   str(router_port), "--max-concurrency", str(max(levels)), "--log-level", "warning"],
                                  env={**os.environ, "OPENAI_API_KEY": "bench"})
        procs.append(router)
        wait_ready(f"http://127.0.0.1:{router_port}/health", router)
        s = spec.sampling
        direct_body = {"model": "fake-model", "messages": list(spec.messages(0, Query("q", QUERY))), "n": args.n,
                       "seed": 1, "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}
        router_body = {"model": MODEL, "messages": [{"role": "user", "content": QUERY}], "context": "low", "seed": 1}
        paths = {"direct": (f"http://127.0.0.1:{up_port}/v1/chat/completions", direct_body),
                 "router": (f"http://127.0.0.1:{router_port}/v1/chat/completions", router_body)}
        for url, body in paths.values():  # warm-up (connections, imports)
            asyncio.run(block(url, body, 4, 8))
        results = measure(paths, levels, args.requests, args.rounds)
        meta = {"latency_s": args.latency, "n": args.n, "requests_per_client_per_block": args.requests,
                "rounds": args.rounds, "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()}
        print(json.dumps(meta))
        if args.json:
            Path(args.json).write_text(json.dumps({"meta": meta, "levels": results}, indent=1))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
