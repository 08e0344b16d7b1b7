"""Live generation: LLM backends, scorers, task specs, the resumable table builder, live mode.

Importing this package is cheap; vLLM, transformers and math-verify load only when a backend
or scorer that needs them is built (install them with ``pip install 'iapo-gym[live]'`` on CPU
or ``'iapo-gym[vllm]'`` on GPU).

* :mod:`~iapo_gym.live.backends`: :class:`VLLMBackend`, :class:`OpenAIBackend`
* :mod:`~iapo_gym.live.scorers`: MATH, numeric, multiple-choice, reward-model and proxy scorers
* :mod:`~iapo_gym.live.specs`: :class:`TaskSpec`, :func:`load_spec`, :func:`load_queries`
* :mod:`~iapo_gym.live.builder`: :func:`build_table` (``iapo-gym build``); content keys
* :mod:`~iapo_gym.live.scheduler`: continuous scheduling of work units over a backend
* :mod:`~iapo_gym.live.checkpoint`: the checksummed, append-only checkpoint; :func:`repair`
* :mod:`~iapo_gym.live.plan`: :func:`plan_build` (``--dry-run``)
* :mod:`~iapo_gym.live.testserver`: a local OpenAI-compatible server that misbehaves on demand
* :mod:`~iapo_gym.live.source`: :class:`LiveSource` (``gym.make(ID, backend=...)``), replay
* :mod:`~iapo_gym.live.models`: SmolLM2 preparation, model references
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Backend": "backends",
    "BackendError": "backends",
    "Generation": "backends",
    "GenerationRequest": "backends",
    "OpenAIBackend": "backends",
    "SamplingConfig": "backends",
    "VLLMBackend": "backends",
    "make_backend": "backends",
    "RequestRejected": "backends",
    "derive_seed": "backends",
    "BuildIncomplete": "builder",
    "content_key": "builder",
    "CheckpointError": "checkpoint",
    "CheckpointLog": "checkpoint",
    "read_units": "checkpoint",
    "repair": "checkpoint",
    "plan_build": "plan",
    "WorkUnit": "scheduler",
    "run_units": "scheduler",
    "Builder": "builder",
    "assemble_table": "builder",
    "build_table": "builder",
    "unit_seed": "builder",
    "LiveSource": "source",
    "ReplayBackend": "source",
    "recording_to_table": "source",
    "Query": "specs",
    "TaskSpec": "specs",
    "load_queries": "specs",
    "load_spec": "specs",
    "make_scorer": "scorers",
    "cluster_answers": "scorers",
    "prepare_smollm2": "models",
    "resolve_model": "models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"iapo_gym.live.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'iapo_gym.live' has no attribute {name!r}")
