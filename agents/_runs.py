"""Back-compatible names for the batch engine, which now lives in :mod:`iapo_gym.runs` (public)."""

from __future__ import annotations

from iapo_gym.runs import RunBatch, _unwrap

Runs = RunBatch

__all__ = ["RunBatch", "Runs", "_unwrap"]
