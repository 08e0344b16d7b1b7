"""Glue between the environment and live generation (``gym.make(ID, backend=...)``).

:func:`live_source_for` gives the environment a :class:`~iapo_gym.live.source.LiveSource` whose
queries line up with the rows of the environment's table (query ``i`` of the env is the table's
``query_ids[i]``), found through the task's spec in ``envs_data/``. :func:`spec_table` makes a
structure-only table from a spec, for live runs of tasks that have no built table yet.

``backend`` may be a backend object or a string: ``"vllm"`` (in process, the spec's sampling,
model ``smollm2`` unless ``model=`` says otherwise) or ``"openai"`` (``base_url=`` and ``model=``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from iapo_gym.live.backends import Backend, make_backend
from iapo_gym.live.source import LiveSource
from iapo_gym.live.specs import ENVS_DATA, Query, TaskSpec, load_queries, load_spec
from iapo_gym.tables.format import OutcomeTable


def find_spec(task: str) -> TaskSpec:
    """The spec in ``envs_data/`` whose ``task`` (or folder name) is ``task``."""
    if ENVS_DATA.is_dir():
        for path in sorted(ENVS_DATA.glob("*/spec.json")):
            spec = load_spec(path)
            if spec.task.lower() == task.lower() or path.parent.name.lower() == task.lower():
                return spec
    raise FileNotFoundError(f"no task spec for {task!r} in {ENVS_DATA}; pass spec= (a TaskSpec or a spec.json path)")


def aligned_queries(spec: TaskSpec, query_ids: tuple[str, ...], dataset_path: str | Path | None = None) -> list[Query]:
    """The spec's queries in the order of ``query_ids`` (raises naming the first missing id)."""
    by_id = {q.id: q for q in load_queries(spec, local_path=dataset_path, limit=None)}
    missing = [qid for qid in query_ids if qid not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} table queries (first {missing[0]!r}) are not in task {spec.task}'s dataset; "
                         "pass dataset_path= to the file the table was built from")
    return [by_id[qid] for qid in query_ids]


def resolve_backend(backend: Backend | str, spec: TaskSpec, **kwargs: Any) -> Backend:
    """A backend object from ``backend`` (an object, ``"vllm"`` or ``"openai"``)."""
    if not isinstance(backend, str):
        return backend
    model = kwargs.pop("model", "smollm2")
    if backend == "vllm":
        kwargs.setdefault("dtype", "float32")
        kwargs.setdefault("max_model_len", 1024)
        kwargs.setdefault("enforce_eager", True)
    return make_backend(backend, model, spec.sampling, **kwargs)


def live_source_for(
    table: OutcomeTable,
    backend: Backend | str,
    *,
    spec: TaskSpec | str | Path | None = None,
    record: str | Path | None = None,
    dataset_path: str | Path | None = None,
    **backend_kwargs: Any,
) -> LiveSource:
    """A live source answering the env's pulls for ``table``'s task (see the module docstring).

    Raises:
        ValueError: the spec's prompts differ from the table's.
    """
    if spec is None:
        spec = find_spec(table.task)
    elif not isinstance(spec, TaskSpec):
        spec = load_spec(spec)
    if tuple(spec.prompts) != tuple(table.prompts):
        if len(spec.prompts) >= table.n_prompts and tuple(spec.prompts[: table.n_prompts]) == tuple(table.prompts):
            spec = spec.with_overrides(prompts=tuple(table.prompts))
        else:
            raise ValueError(f"the table's prompts are not those of task spec {spec.path or spec.task}")
    queries = aligned_queries(spec, table.query_ids, dataset_path)
    return LiveSource(spec, resolve_backend(backend, spec, **backend_kwargs), queries, record=record)


def as_env_backend(table: OutcomeTable, backend: Any, **kwargs: Any) -> Any:
    """What ``IAPOEnv(backend=...)`` keeps.

    A :class:`LiveSource` (or any object with the same
    ``generate(prompt, n, query, rng, width=)`` method) unchanged; a backend object or name
    (``"vllm"``, ``"openai"``) wrapped by :func:`live_source_for` for the env's table.
    """
    if isinstance(backend, LiveSource) or (not isinstance(backend, str) and not hasattr(backend, "stream")):
        return backend
    return live_source_for(table, backend, **kwargs)


def spec_table(spec: TaskSpec, queries: list[Query] | None = None) -> OutcomeTable:
    """A structure-only table (prompts, queries, contexts, n_max, split) for a live run.

    For a task with no built table. Its outcome arrays are uniform placeholders, flagged in
    ``provenance["placeholder"]``: exact metrics (oracle, regret) need a built table.
    """
    from iapo_gym.live.builder import _split

    qs = queries if queries is not None else load_queries(spec)
    P, Q = len(spec.prompts), len(qs)
    common: dict[str, Any] = dict(
        task=spec.task, strategy=spec.strategy, prompts=spec.prompt_labels(), query_ids=tuple(q.id for q in qs),
        objectives=spec.objectives, objective_ranges=np.array(spec.objective_ranges, dtype=np.float64),
        contexts=spec.context_set(), n_max=spec.n_max, cost=np.zeros((P, Q)), split=_split(spec, Q),
        cost_unit="placeholder", provenance={"placeholder": True, "spec": str(spec.path or spec.task)},
    )
    if spec.strategy == "mv":
        return OutcomeTable(**common, answer_probs=np.full((P, Q, 2), 0.5), gold=np.zeros(Q, dtype=np.int64))
    K = len(spec.objectives)
    return OutcomeTable(**common, outcome_values=np.zeros((P, Q, 1, K)), outcome_probs=np.ones((P, Q, 1)))
