"""Where an experiment's cells run: in this process (the default) or as tasks on a Ray cluster.

A *cell* is one chunk of seeds of one (task, agent, budget) configuration. :func:`fit_cell` fits
the chunk with ``Agent.fit_many`` and scores every run exactly; it touches no file, so it can run
anywhere. The driver (:class:`iapo_gym.experiments.train.Runner`) stays the only writer of
``results.csv``, TensorBoard and saved policies: it consumes :class:`CellResult` objects in the
order the executor yields them.

* :class:`LocalExecutor` runs the cells one after another in this process (the runner's default;
  it shares exact evaluators between agents of the same seed).
* :class:`ProcessExecutor` runs the cells on worker processes of this machine (the standard
  library's process pool) and yields results as they finish: the reproduction preset's executor,
  one worker per CPU.
* :class:`RayExecutor` submits every cell as a Ray task and yields results as they finish. Ray
  is the scheduler (placement, retries when a worker or node dies, the multi-node cluster): we do
  not write one. A task whose worker dies is retried by Ray (``max_retries``); a cell is a pure
  function of its inputs (a seed determines its run), so a retried cell gives the same rows.

Ray is an optional extra (``pip install iapo-gym[ray]``); nothing else in the package imports it.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from iapo_gym.experiments.results import KEY

__all__ = [
    "Cell", "CellResult", "EvaluatorCache", "LocalExecutor", "ProcessExecutor", "RayExecutor", "fit_cell",
    "make_executor",
]


@dataclass(frozen=True)
class Cell:
    """One chunk of seeds of one configuration, with everything needed to run it anywhere.

    Attributes:
        env_id: the task's Gymnasium id.
        label: the agent's label (results.csv ``agent``).
        agent: the configured agent object (picklable; its class must be importable where it runs).
        record: the ``agent_config`` column (JSON text).
        budget: training budget in completions.
        seeds: the run seeds of this chunk.
        contexts: ``"finite"`` or ``"continuous"``.
        threads: torch / BLAS threads inside the cell.
        keep_policies: return the fitted policies (``--save-policies``).
    """

    env_id: str
    label: str
    agent: Any
    record: str
    budget: int
    seeds: tuple[int, ...]
    contexts: str = "finite"
    threads: int = 1
    keep_policies: bool = False


@dataclass
class CellResult:
    """What a cell returns to the driver: one results row per seed (and the policies if kept)."""

    cell: Cell
    rows: list[dict[str, Any]]
    seconds: float
    policies: dict[int, Any] = field(default_factory=dict)


def shares_table(env_id: str) -> bool:
    """Whether every run of ``env_id`` re-splits one table (real and shipped tasks) or draws its own world.

    It decides how :class:`~iapo_gym.experiments.evaluate.ExactEvaluator` sums a run's exact values
    (through the table's cached oracle, or on the run's test queries alone), so it must depend on
    the task only, never on which seed ran first or where: the same run gives the same bits anywhere.
    """
    import gymnasium as gym

    from iapo_gym.tasks import TASKS

    spec = gym.spec(env_id)
    info = TASKS.get(str((spec.kwargs or {}).get("task", "")))
    return info is None or info.kind != "synthetic"


#: Bytes of exact evaluators a process keeps (:attr:`ExactEvaluator.nbytes`): the runner's cache and
#: each worker's. Finite-context evaluators are small (0.2 MB for 27 contexts x 1,024 arms), so every
#: seed of a sweep stays; a continuous best-of-N run keeps 16.5 MB, so about 30 are kept (the runner
#: orders continuous cells block of 25 seeds by block, and drops a run's evaluator after its last cell).
EVALUATOR_CACHE_BYTES = 512 << 20


class EvaluatorCache:
    """Exact evaluators by key, least recently used first out, within ``max_bytes`` in all.

    ``max_bytes`` defaults to :data:`EVALUATOR_CACHE_BYTES`.

    The cells of one seed (every agent and budget) share its evaluator; memory stays bounded
    whatever the number of runs (the newest evaluator is always kept). Rebuilding an evicted
    evaluator gives the same values: it is a pure function of the run.
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = int(EVALUATOR_CACHE_BYTES if max_bytes is None else max_bytes)
        self.nbytes = 0
        self.built = 0  # evaluators built (a rebuilt one counts again)
        self._items: OrderedDict[Any, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Any) -> bool:
        return key in self._items

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        """The evaluator of ``key``, built with ``build()`` if it is not kept."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = build()
        self.built += 1
        self._items[key] = value
        self.nbytes += int(getattr(value, "nbytes", 0))
        while len(self._items) > 1 and self.nbytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= int(getattr(old, "nbytes", 0))
        return value

    def discard(self, key: Any) -> None:
        """Forget ``key``'s evaluator (no cell will need it again)."""
        old = self._items.pop(key, None)
        if old is not None:
            self.nbytes -= int(getattr(old, "nbytes", 0))


#: This worker process's evaluators (remote cells; the local executor uses the runner's cache).
_EVALUATORS = EvaluatorCache()


def worker_evaluator(env_id: str, contexts: str, seed: int, env: Any | None) -> Any:
    """The exact evaluator of run ``seed`` of ``env_id`` in this process (cached, bounded in bytes)."""
    from iapo_gym.experiments.evaluate import ExactEvaluator
    from iapo_gym.experiments.train import env_factory

    def build() -> Any:
        run_env = env if env is not None else env_factory(env_id, 0, contexts)(seed)
        return ExactEvaluator(run_env, contexts, shared_table=shares_table(env_id))

    return _EVALUATORS.get((env_id, contexts, int(seed)), build)


def fit_cell(cell: Cell, evaluator: Callable[[int, Any], Any] | None = None) -> CellResult:
    """Fit ``cell.seeds`` as one ``fit_many`` batch and score each run exactly (no file is written).

    Args:
        cell: the work.
        evaluator: ``(seed, env or None) -> ExactEvaluator``; the local executor passes the runner's
            cache, a remote cell builds its own.

    Returns:
        One row per seed (the :data:`~iapo_gym.experiments.results.KEY` columns, ``budget_used``,
        ``wall_s``, the exact metrics and ``agent_config``).
    """
    from iapo_gym.experiments.threads import apply_torch_threads
    from iapo_gym.experiments.train import env_factory

    apply_torch_threads(cell.threads)
    base = env_factory(cell.env_id, cell.budget, cell.contexts)
    built: dict[int, Any] = {}

    def make_env(seed: int) -> Any:
        env = base(seed)
        built[int(seed)] = env
        return env

    if evaluator is None:  # a remote cell: this worker process's own cache
        evaluator = partial(worker_evaluator, cell.env_id, cell.contexts)

    t0 = time.perf_counter()
    policies = cell.agent.fit_many(make_env, cell.budget, list(cell.seeds))
    seconds = time.perf_counter() - t0
    wall = seconds / len(cell.seeds)
    if len(policies) != len(cell.seeds):
        raise RuntimeError(f"{cell.label}.fit_many returned {len(policies)} policies for {len(cell.seeds)} seeds")
    rows, kept = [], {}
    for seed, policy in zip(cell.seeds, policies, strict=True):
        used = int(policy.budget_used)
        if used > cell.budget:
            raise RuntimeError(f"agent {cell.label!r} reports {used} completions spent with a budget of {cell.budget}")
        # pop: each run's env (and its world's oracle cache) is freed as soon as it is scored
        metrics = evaluator(int(seed), built.pop(int(seed), None)).evaluate(policy)
        key = (cell.env_id, cell.contexts, cell.label, int(cell.budget), int(seed))
        rows.append(
            dict(zip(KEY, key, strict=True))
            | {"budget_used": used, "wall_s": wall}
            | metrics.row()
            | {"agent_config": cell.record}
        )
        if cell.keep_policies:
            kept[int(seed)] = policy
    return CellResult(cell, rows, seconds, kept)


class LocalExecutor:
    """Runs cells in order in this process; ``evaluator`` is the runner's shared evaluator cache."""

    name = "local"

    def __init__(self, evaluator: Callable[[str, int, Any], Any] | None = None) -> None:
        self.evaluator = evaluator

    def run(self, cells: Iterable[Cell]) -> Iterator[CellResult]:
        """Yield each cell's result as soon as it is computed, in the order given."""
        for cell in cells:
            yield fit_cell(cell, None if self.evaluator is None else partial(self.evaluator, cell.env_id))

    def close(self) -> None:
        """Nothing to release."""


class RayExecutor:
    """Runs cells as Ray tasks (one CPU each) and yields their results as they finish.

    Args:
        address: a running cluster (``ray start --head`` prints it; ``"auto"`` finds a local one);
            empty starts a private local instance on 127.0.0.1 with ``num_cpus`` CPUs.
        num_cpus: CPUs of the private local instance (ignored when joining a cluster).
        max_retries: Ray re-runs a cell whose worker process or node died this many times.
        max_in_flight: cells submitted at once (bounds the driver's memory of pending results).
    """

    name = "ray"

    def __init__(self, address: str = "", num_cpus: int | None = None, max_retries: int = 3,
                 max_in_flight: int = 256) -> None:
        from iapo_gym._ray import ensure_ray

        ray, self.started = ensure_ray(address, num_cpus)
        self.ray = ray
        self.remote = ray.remote(num_cpus=1, max_retries=int(max_retries), retry_exceptions=False)(fit_cell)
        self.max_in_flight = max(1, int(max_in_flight))

    def run(self, cells: Iterable[Cell]) -> Iterator[CellResult]:
        """Submit cells (at most ``max_in_flight`` pending) and yield each result when it is done."""
        ray, pending = self.ray, list(cells)
        queue = iter(pending)
        in_flight = []
        try:
            for cell in queue:
                in_flight.append(self.remote.remote(cell))
                if len(in_flight) >= self.max_in_flight:
                    break
            while in_flight:
                done, in_flight = ray.wait(in_flight, num_returns=1)
                yield ray.get(done[0])
                nxt = next(queue, None)
                if nxt is not None:
                    in_flight.append(self.remote.remote(nxt))
        finally:
            for ref in in_flight:  # interrupted: nothing pending keeps running for nobody
                ray.cancel(ref, force=True)

    def close(self) -> None:
        """Shut down the private local instance this executor started (a joined cluster stays up)."""
        if self.started:
            self.ray.shutdown()


class ProcessExecutor:
    """Runs cells on worker processes of this machine and yields their results as they finish.

    The standard library's :class:`concurrent.futures.ProcessPoolExecutor` (``spawn`` start: a
    worker never inherits the driver's threads, e.g. torch's) is all a one-machine sweep needs: no
    Ray daemons to start or to share the cores with. Each worker keeps its own worlds and exact
    evaluators (:func:`worker_evaluator`), so a seed's are built at most once per worker.

    Args:
        workers: worker processes; ``0`` = one per CPU this process may run on.
        max_in_flight: cells submitted at once (default: two per worker), which bounds the
            driver's memory of pending results and what Ctrl-C has to cancel.
    """

    name = "process"

    def __init__(self, workers: int = 0, max_in_flight: int = 0) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.workers = int(workers) if int(workers) > 0 else available_cpus()
        self.max_in_flight = int(max_in_flight) if int(max_in_flight) > 0 else 2 * self.workers
        self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    def run(self, cells: Iterable[Cell]) -> Iterator[CellResult]:
        """Submit cells (at most ``max_in_flight`` pending) and yield each result when it is done.

        A cell that raises stops the sweep with its error (finished cells are already yielded);
        cells not started yet are cancelled.
        """
        from concurrent.futures import FIRST_COMPLETED, wait

        queue = iter(cells)
        pending = set()
        try:
            for cell in queue:
                pending.add(self.pool.submit(fit_cell, cell))
                if len(pending) >= self.max_in_flight:
                    break
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                failed = [f for f in done if f.exception() is not None]
                for future in done:  # every finished cell is handed over before an error stops the sweep
                    if future.exception() is None:
                        yield future.result()
                error = failed[0].exception() if failed else None
                if error is not None:
                    raise error
                for cell in itertools.islice(queue, len(done)):
                    pending.add(self.pool.submit(fit_cell, cell))
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        """Stop the workers (cells not started are cancelled)."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS reports it)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


#: The ``--executor`` names.
EXECUTORS = ("local", "process", "ray")


def make_executor(name: str, address: str = "", evaluator: Callable[[str, int, Any], Any] | None = None,
                  num_cpus: int | None = None, workers: int = 0) -> LocalExecutor | ProcessExecutor | RayExecutor:
    """The executor called ``name`` (``"local"``, ``"process"`` with ``workers`` processes, or ``"ray"``)."""
    if name == "local":
        return LocalExecutor(evaluator)
    if name == "process":
        return ProcessExecutor(workers)
    if name == "ray":
        return RayExecutor(address, num_cpus=num_cpus)
    raise ValueError(f"unknown --executor {name!r}: use one of {', '.join(EXECUTORS)}")


def record_text(record: dict[str, Any]) -> str:
    """The ``agent_config`` column text of an agent record (stable JSON)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
