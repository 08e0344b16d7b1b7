"""Table builds on a Ray cluster: ``iapo-gym build ... --executor ray``.

:class:`RayBackend` is a backend like the others (``submit(request) -> Future``), so the builder
is unchanged: its continuous scheduler (:func:`~iapo_gym.live.scheduler.run_units`), its writer
thread and the single content-keyed checkpoint stay in the driver process. Behind ``submit`` the
requests go to Ray actors, each driving a backend of its own:

* **endpoints**: one actor per OpenAI-compatible endpoint (``--endpoints URL1,URL2``), each an
  :class:`~iapo_gym.live.backends.OpenAIBackend` keeping ``--concurrency`` requests in flight
  against its endpoint (retries, ``Retry-After``, quarantine as in a local build);
* **engines**: ``K`` actors holding ``--gpus-per-worker`` GPUs each (``num_gpus``), each running
  an in-process :class:`~iapo_gym.live.backends.VLLMBackend`.

The driver sends each request to the least loaded live worker, receives the finished
:class:`~iapo_gym.live.backends.Generation` and hands it to the builder, which checkpoints it at
once (``fsync``): a kill of anything loses at most the requests in flight.

**A lost worker loses and duplicates nothing.** Ray restarts an actor whose process or node died
(``max_restarts``) and re-runs the requests it had in flight (``max_task_retries``). When the
restarts are used up, the driver re-dispatches those requests to the other workers. Either way a
request is delivered to the builder once (one future per request, completed once), and a unit
already in the checkpoint is never requested again. A request carries its own sampling seed, so
the re-run gives the same completions on a server that samples deterministically per seed (vLLM).
An endpoint that still fails after every retry of its client (connection refused: its server is
down) is taken out of rotation and its requests go to the other workers; with no worker left the
build stops after the requests in flight are checkpointed, and the same command resumes.

**A killed driver** takes its actors with it (they belong to its Ray job); the checkpoint holds
every finished unit and the same command resumes, on Ray or locally: the content keys do not
depend on where a unit ran (:meth:`RayBackend.outcome_params` equals that of the workers'
backends), so local and Ray sessions can be mixed on one checkpoint.

Why not ``ray.data.llm``: its processors (``vLLMEngineProcessorConfig``,
``HttpRequestProcessorConfig``) run a Ray Dataset through vLLM engines or HTTP endpoints and are
the better fit for a one-shot batch job on GPU nodes. The builder needs more than a dataset
pass: each finished unit must reach the driver's checkpoint as it completes (bounded loss, resume,
tables that grow), a refused request must be quarantined with the server's message while the
rest goes on, and endpoint requests must go through the same client as a local build
(``Retry-After``, fallback to ``n = 1``, whole-request timeouts), so that a table does not depend
on the executor. Actors behind the existing scheduler give all of that with Ray doing placement,
restarts and the cluster. (Here the engine is the CPU build of vLLM, which ``ray.data.llm``'s
engine stage does not target, so that path could not have been tested either.)

Ray is an optional extra (``pip install 'iapo-gym[ray]'``), imported only when a
:class:`RayBackend` is made.
"""

from __future__ import annotations

import os
import queue
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from iapo_gym.live.backends import (
    BackendError,
    GenerationRequest,
    RequestRejected,
    SamplingConfig,
    _CollectMixin,
)

__all__ = ["BuildWorker", "RayBackend", "WorkerSpec", "endpoint_workers", "engine_workers"]

ACTOR_PREFIX = "iapo-build-"  # actor names: iapo-build-<build id>-<worker index>


@dataclass(frozen=True)
class WorkerSpec:
    """One Ray worker of a build and the backend it drives.

    Attributes:
        kind: ``"openai"`` (an endpoint) or ``"vllm"`` (an in-process engine).
        kwargs: the backend's keyword arguments (``base_url``, ``concurrency``, ... for an
            endpoint; ``dtype``, ``max_model_len``, ... for an engine).
        capacity: requests in flight at this worker.
        num_gpus: GPUs the actor holds (engines).
        num_cpus: CPUs the actor holds (0 for an endpoint worker: it only waits on HTTP).
        label: how the worker is named in messages (the endpoint's URL, ``engine 0``).
    """

    kind: str
    kwargs: dict[str, Any]
    capacity: int
    num_gpus: float = 0.0
    num_cpus: float = 0.0
    label: str = ""


def endpoint_workers(urls: Sequence[str], concurrency: int, **client: Any) -> list[WorkerSpec]:
    """One worker per OpenAI-compatible endpoint, ``concurrency`` requests in flight at each.

    Args:
        urls: the endpoints' base URLs (reachable from every Ray node).
        concurrency: requests in flight per endpoint.
        **client: further :class:`~iapo_gym.live.backends.OpenAIBackend` arguments (timeout,
            retries, headers, ``extra_body``, ...).

    Raises:
        ValueError: no URL, a URL that is not http(s), or one named twice.
    """
    urls = [u.strip() for u in urls if u.strip()]
    if not urls:
        raise ValueError("--endpoints needs at least one URL, e.g. --endpoints http://10.0.0.1:8000,http://10.0.0.2:8000")
    bad = [u for u in urls if not u.startswith(("http://", "https://"))]
    if bad:
        raise ValueError(f"--endpoints {bad[0]!r} is not an http(s) URL; e.g. http://10.0.0.1:8000")
    if len(set(urls)) != len(urls):
        raise ValueError("--endpoints names an endpoint twice; raise --concurrency instead")
    if concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1; got {concurrency}")
    return [WorkerSpec("openai", {"base_url": u, "concurrency": int(concurrency), **client}, int(concurrency), label=u)
            for u in urls]


def engine_workers(k: int, gpus_per_worker: float, batch_size: int, **engine: Any) -> list[WorkerSpec]:
    """``k`` in-process vLLM engines, each in an actor holding ``gpus_per_worker`` GPUs.

    Args:
        k: number of engines.
        gpus_per_worker: GPUs per engine (``0`` runs the engines on CPUs, one CPU each; above 1
            the engine is tensor-parallel over them: ``tensor_parallel_size``).
        batch_size: requests in flight at each engine (queued in the running engine).
        **engine: :class:`~iapo_gym.live.backends.VLLMBackend` arguments (``dtype``, ...).
    """
    if k < 1:
        raise ValueError(f"--ray-workers must be >= 1; got {k}")
    if gpus_per_worker < 0 or batch_size < 1:
        raise ValueError("--gpus-per-worker must be >= 0 and --batch-size >= 1")
    if gpus_per_worker > 1 and "tensor_parallel_size" not in engine:
        engine = {**engine, "tensor_parallel_size": int(gpus_per_worker)}
    engine = {"concurrency": int(batch_size), **engine}  # requests kept queued in the running engine
    return [WorkerSpec("vllm", dict(engine), int(batch_size), num_gpus=float(gpus_per_worker),
                       num_cpus=0.0 if gpus_per_worker else 1.0, label=f"engine {i}") for i in range(k)]


def _check_workers(workers: Sequence[WorkerSpec]) -> None:
    if not workers:
        raise ValueError("a Ray build needs at least one worker")
    kinds = {w.kind for w in workers}
    if len(kinds) != 1 or not kinds <= {"openai", "vllm"}:
        raise ValueError(f"the workers of one build drive one kind of backend ('openai' or 'vllm'); got {sorted(kinds)}")
    body = dict(workers[0].kwargs.get("extra_body") or {})
    if any(dict(w.kwargs.get("extra_body") or {}) != body for w in workers):
        raise ValueError("every worker of one build must send the same extra_body (it is part of the content keys)")


class BuildWorker:
    """The Ray actor behind one worker: builds its backend and answers requests.

    A backend with ``submit`` (an endpoint, the in-process vLLM engine, which queues each request
    in the running engine) gets each request as it comes; a backend with only ``stream`` gets
    whatever requests are waiting, up to ``batch_size``, in one call, while new ones queue.
    Refusals and server-wide failures come back as values, not exceptions, so their status and
    message survive the trip to the driver intact.
    """

    def __init__(self, kind: str, model: str, sampling: SamplingConfig, kwargs: dict[str, Any], batch_size: int = 64) -> None:
        from iapo_gym.live.backends import make_backend

        if kind == "vllm":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        self.backend: Any = make_backend(kind, model, sampling, **kwargs)
        self.pid = os.getpid()
        self._queue: queue.Queue | None = None
        if not hasattr(self.backend, "submit"):
            self._queue = queue.Queue()
            self._batch = max(1, int(batch_size))
            threading.Thread(target=self._engine_loop, name="iapo-engine", daemon=True).start()

    def info(self) -> dict[str, Any]:
        """The worker's process id and node (checked at start; tests use the pid)."""
        import ray

        return {"pid": self.pid, "node": ray.util.get_node_ip_address()}

    def generate(self, request: GenerationRequest) -> tuple[str, int, Any]:
        """``("ok", pid, Generation)``, ``("rejected", pid, (message, status, body))`` or ``("failed", pid, message)``."""
        try:
            if self._queue is None:
                gen = self.backend.submit(request).result()
            else:
                fut: Future = Future()
                self._queue.put((request, fut))
                gen = fut.result()
        except RequestRejected as exc:
            return "rejected", self.pid, (str(exc), int(exc.status), str(exc.body))
        except BackendError as exc:
            return "failed", self.pid, str(exc)
        return "ok", self.pid, gen

    def _engine_loop(self) -> None:
        assert self._queue is not None
        while True:
            items = [self._queue.get()]
            while len(items) < self._batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if items[-1] is None:
                return
            try:
                for i, gen in self.backend.stream([r for r, _ in items]):
                    items[i][1].set_result(gen)
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(BackendError("the engine returned no result for a request"))
            except BaseException as exc:  # delivered to every waiting request
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(exc)

    def close(self) -> bool:
        """Release the backend (an engine shuts its worker process down)."""
        if self._queue is not None:
            self._queue.put(None)
        self.backend.close()
        return True


@dataclass(eq=False)
class _Job:
    request: GenerationRequest
    outer: Future
    dispatches: int = 0
    avoid: int | None = None  # the worker that last failed it (another one is preferred)

    def settle(self, result: Any = None, exc: BaseException | None = None) -> None:
        """Complete the request's future once (a late duplicate is ignored)."""
        if self.outer.done():
            return
        if exc is not None:
            self.outer.set_exception(exc)
        else:
            self.outer.set_result(result)


@dataclass
class WorkerState:
    """What the driver knows about one worker."""

    spec: WorkerSpec
    actor: Any
    name: str
    pid: int | None = None
    in_flight: int = 0
    done: int = 0
    restarts: int = 0  # restarts observed (a result came from a new process)
    lost: str | None = None  # why the worker is out of rotation
    history: list[int] = field(default_factory=list)


class RayBackend(_CollectMixin):
    """A backend whose requests run on Ray actors (see the module docstring).

    Args:
        model: the model name (the served name for endpoints, the model reference for engines);
            part of every content key, as for the workers' own backends.
        sampling: decoding parameters.
        workers: the workers (:func:`endpoint_workers` or :func:`engine_workers`).
        address: a running cluster (``"auto"``, ``host:port``); empty starts a private instance
            on this machine (``num_cpus`` CPUs), shut down by :meth:`close`.
        num_cpus: CPUs of the private instance.
        max_restarts: Ray restarts a dead actor this many times (then the driver re-dispatches).
        max_task_retries: Ray re-runs an in-flight request on the restarted actor this many times.
        max_dispatches: a request sent this many times without an answer fails the build.
        start_timeout: seconds for every worker to build its backend (engines load the model).
        batch_size: requests queued in an engine at once (engines only).
    """

    def __init__(
        self,
        model: str,
        sampling: SamplingConfig,
        workers: Sequence[WorkerSpec] | Callable[[dict[str, float]], Sequence[WorkerSpec]],
        *,
        address: str = "",
        num_cpus: int | None = None,
        max_restarts: int = 3,
        max_task_retries: int = 3,
        max_dispatches: int = 8,
        start_timeout: float = 1800.0,
        batch_size: int = 64,
    ) -> None:
        from iapo_gym._ray import ensure_ray, import_ray

        import_ray()  # a missing extra is reported before anything else
        self.model = model
        self.sampling = sampling
        self.max_dispatches = int(max_dispatches)
        self.started = False
        self.workers: list[WorkerState] = []
        if not callable(workers):
            _check_workers(workers)
        ray, self.started = ensure_ray(address, num_cpus)
        self.ray = ray
        try:
            if callable(workers):  # sized from the cluster (e.g. one engine per GPU)
                workers = list(workers(dict(ray.cluster_resources())))
                _check_workers(workers)
        except BaseException:
            self._release()
            raise
        self.kind = workers[0].kind
        self.extra_body = dict(workers[0].kwargs.get("extra_body") or {})
        self.build_id = uuid.uuid4().hex[:8]
        cls = ray.remote(BuildWorker)
        self._lock = threading.Lock()
        self._events: queue.Queue = queue.Queue()
        self._waiting: deque[_Job] = deque()
        self._closed = False
        self.redispatched = 0
        try:
            for i, w in enumerate(workers):
                name = f"{ACTOR_PREFIX}{self.build_id}-{i}"
                actor = cls.options(
                    name=name, num_cpus=w.num_cpus, num_gpus=w.num_gpus, max_restarts=int(max_restarts),
                    max_task_retries=int(max_task_retries), max_concurrency=w.capacity + 2, scheduling_strategy="SPREAD",
                ).remote(w.kind, model, sampling, w.kwargs, batch_size)
                self.workers.append(WorkerState(w, actor, name))
            self._check_started(start_timeout)
        except BaseException:
            self._release()
            raise
        self.concurrency = sum(w.spec.capacity for w in self.workers)
        self._thread = threading.Thread(target=self._loop, name="iapo-ray-dispatch", daemon=True)
        self._thread.start()

    def _check_started(self, timeout: float) -> None:
        ray = self.ray
        refs = [w.actor.info.remote() for w in self.workers]
        try:
            infos = ray.get(refs, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(f"the Ray workers did not start within {timeout:.0f} s (are there enough GPUs/CPUs in "
                               "the cluster for them?)") from None
        except ray.exceptions.RayActorError as exc:
            cause = getattr(exc, "error_msg", None) or str(exc)
            raise RuntimeError(f"a Ray build worker failed to start: {' '.join(str(cause).split())[:500]}") from None
        for w, info in zip(self.workers, infos, strict=True):
            w.pid = int(info["pid"])
            w.history.append(w.pid)

    # ------------------------------------------------------------------ the backend interface
    def outcome_params(self) -> dict[str, Any]:
        """What the workers' backends report: content keys do not depend on the executor."""
        return {**self.sampling.to_json(), "extra_body": self.extra_body}

    def submit(self, request: GenerationRequest) -> Future:
        """Queue one request; the future holds its :class:`Generation` (or the refusal)."""
        outer: Future = Future()
        outer.set_running_or_notify_cancel()
        if self._closed:
            outer.set_exception(BackendError("the Ray backend is closed"))
            return outer
        self._events.put(("submit", _Job(request, outer)))
        return outer

    # ------------------------------------------------------------------ the dispatcher thread
    def _loop(self) -> None:
        while True:
            ev = self._events.get()
            if ev is None:
                return
            kind, payload = ev
            try:
                if kind == "submit":
                    self._waiting.append(payload)
                else:
                    self._finish(*payload)
                self._assign()
            except BaseException as exc:  # a bug here must not hang the build: fail what waits
                self._fail_waiting(BackendError(f"the Ray dispatcher failed: {type(exc).__name__}: {exc}"))

    def _live(self) -> list[int]:
        return [i for i, w in enumerate(self.workers) if w.lost is None]

    def _assign(self) -> None:
        while self._waiting:
            live = [i for i in self._live() if self.workers[i].in_flight < self.workers[i].spec.capacity]
            if not self._live():
                lost = "; ".join(f"{w.spec.label}: {w.lost}" for w in self.workers)
                self._fail_waiting(BackendError(
                    f"every Ray worker of the build is lost ({lost[:600]}); the checkpoint keeps every finished unit: "
                    "run the same command again"))
                return
            if not live:
                return
            job = self._waiting[0]
            if job.avoid in live and len(live) > 1:
                live.remove(job.avoid)
            i = min(live, key=lambda j: (self.workers[j].in_flight / self.workers[j].spec.capacity, j))
            self._waiting.popleft()
            w = self.workers[i]
            w.in_flight += 1
            job.dispatches += 1
            ref = w.actor.generate.remote(job.request)
            ref.future().add_done_callback(lambda f, i=i, job=job: self._events.put(("done", (i, job, f))))

    def _fail_waiting(self, exc: BaseException) -> None:
        while self._waiting:
            self._waiting.popleft().settle(exc=exc)

    def _requeue(self, job: _Job, i: int, why: str) -> None:
        if job.dispatches >= self.max_dispatches:
            job.settle(exc=BackendError(f"a request was sent {job.dispatches} times without an answer ({why})"))
            return
        with self._lock:
            self.redispatched += 1
        job.avoid = i
        self._waiting.appendleft(job)

    def _finish(self, i: int, job: _Job, fut: Future) -> None:
        ray, w = self.ray, self.workers[i]
        w.in_flight -= 1
        try:
            status, pid, value = fut.result()
        except getattr(ray.exceptions, "ActorDiedError", ray.exceptions.RayActorError) as exc:  # restarts used up
            if w.lost is None:
                w.lost = f"the actor died ({' '.join(str(exc).split())[:200]})"
            self._requeue(job, i, f"worker {w.spec.label} died")
            return
        except ray.exceptions.RayActorError:  # unavailable for now (restarting): send it again
            self._requeue(job, i, f"worker {w.spec.label} unavailable")
            return
        except ray.exceptions.RayTaskError as exc:  # an unexpected error inside the worker: not retried
            job.settle(exc=exc.cause if isinstance(exc.cause, BaseException) else exc)
            return
        except ray.exceptions.RayError as exc:  # the object or its worker was lost: send it again
            self._requeue(job, i, f"{type(exc).__name__}")
            return
        if pid not in w.history:  # a result from a new process: Ray restarted the actor
            w.restarts += bool(w.history)
            w.history.append(pid)
            w.pid = pid
        if status == "ok":
            w.done += 1
            job.settle(value)
        elif status == "rejected":
            message, code, body = value
            job.settle(exc=RequestRejected(message, code, body))
        else:  # the endpoint failed through every retry of its client: take it out of rotation
            if w.lost is None:
                w.lost = " ".join(str(value).split())[:300]
            self._requeue(job, i, f"worker {w.spec.label} failed")

    # ------------------------------------------------------------------ reporting and closing
    def summary(self) -> str:
        """One line: workers, units each delivered, restarts observed, re-dispatched requests."""
        parts = []
        for w in self.workers:
            s = f"{w.spec.label}: {w.done} done"
            if w.restarts:
                s += f", {w.restarts} restart(s)"
            if w.lost:
                s += f", lost ({w.lost[:80]})"
            parts.append(s)
        return f"ray: {len(self.workers)} workers ({'; '.join(parts)}); {self.redispatched} request(s) re-dispatched"

    def _release(self) -> None:
        ray = self.ray
        refs = []
        for w in self.workers:
            try:
                refs.append(w.actor.close.remote())
            except Exception:  # noqa: BLE001 - a dead actor has nothing to close
                pass
        if refs:
            try:
                ray.wait(refs, num_returns=len(refs), timeout=30)
            except Exception:  # noqa: BLE001
                pass
        for w in self.workers:
            try:
                ray.kill(w.actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        if self.started:
            ray.shutdown()
            self.started = False

    def close(self) -> None:
        """Stop the workers (and the private Ray instance this backend started)."""
        if self._closed:
            return
        self._closed = True
        self._events.put(None)
        self._thread.join(timeout=10)
        self._fail_waiting(BackendError("the Ray backend was closed"))
        self._release()
