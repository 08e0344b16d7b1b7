"""The task registry: which table (or generator) stands behind each environment id.

Real tasks read a converted table from the data directory (``iapo-gym data import`` / ``pull``);
synthetic tasks draw a fresh world from ``world_seed``; shipped tasks read a table directory
inside the repository's ``envs_data/``. Users add a task with :func:`register_task`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import gymnasium as gym

from iapo_gym.envs_data import ROOT as ENVS_DATA
from iapo_gym.tables.format import OutcomeTable
from iapo_gym.tasks.synthetic import make_synth_bernoulli, make_synth_categorical


@dataclass(frozen=True)
class TaskInfo:
    """One task.

    Attributes:
        name: task name, e.g. ``"MATH"``; the env id is ``IAPO-<name>-v0``.
        strategy: ``"mv"`` or ``"bon"``.
        kind: ``"real"`` (table in the data directory), ``"synthetic"`` (drawn per world seed) or
            ``"shipped"`` (table directory in ``envs_data/``).
        description: one line for listings.
        generator: ``world_seed -> OutcomeTable`` for synthetic tasks.
        table: data-directory name (real) or path (shipped) of the table.
    """

    name: str
    strategy: Literal["mv", "bon"]
    kind: Literal["real", "synthetic", "shipped"]
    description: str
    generator: Callable[[int], OutcomeTable] | None = None
    table: str | None = None

    @property
    def env_id(self) -> str:
        """The Gymnasium id, ``IAPO-<name>-v0``."""
        return f"IAPO-{self.name}-v0"


TASKS: dict[str, TaskInfo] = {}


def register_task(info: TaskInfo) -> TaskInfo:
    """Add (or replace) a task in :data:`TASKS` and register its Gymnasium id ``IAPO-<name>-v0``.

    Example (a table directory shipped in ``envs_data/``)::

        register_task(TaskInfo("SmolArith", "mv", "shipped", "SmolLM2 arithmetic", table="smolarith/table"))
        env = gym.make("IAPO-SmolArith-v0", budget=2000)
    """
    if info.kind not in ("real", "synthetic", "shipped"):
        raise ValueError(f"task kind must be 'real', 'synthetic' or 'shipped'; got {info.kind!r}")
    if info.kind == "synthetic" and info.generator is None:
        raise ValueError(f"synthetic task {info.name} needs a generator (world_seed -> OutcomeTable)")
    if info.kind != "synthetic" and not info.table:
        raise ValueError(f"task {info.name} needs a table name (real) or a table directory (shipped)")
    TASKS[info.name] = info
    register_env_id(info)
    return info


def register_env_id(info: TaskInfo) -> None:
    """Register ``info.env_id`` with Gymnasium (idempotent; the env looks the task up at make time)."""
    if info.env_id not in gym.registry:
        gym.register(
            id=info.env_id,
            entry_point="iapo_gym.env:IAPOEnv",
            vector_entry_point="iapo_gym.vector:make_vector_env",
            kwargs={"task": info.name},
        )


for _info in (
    TaskInfo(
        "SynthBernoulli",
        "mv",
        "synthetic",
        "majority voting, 32 prompts incl. deceptive ones, 520 queries",
        make_synth_bernoulli,
    ),
    TaskInfo("MATH", "mv", "real", "MATH (Hendrycks), 25 prompts, 316 queries, Llama-3.3-70B (paper release)", table="MATH"),
    TaskInfo("CommonsenseQA", "mv", "real", "CommonsenseQA, 48 prompts, 1500 queries (paper release)", table="CommonsenseQA"),
    TaskInfo(
        "SynthCategorical",
        "bon",
        "synthetic",
        "best-of-N, 32 prompts, 512 queries, 2 objectives in [0, 4]",
        make_synth_categorical,
    ),
    TaskInfo(
        "HelpfulHarmless",
        "bon",
        "real",
        "Anthropic HH, 20 prompts, helpful/harmless reward models (paper release)",
        table="HelpfulHarmless",
    ),
    TaskInfo(
        "Summarization",
        "bon",
        "real",
        "TL;DR summarisation, 20 prompts, two reward models (paper release)",
        table="Summarization",
    ),
    TaskInfo(
        "SmolArith",
        "mv",
        "shipped",
        "arithmetic answered by SmolLM2-135M on vLLM (CPU), 6 prompts, 24 queries, built by iapo-gym build",
        table="smolarith/table",
    ),
):
    register_task(_info)


def task_name(task_or_env_id: str) -> str:
    """``"IAPO-MATH-v0"``, ``"iapo_gym:IAPO-MATH-v0"`` or ``"MATH"`` -> ``"MATH"``."""
    name = task_or_env_id.split(":")[-1]
    if name.startswith("IAPO-") and name.endswith("-v0"):
        name = name[len("IAPO-") : -len("-v0")]
    if name not in TASKS:
        raise KeyError(f"unknown task {task_or_env_id!r}; known tasks: {', '.join(TASKS)}")
    return name


@lru_cache(maxsize=16)
def _load_stored(directory: str, mtime: float) -> OutcomeTable:
    from iapo_gym.tables.io import load_table

    return load_table(directory)


def load_task_table(task: str, world_seed: int | None = None) -> OutcomeTable:
    """The outcome table behind ``task`` (a task name or env id).

    Real and shipped tables are loaded once per process and shared (so the exact oracle's cache
    is computed once); synthetic tables are drawn from ``world_seed`` (default 0) on every call.

    Raises:
        KeyError: unknown task.
        iapo_gym.tables.store.TableNotFoundError: a real task whose table was never imported; the
            message names ``iapo-gym data pull`` and ``iapo-gym data import``.
    """
    info = TASKS[task_name(task)]
    if info.kind == "synthetic" and info.generator is not None:
        return info.generator(0 if world_seed is None else int(world_seed))
    if info.table is None:
        raise ValueError(f"task {info.name} ({info.kind}) names neither a generator nor a table")
    if info.kind == "shipped":
        path = Path(info.table)
        path = path if path.is_absolute() else ENVS_DATA / path
        return _load_stored(str(path), (path / "manifest.json").stat().st_mtime)
    from iapo_gym.tables.store import load_named, table_path

    manifest = table_path(info.table) / "manifest.json"
    if not manifest.exists():
        return load_named(info.table)  # raises TableNotFoundError with the fix
    return _load_stored(str(manifest.parent), manifest.stat().st_mtime)
