#!/usr/bin/env bash
# The test command (README, CI): install from the repo's own files, then run every tier that this
# machine can run. Tiers: default (tiny model), slow (smollm2-135m, vLLM on CPU), llamacpp,
# container (Docker). Tests whose hardware is missing (gpu) skip with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
bash scripts/install.sh
python3 -m pytest -m "${HYPERBENCH_TEST_MARKERS:-not gpu}" "$@"
