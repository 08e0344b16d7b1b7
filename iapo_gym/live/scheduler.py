"""Continuous scheduling of work units over a backend: no batch barrier.

A :class:`WorkUnit` is a content key plus the request that produces it; :func:`run_units` keeps
``concurrency`` of them in flight and hands each result to a callback the moment it completes, so
a slow request never holds back the others (the builder checkpoints every unit as it finishes).
This is the seam a distributed executor plugs into: it needs units, a backend and the two
callbacks, nothing else.

Backends with ``submit(request) -> Future`` (the OpenAI-compatible backend's thread pool, the
in-process vLLM engine's request queue) are driven one request at a time. Backends with only
``stream`` (a third-party backend) get the units in chunks of ``chunk``, each chunk waited for.

Failures: a :class:`~iapo_gym.live.backends.RequestRejected` (the server refused this request;
retrying will not help) goes to ``on_failure`` and the schedule continues. Any other error stops
new submissions; the requests already in flight are waited for and their results delivered (no
finished work is dropped), then the first error is raised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

from iapo_gym.live.backends import Generation, GenerationRequest, RequestRejected


@dataclass(frozen=True)
class WorkUnit:
    """One request and the content key its result is stored under.

    Attributes:
        key: the content key (see :func:`iapo_gym.live.builder.content_key`).
        start: index of the first completion this request produces in the unit's stream.
        request: the request.
        info: bookkeeping carried to the callbacks (prompt and query index, query id).
    """

    key: str
    start: int
    request: GenerationRequest
    info: dict[str, Any] = field(default_factory=dict, compare=False)


def run_units(
    backend: Any,
    units: Iterable[WorkUnit],
    on_result: Callable[[WorkUnit, Generation], None],
    on_failure: Callable[[WorkUnit, RequestRejected], None],
    *,
    concurrency: int = 8,
    chunk: int = 64,
    should_stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Run ``units`` over ``backend`` (see the module docstring).

    Args:
        backend: the LLM backend.
        units: the units to run (consumed lazily, in order).
        on_result: called with each finished unit and its generation, as it finishes.
        on_failure: called with each unit the server refused.
        concurrency: requests in flight (``submit`` backends).
        chunk: units per ``stream`` call (backends without ``submit``).
        should_stop: polled before each submission; ``True`` stops submitting (in-flight requests
            still finish and are delivered).

    Returns:
        ``True`` when every unit ran, ``False`` when ``should_stop`` ended the schedule early.
    """
    if not hasattr(backend, "submit"):
        return _run_chunked(backend, units, on_result, chunk, should_stop)
    it = iter(units)
    in_flight: dict[Future, WorkUnit] = {}
    error: BaseException | None = None
    exhausted = False
    stopped = False
    while True:
        while error is None and not exhausted and not stopped and len(in_flight) < concurrency:
            if should_stop():
                stopped = True
                break
            unit = next(it, None)
            if unit is None:
                exhausted = True
                break
            in_flight[backend.submit(unit.request)] = unit
        if not in_flight:
            break
        done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
        for fut in done:
            unit = in_flight.pop(fut)
            exc = fut.exception()
            if exc is None:
                on_result(unit, fut.result())
            elif isinstance(exc, RequestRejected):
                on_failure(unit, exc)
            elif error is None:
                error = exc
    if error is not None:
        raise error
    return not stopped


def _run_chunked(backend: Any, units: Iterable[WorkUnit], on_result: Callable[[WorkUnit, Generation], None],
                 chunk: int, should_stop: Callable[[], bool]) -> bool:
    batch: list[WorkUnit] = []

    def flush() -> None:
        for i, gen in backend.stream([u.request for u in batch]):
            on_result(batch[i], gen)
        batch.clear()

    for unit in units:
        if should_stop():
            flush()
            return False
        batch.append(unit)
        if len(batch) >= chunk:
            flush()
    flush()
    return True
