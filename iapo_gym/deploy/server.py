"""``iapo-gym serve``: an OpenAI-compatible HTTP server in front of a :class:`~iapo_gym.deploy.router.Router`.

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``. A client sends a
normal chat request (one user message: the query) and its context, in any of::

    {"context": "low"}                       # extra_body={"context": "low"} with the openai client
    {"context": [1.0, 0.2]}                  # a weight vector (w_1..w_K, w_cost)
    {"iapo": {"context": "mid"}}             # extra_body={"iapo": {"context": "mid"}}
    {"metadata": {"iapo_context": "high"}}   # metadata values are strings: a name or "[1.0, 0.2]"

and gets a standard ``chat.completion``: the content is the router's aggregated answer, ``usage``
sums every upstream completion of the chosen arm, and an ``iapo`` object names the arm (prompt,
N), the votes or scores, the cost and the seed (also in the ``x-iapo-arm`` header). A ``seed`` in
the request makes the answer reproducible.

Limits, each answered with an OpenAI-style error object: a request body over ``max_body_bytes``
(413), an unknown model (404), a bad context or request (400: the message names the field and the
fix), a missing or wrong client API key when keys are configured (401), more than
``max_pending`` requests waiting (429), an upstream failure (502). Sampling parameters belong to
the policy (its Q-values were measured with the table's sampling): a request that asks for other
``temperature``, ``top_p``, ``max_tokens`` or ``n`` is refused rather than silently changed.

At most ``max_concurrency`` answers call the upstream at once. The HTTP backend and the
in-process vLLM engine take calls from several threads (the engine's one thread adds each request
to the running batch as it arrives). A backend that is not safe to call from several threads is
called for one batch at a time: the requests that arrive meanwhile are answered together in the
next batch (``Router.answer_many``).
The upstream API key is never logged nor returned: it is scrubbed from every error message.
"""


# No "from __future__ import annotations": FastAPI reads the endpoints' annotations (Request) at runtime,
# and they are imported inside create_app so the ASGI stack loads only when an app is built.
import asyncio
import contextlib
import functools
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from iapo_gym.deploy.router import ContextError, Router

log = logging.getLogger("iapo_gym.serve")

#: Seconds an idle client connection stays open (uvicorn's ``timeout_keep_alive``; its default is 5).
#: Client pools (httpx under the openai SDK: 5 s) reuse a connection they believe is fresh, timed
#: from when *they* read the response; a client paused by a garbage collection or a busy CPU
#: reads it late and sends its next request just as a 5 s server closes the connection, and the
#: request fails with "Server disconnected without sending a response". A server keep-alive well
#: above any client's idle expiry closes that race (the usual rule for servers behind a pool or a
#: load balancer; nginx's default is 75 s).
KEEP_ALIVE_S = 75

_SAMPLING_FIELDS = ("temperature", "top_p", "max_tokens", "max_completion_tokens")


class RequestError(Exception):
    """An HTTP error answered as an OpenAI error object."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        """The OpenAI error object."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(400, "message content parts must be {\"type\": \"text\", \"text\": ...}", param="messages")
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError(400, "message content must be a string or a list of text parts", param="messages")


def query_of(messages: Any) -> str:
    """The query of a chat request: the content of its one user message."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", param="messages")
    if len(messages) != 1 or not isinstance(messages[0], dict) or messages[0].get("role") != "user":
        raise RequestError(
            400, "send exactly one user message (the query): the policy's prompts wrap the query themselves and "
            "were evaluated on single-turn conversations", param="messages",
        )
    text = _text_of(messages[0].get("content"))
    if not text.strip():
        raise RequestError(400, "the user message is empty", param="messages")
    return text


def context_of(body: dict[str, Any], default: Any = None) -> Any:
    """The request's context: ``context``, ``iapo.context`` or ``metadata.iapo_context``."""
    if "context" in body:
        return body["context"]
    iapo = body.get("iapo")
    if isinstance(iapo, dict) and "context" in iapo:
        return iapo["context"]
    meta = body.get("metadata")
    if isinstance(meta, dict) and "iapo_context" in meta:
        value = meta["iapo_context"]
        if isinstance(value, str) and value.strip().startswith("["):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise RequestError(400, f"metadata.iapo_context {value!r} is not a JSON list of numbers",
                                   param="metadata.iapo_context") from None
        return value
    if default is not None:
        return default
    raise RequestError(
        400, "no context: send 'context' (extra_body={'context': 'low'} with the openai client), 'iapo.context', "
        "or metadata={'iapo_context': 'low'}", param="context", code="missing_context",
    )


class _Batcher:
    """Answers requests in batches, one batch at a time (for backends that are not thread-safe)."""

    def __init__(self, router: Router, executor: ThreadPoolExecutor, max_batch: int) -> None:
        self.router, self.executor, self.max_batch = router, executor, max_batch
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None

    async def submit(self, query: str, context: Any, seed: int | None) -> Any:
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.task = asyncio.create_task(self._run())
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((query, context, seed, fut))
        return await fut

    async def _run(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            while not self.queue.empty() and len(items) < self.max_batch:
                items.append(self.queue.get_nowait())
            items = [it for it in items if not it[3].done()]
            if not items:
                continue
            call = functools.partial(self.router.answer_many, [it[0] for it in items], [it[1] for it in items],
                                     seeds=[it[2] for it in items])
            log.debug("answering a batch of %d requests", len(items))
            try:
                answers = await loop.run_in_executor(self.executor, call)
            except Exception as exc:  # one failure fails the batch: every waiting request gets it
                for it in items:
                    if not it[3].done():
                        it[3].set_exception(exc)
                continue
            for it, ans in zip(items, answers, strict=True):
                if not it[3].done():
                    it[3].set_result(ans)


class _Service:
    """The server's state and request handling, independent of the ASGI framework's routing."""

    def __init__(self, router: Router, *, model_name: str | None, api_keys: Sequence[str], max_concurrency: int,
                 max_pending: int, max_body_bytes: int, default_context: Any, secrets: Sequence[str],
                 thread_safe_backend: bool | None) -> None:
        if max_concurrency < 1 or max_pending < 1 or max_body_bytes < 1:
            raise ValueError("max_concurrency, max_pending and max_body_bytes must be >= 1")
        self.router = router
        self.task = router.deployment.task
        self.name = model_name or f"iapo-{self.task.name.lower()}"
        self.keys = tuple(k for k in api_keys if k)
        self.hidden = tuple(s for s in secrets if s)
        self.max_concurrency, self.max_pending, self.max_body_bytes = max_concurrency, max_pending, max_body_bytes
        if default_context is not None:
            router.resolve_context(default_context)  # a bad default fails at start, not per request
        self.default_context = default_context
        if thread_safe_backend is None:
            thread_safe_backend = hasattr(router.backend, "concurrency")
        self.executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="iapo-serve")
        self.batcher = None if thread_safe_backend else _Batcher(router, self.executor, max_batch=max_concurrency)
        self.semaphore: asyncio.Semaphore | None = None  # made in the server's event loop
        self.pending = self.served = 0
        self.created = int(time.time())
        sampling = router.spec.sampling.to_json()
        self.sampling = {**sampling, "max_completion_tokens": sampling["max_tokens"]}

    def scrub(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for s in self.hidden:
            text = text.replace(s, "***")
        return text

    def check_key(self, headers: Any) -> None:
        """401 unless the request carries one of the client keys (when keys are configured)."""
        if not self.keys:
            return
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not any(hmac.compare_digest(given.encode(), k.encode()) for k in self.keys):
            raise RequestError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                               kind="authentication_error", code="invalid_api_key")

    async def read_body(self, request: Any) -> dict[str, Any]:
        """The JSON object of the request, refused past ``max_body_bytes`` before it is all read."""
        limit = self.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                               code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise RequestError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        return body

    def models(self) -> dict[str, Any]:
        """The ``/v1/models`` list."""
        task = self.task
        return {"object": "list", "data": [{
            "id": self.name, "object": "model", "created": self.created, "owned_by": "iapo-gym",
            "iapo": {"task": task.name, "task_fingerprint": task.fingerprint, "strategy": task.strategy,
                     "policy": self.router.deployment.kind, "contexts": list(task.contexts.names),
                     "upstream_model": getattr(self.router.backend, "model", None)},
        }]}

    def validate(self, body: dict[str, Any]) -> tuple[str, Any, int | None]:
        """``(query, context, seed)`` of a chat request, or a 4xx :class:`RequestError`."""
        model = body.get("model")
        if model != self.name:
            raise RequestError(404, f"the model {model!r} does not exist; this server serves {self.name!r}",
                               param="model", code="model_not_found")
        if body.get("stream"):
            raise RequestError(400, "streaming is not supported: the answer is an aggregate of N completions",
                               param="stream")
        if body.get("n", 1) != 1:
            raise RequestError(400, "n must be 1: the policy decides how many completions to aggregate", param="n")
        for key in _SAMPLING_FIELDS:
            if body.get(key) is not None and body[key] != self.sampling[key]:
                raise RequestError(400, f"{key}={body[key]!r} differs from the policy's {key}={self.sampling[key]!r} "
                                   "(its Q-values were measured with it): omit it", param=key)
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31):
            raise RequestError(400, "seed must be an integer in [0, 2**31)", param="seed")
        query, context = query_of(body.get("messages")), context_of(body, self.default_context)
        try:
            self.router.resolve_context(context)
        except ContextError as exc:
            raise RequestError(400, str(exc), param="context", code="invalid_context") from None
        return query, context, seed

    async def answer(self, query: str, context: Any, seed: int | None) -> Any:
        """The router's answer, within the concurrency and pending bounds; errors become HTTP errors."""
        if self.pending >= self.max_pending:
            raise RequestError(429, f"server busy: {self.max_pending} requests pending; retry later",
                               kind="rate_limit_error")
        self.pending += 1
        try:
            if self.batcher is not None:
                return await self.batcher.submit(query, context, seed)
            if self.semaphore is None:
                self.semaphore = asyncio.Semaphore(self.max_concurrency)
            async with self.semaphore:
                return await asyncio.get_running_loop().run_in_executor(
                    self.executor, lambda: self.router.answer(query, context, seed=seed))
        except ContextError as exc:
            raise RequestError(400, str(exc), param="context", code="invalid_context") from None
        except Exception as exc:  # upstream failure: the message is scrubbed of secrets
            from iapo_gym.live.backends import BackendError

            message = self.scrub(str(exc))
            if isinstance(exc, BackendError):
                log.warning("upstream failure: %s", message)
                raise RequestError(502, f"upstream failed: {message}", kind="api_error", code="upstream_error") from None
            log.error("internal error: %s: %s", type(exc).__name__, message)
            raise RequestError(500, f"internal error: {type(exc).__name__}", kind="api_error") from None
        finally:
            self.pending -= 1

    def completion(self, answer: Any) -> dict[str, Any]:
        """The ``chat.completion`` object of an answer."""
        self.served += 1
        iapo = answer.to_json()
        iapo["policy"] = self.router.deployment.kind
        iapo["task_fingerprint"] = self.task.fingerprint
        return {
            "id": f"chatcmpl-iapo-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "system_fingerprint": f"iapo-{self.task.fingerprint}-p{answer.prompt}-n{answer.n}",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "finish_reason": answer.finish_reason, "logprobs": None}],
            "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                      "total_tokens": answer.prompt_tokens + answer.completion_tokens},
            "iapo": iapo,
        }


def create_app(
    router: Router,
    *,
    model_name: str | None = None,
    api_keys: Sequence[str] = (),
    max_concurrency: int = 16,
    max_pending: int = 1024,
    max_body_bytes: int = 1 << 20,
    default_context: Any = None,
    secrets: Sequence[str] = (),
    thread_safe_backend: bool | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> Any:
    """The ASGI app (FastAPI) serving ``router``.

    Args:
        router: the router to serve.
        model_name: the name clients send as ``model`` (default ``iapo-<task>``, lower case).
        api_keys: client keys accepted as ``Authorization: Bearer <key>`` (empty: no key needed).
        max_concurrency: answers calling the upstream at once.
        max_pending: answers waiting or running before new ones get HTTP 429.
        max_body_bytes: largest accepted request body (HTTP 413 above).
        default_context: the context of requests that send none (default: such requests get 400).
        secrets: strings never to reveal (the upstream API key): scrubbed from error messages and logs.
        thread_safe_backend: whether the backend may be called from several threads at once
            (default: backends with a ``concurrency`` attribute: the HTTP client and the in-process
            vLLM engine).
        on_shutdown: called when the server shuts down (e.g. ``backend.close``: the in-process
            engine's worker process must not outlive the server). It runs in the app's lifespan,
            because uvicorn re-raises SIGTERM/SIGINT after a graceful shutdown, so code after
            ``uvicorn.run`` never runs.
    """
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
    except ImportError as exc:
        raise RuntimeError("iapo-gym serve needs FastAPI and uvicorn: pip install 'iapo-gym[serve]'") from exc
    service = _Service(router, model_name=model_name, api_keys=api_keys, max_concurrency=max_concurrency,
                       max_pending=max_pending, max_body_bytes=max_body_bytes, default_context=default_context,
                       secrets=secrets, thread_safe_backend=thread_safe_backend)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            service.executor.shutdown(wait=False, cancel_futures=True)
            if on_shutdown is not None:
                on_shutdown()

    app = FastAPI(title="iapo-gym router", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.service = service
    app.state.executor = service.executor

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": service.name, "task": service.task.name,
                "task_fingerprint": service.task.fingerprint, "pending": service.pending, "served": service.served}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        service.check_key(request.headers)
        return service.models()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        service.check_key(request.headers)
        query, context, seed = service.validate(await service.read_body(request))
        t0 = time.perf_counter()
        answer = await service.answer(query, context, seed)
        log.info("answered context=%s arm=(p%d, N=%d) tokens=%d+%d cost=%.6g in %.0f ms",
                 answer.context_name or list(answer.context), answer.prompt, answer.n, answer.prompt_tokens,
                 answer.completion_tokens, answer.cost, (time.perf_counter() - t0) * 1e3)
        return JSONResponse(service.completion(answer), headers={"x-iapo-arm": f"prompt={answer.prompt};n={answer.n}"})

    return app
