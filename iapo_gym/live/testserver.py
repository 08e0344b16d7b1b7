"""A local OpenAI-compatible test server for faults a real server cannot produce on demand.

:class:`FakeChatServer` answers ``POST /v1/chat/completions`` on 127.0.0.1 with deterministic
completions (each a hash of the messages, the request seed and the choice index, so the same
request always gets the same texts) after a configurable latency, and can be told to misbehave:
refuse chosen prompts (HTTP 400), rate-limit with ``Retry-After``, send malformed bodies, drip a
response byte by byte, or reject ``n > 1`` as some providers do. It counts every request it
receives, so tests can prove which units were (not) generated.

The standard library's threaded HTTP server is enough here: one thread per connection is what a
test or benchmark with tens of requests in flight needs, and it adds no dependency. It is for
tests and benchmarks only; the real server is vLLM's (:mod:`iapo_gym.live.server`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np


@dataclass
class Fault:
    """One scripted misbehaviour.

    The next ``times`` requests matching ``match`` (a substring of the request body, or ``None``
    for any) get ``kind``.

    Kinds: ``"status"`` (HTTP ``status`` with ``body`` and optional ``retry_after``),
    ``"body"`` (HTTP 200 with the raw ``body``), ``"drip"`` (a valid answer sent one byte every
    ``delay`` seconds), ``"gzip"`` (a valid answer gzip-encoded), ``"null_content"``,
    ``"no_usage"``, ``"slow"`` (a valid answer after ``delay`` seconds). ``times=None`` means for
    ever.
    """

    kind: str
    match: str | None = None
    times: int | None = 1
    status: int = 400
    body: str = ""
    retry_after: str | None = None
    delay: float = 0.5


@dataclass
class FakeChatServer:
    """The test server (see the module docstring). Use as a context manager.

    Args:
        latency: seconds to wait before answering; a callable ``(rng) -> seconds`` or a number.
        reject_n_gt_1: answer ``n > 1`` with HTTP 400, like providers without ``n``.
        faults: scripted faults, consumed in order.
        seed: seeds the latency draws.
        latency_per_request: draw each request's latency from a generator seeded by a hash of its
            body (and ``seed``), so the same request waits the same time in every run and order.
        tokens_per_completion: completion tokens reported per choice (``None``: 5-14 by hash).
    """

    latency: Callable[[np.random.Generator], float] | float = 0.0
    reject_n_gt_1: bool = False
    faults: list[Fault] = field(default_factory=list)
    seed: int = 0
    tokens_per_completion: int | None = None
    latency_per_request: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(self.seed)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def lognormal(median: float, sigma: float) -> Callable[[np.random.Generator], float]:
        """A long-tailed latency: lognormal with the given median and log-space sigma."""
        return lambda rng: float(median * np.exp(sigma * rng.standard_normal()))

    def start(self) -> FakeChatServer:
        """Start serving on a free port of 127.0.0.1 (a daemon thread)."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(min(length, 2**24))
                server._handle(self, raw, dict(self.headers.items()))

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ answering
    def _take_fault(self, raw: bytes) -> Fault | None:
        text = raw.decode("utf-8", "replace")
        with self._lock:
            for f in self.faults:
                if f.match is None or f.match in text:
                    if f.times is not None:
                        f.times -= 1
                        if f.times <= 0:
                            self.faults.remove(f)
                    return f
        return None

    @staticmethod
    def completion(messages: list[dict[str, Any]], seed: int, index: int) -> tuple[str, int]:
        """The deterministic text and token count of one choice."""
        h = hashlib.sha256(json.dumps([messages, seed, index], sort_keys=True).encode()).digest()
        return f"The answer is {h[0] % 7}.", 5 + h[1] % 10

    def _handle(self, handler: BaseHTTPRequestHandler, raw: bytes, headers: dict[str, str]) -> None:
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            body = {}
        entry = {"body": body, "headers": headers, "t": time.monotonic(), "status": None}
        with self._lock:
            self.requests.append(entry)
            rng = self._rng
            if self.latency_per_request:
                digest = hashlib.sha256(raw + str(self.seed).encode()).digest()
                rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            delay = self.latency(rng) if callable(self.latency) else float(self.latency)
        fault = self._take_fault(raw)
        entry["fault"] = None if fault is None else fault.kind
        if fault is not None and fault.kind == "slow":
            delay += fault.delay
        if delay > 0:
            time.sleep(delay)
        entry["status"] = self._answer(handler, body, fault)
        entry["t_end"] = time.monotonic()

    @staticmethod
    def reward(text: str) -> float:
        """The deterministic reward the ``/pooling`` route gives ``text`` (in [-2, 2])."""
        h = hashlib.sha256(text.encode()).digest()
        return (int.from_bytes(h[:2], "little") / 65535.0) * 4.0 - 2.0

    def _answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any], fault: Fault | None) -> int:
        n = int(body.get("n", 1))
        if handler.path.rstrip("/").endswith("/pooling"):  # vLLM's pooling API for reward models
            items = [{"index": i, "object": "pooling", "data": [self.reward(t)]} for i, t in enumerate(body.get("input", []))]
            return self._send(handler, 200, json.dumps({"object": "list", "data": items, "model": body.get("model")}).encode())
        if fault is not None and fault.kind == "status":
            return self._send(handler, fault.status, fault.body.encode(), retry_after=fault.retry_after)
        if fault is not None and fault.kind == "body":
            return self._send(handler, 200, fault.body.encode(), ok=False)
        if self.reject_n_gt_1 and n > 1:
            msg = {"error": {"message": "n > 1 is not supported by this model", "param": "n"}}
            return self._send(handler, 400, json.dumps(msg).encode())
        seed = int(body.get("seed", 0))
        choices, total = [], 0
        for i in range(n):
            text, toks = self.completion(body.get("messages", []), seed, i)
            toks = self.tokens_per_completion if self.tokens_per_completion is not None else toks
            total += toks
            content: str | None = None if (fault is not None and fault.kind == "null_content") else text
            choices.append({"index": i, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"})
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        out: dict[str, Any] = {"id": "fake", "object": "chat.completion", "model": body.get("model"), "choices": choices}
        if fault is None or fault.kind != "no_usage":
            out["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": total, "total_tokens": prompt_tokens + total}
        data = json.dumps(out).encode()
        ok = fault is None or fault.kind not in ("null_content", "no_usage")
        if fault is not None and fault.kind == "gzip":
            return self._send(handler, 200, gzip.compress(data), encoding="gzip")
        if fault is not None and fault.kind == "drip":
            return self._send(handler, 200, data, drip=fault.delay)
        return self._send(handler, 200, data, ok=ok)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, data: bytes, *, retry_after: str | None = None,
              encoding: str | None = None, drip: float | None = None, ok: bool = True) -> int:
        """Send a response; returns the status, or -1 for a 200 that is not a usable completion."""
        code = status if ok else -1
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            if retry_after is not None:
                handler.send_header("Retry-After", retry_after)
            if encoding is not None:
                handler.send_header("Content-Encoding", encoding)
            handler.end_headers()
            if drip is None:
                handler.wfile.write(data)
                return code
            deadline = time.monotonic() + 60  # bounded even if the client never gives up
            for i in range(len(data)):
                if time.monotonic() > deadline:
                    break
                handler.wfile.write(data[i : i + 1])
                handler.wfile.flush()
                time.sleep(drip)
        except (BrokenPipeError, ConnectionResetError):
            return -2
        return code

    @property
    def served(self) -> int:
        """Requests answered with a usable completion (HTTP 200 with a valid body)."""
        with self._lock:
            return sum(1 for r in self.requests if r["status"] == 200)


def main(argv: list[str] | None = None) -> None:
    """Serve in a process of its own (for benchmarks).

    Prints the port, then serves until stdin closes or ``--max-seconds`` pass.
    """
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="local OpenAI-compatible test server (127.0.0.1 only)")
    ap.add_argument("--median", type=float, default=0.2, help="lognormal latency median (s)")
    ap.add_argument("--sigma", type=float, default=1.0, help="lognormal latency log-sigma")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=3600.0, help="stop after this long in any case")
    args = ap.parse_args(argv)
    srv = FakeChatServer(latency=FakeChatServer.lognormal(args.median, args.sigma), latency_per_request=True, seed=args.seed)
    srv.start()
    print(srv.port, flush=True)
    done = threading.Event()
    def wait_stdin() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    done.wait(args.max_seconds)
    srv.stop()


if __name__ == "__main__":
    main()
