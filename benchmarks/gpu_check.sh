#!/usr/bin/env bash
# The GPU check, one short script for a machine with a CUDA GPU and PyTorch + transformers
# (no gguf package needed): throughput against a bare loop on the same GPU, and agreement with
# the CPU numbers in benchmarks/gpu_reference.json (made here with --write-reference).
# About 2 minutes on one H200; results go to benchmarks/RESULTS.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
python3 benchmarks/gpu_check.py --device "${1:-cuda}"
