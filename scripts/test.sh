#!/usr/bin/env bash
# The test command (README, CI): install from the repo's own files, then run every tier that this
# machine can run. Tiers: default (tiny model), slow (smollm2-135m, vLLM on CPU), llamacpp,
# container (Docker). Tests whose hardware is missing (gpu) skip with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
bash scripts/install.sh
# the container tier (tests/test_containers.py): Docker, Compose v2, a local base image and the
# build context's wheels (scripts/containers_setup.sh; ~2 min cold, 1 s after). Exit 3 = this
# machine cannot (no root/apt): those tests then skip with the reason. Any other failure stops.
markers="${HYPERBENCH_TEST_MARKERS:-not gpu}"
if [[ "${HYPERBENCH_SKIP_CONTAINERS:-0}" != 1 && "$markers" != *"not container"* ]] \
   && [[ "$markers" == *container* || "$markers" == "not "* ]]; then
  bash scripts/containers_setup.sh >/dev/null || { rc=$?; [[ $rc == 3 ]] || exit $rc; }
fi
# the HPC tiers (tests/test_apptainer_tier.py, tests/test_slurm.py): apptainer in a cached trixie
# root (~80 s cold, 1 s after) and a one-node SLURM cluster (~10 s cold). Exit 3 = cannot here.
if [[ "${HYPERBENCH_SKIP_HPC:-0}" != 1 ]]; then
  if path_line="$(bash scripts/apptainer_setup.sh)"; then eval "$path_line"; else rc=$?; [[ $rc == 3 ]] || exit $rc; fi
  bash scripts/slurm_setup.sh || { rc=$?; [[ $rc == 3 ]] || exit $rc; }
fi
python3 -m pytest -m "${HYPERBENCH_TEST_MARKERS:-not gpu}" "$@"
