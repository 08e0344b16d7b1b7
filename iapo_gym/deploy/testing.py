"""A local OpenAI-compatible upstream for tests and benchmarks (127.0.0.1 only, bounded in time).

:class:`FakeUpstream` answers ``/v1/chat/completions`` with scripted completions after a fixed
latency, records every request (headers and body), tracks how many requests are in flight, and
can fail on demand: the faults and timings a real server cannot produce on demand. It runs
uvicorn in a background thread; use it as a context manager.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

#: ``responder(messages, n, seed) -> n completion texts``.
Responder = Callable[[list[dict[str, Any]], int, int], list[str]]


def numeric_responder(answers: tuple[str | None, ...] = ("7", "7", "8", None), weights: tuple[float, ...] | None = None
                      ) -> Responder:
    """Completions ``"... The answer is <a>."`` with answers drawn from ``answers`` by the request seed.

    ``None`` gives a completion with no number in it.
    """
    p = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)

    def respond(messages: list[dict[str, Any]], n: int, seed: int) -> list[str]:
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(answers), size=n, p=p)
        out = []
        for i in picks:
            a = answers[int(i)]
            out.append("I am not sure." if a is None else f"Let me think. The answer is {a}.")
        return out

    return respond


def cycle_responder(texts: tuple[str, ...]) -> Responder:
    """The first ``n`` of ``texts`` (repeated as needed), whatever the seed."""

    def respond(messages: list[dict[str, Any]], n: int, seed: int) -> list[str]:
        return [texts[i % len(texts)] for i in range(n)]

    return respond


class FakeUpstream:
    """A scripted OpenAI-compatible server on ``127.0.0.1``.

    Args:
        responder: makes the completions (default :func:`numeric_responder`).
        latency: seconds each chat request waits before answering.
        model: the model name it serves.
        fail_status: answer every chat request with this HTTP status (the error body echoes the
            request's ``Authorization`` header, as a careless server might).
        max_seconds: the server shuts itself down after this long (tests never leak a server).

    Attributes:
        requests: ``(headers, body)`` of every chat request, in arrival order.
        max_in_flight: the most chat requests it was answering at once.
    """

    def __init__(self, responder: Responder | None = None, *, latency: float = 0.0, model: str = "fake-model",
                 fail_status: int | None = None, max_seconds: float = 600.0) -> None:
        self.responder = responder or numeric_responder()
        self.latency = float(latency)
        self.model = model
        self.fail_status = fail_status
        self.max_seconds = float(max_seconds)
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> Any:
        """The ASGI app (Starlette)."""
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def chat(request: Request) -> JSONResponse:
            body = json.loads(await request.body())
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.requests.append((headers, body))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if self.latency:
                    await asyncio.sleep(self.latency)
                if self.fail_status is not None:
                    return JSONResponse({"error": {"message": f"rejected credentials {headers.get('authorization')}"}},
                                        status_code=self.fail_status)
                n = int(body.get("n", 1))
                texts = self.responder(body["messages"], n, int(body.get("seed", 0)))
                prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
                completion_tokens = sum(len(t.split()) for t in texts)
                return JSONResponse({
                    "id": f"fake-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                                for i, t in enumerate(texts)],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens},
                })
            finally:
                self.in_flight -= 1

        async def models(request: Request) -> JSONResponse:
            return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "fake"}]})

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                                 Route("/v1/models", models, methods=["GET"])])

    def start(self, timeout: float = 20.0) -> FakeUpstream:
        """Start serving on a free port; returns when it accepts connections."""
        import uvicorn

        from iapo_gym.live.server import free_port

        self.port = free_port()
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, backlog=4096, timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        deadline = time.monotonic() + self.max_seconds

        def serve() -> None:
            async def main() -> None:
                task = asyncio.create_task(self._server.serve())
                while not task.done():
                    if time.monotonic() > deadline:
                        self._server.should_exit = True
                    await asyncio.sleep(0.1)
                await task

            asyncio.run(main())

        self._thread = threading.Thread(target=serve, name="fake-upstream", daemon=True)
        self._thread.start()
        t0 = time.monotonic()
        while not self._server.started:
            if time.monotonic() - t0 > timeout or not self._thread.is_alive():
                raise RuntimeError("the fake upstream did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Shut down and join the server thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerThread:
    """Run any ASGI app (e.g. :func:`iapo_gym.deploy.server.create_app`) with uvicorn on ``127.0.0.1`` in a thread."""

    def __init__(self, app: Any, max_seconds: float = 600.0) -> None:
        self._fake = FakeUpstream(max_seconds=max_seconds)
        self._fake.app = lambda: app  # type: ignore[method-assign]

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return self._fake.base_url

    def __enter__(self) -> ServerThread:
        self._fake.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._fake.stop()
