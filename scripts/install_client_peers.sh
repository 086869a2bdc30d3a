#!/usr/bin/env bash
# Install the peer load generators that benchmarks/client_ceiling.py compares hyperbench's client
# with: GuideLLM and NVIDIA AIPerf, each pinned, each in a virtualenv of its own.
#
# Why separate venvs: both pin their own versions of transformers, datasets, pydantic, numpy and
# more (and GuideLLM depends on torch); installed into the harness's environment they would replace
# the versions the harness and its tests were written against, and each other's. The harness never
# imports them: client_ceiling.py runs `<venv>/bin/guidellm` and `<venv>/bin/aiperf` as
# subprocesses (benchmarks/ceiling_peers.py finds the venvs at the same default paths, or through
# HYPERBENCH_GUIDELLM_VENV / HYPERBENCH_AIPERF_VENV).
#
# GuideLLM declares an unpinned `torch`: pip would take the newest CUDA build (~6 GB here); torch is
# installed first at TORCH_VERSION (default 2.13.0, on these machines the local CPU wheel; the
# client never runs a model, so a CPU build is all it needs).
#
# Idempotent: a venv that already holds its pinned version is left alone (about a second).
#
# Env: HYPERBENCH_GUIDELLM_VENV (default ${HYPERBENCH_CACHE:-$HOME/.cache/hyperbench}/venv-guidellm),
#      HYPERBENCH_AIPERF_VENV (default .../venv-aiperf), GUIDELLM_VERSION (default 0.8.1),
#      AIPERF_VERSION (default 0.13.0), TORCH_VERSION (default 2.13.0), PYTHON (interpreter for the
#      venvs, default python3). Arguments: `guidellm` and/or `aiperf` to install only those.
set -euo pipefail

CACHE="${HYPERBENCH_CACHE:-$HOME/.cache/hyperbench}"
GUIDELLM_VENV="${HYPERBENCH_GUIDELLM_VENV:-$CACHE/venv-guidellm}"
AIPERF_VENV="${HYPERBENCH_AIPERF_VENV:-$CACHE/venv-aiperf}"
GUIDELLM="${GUIDELLM_VERSION:-0.8.1}"
AIPERF="${AIPERF_VERSION:-0.13.0}"
TORCH="${TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"

log() { echo "install_client_peers: $*"; }

# has the venv this package at this version? (package metadata only: no import)
has() {  # venv package version
    [[ -x "$1/bin/python" ]] || return 1
    "$1/bin/python" -c 'import sys; from importlib import metadata; sys.exit(metadata.version(sys.argv[1]) != sys.argv[2])' \
        "$2" "$3" 2>/dev/null
}

install() {  # venv package version [packages to install first...]
    local venv=$1 pkg=$2 version=$3 start
    shift 3
    if has "$venv" "$pkg" "$version"; then
        log "$pkg==$version already in $venv"
        return 0
    fi
    start=$(date +%s)
    [[ -x "$venv/bin/python" ]] || "$PYTHON" -m venv "$venv"
    [[ $# -gt 0 ]] && "$venv/bin/python" -m pip install -q "$@"
    "$venv/bin/python" -m pip install -q "$pkg==$version"
    has "$venv" "$pkg" "$version" || { log "$pkg==$version did not end up installed in $venv" >&2; exit 1; }
    log "installed $pkg==$version into $venv in $(( $(date +%s) - start )) s"
}

want=("$@")
[[ ${#want[@]} -gt 0 ]] || want=(guidellm aiperf)
for peer in "${want[@]}"; do
    case "$peer" in
        guidellm) install "$GUIDELLM_VENV" guidellm "$GUIDELLM" "torch==$TORCH" ;;
        aiperf) install "$AIPERF_VENV" aiperf "$AIPERF" ;;
        *) log "unknown peer '$peer' (choose from: guidellm aiperf)" >&2; exit 2 ;;
    esac
done
