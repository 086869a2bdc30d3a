#!/usr/bin/env bash
# Make this machine able to build and run hyperbench's images with `docker compose`.
#
# What a CI machine lacks, and what this does about it (each step is skipped when already done,
# so a second run takes about a second):
#   1. Docker: Debian's docker.io (20.10) from apt, and dockerd started when none answers.
#   2. Compose v2 and buildx: bookworm's docker-compose is v1 (no build secrets), so the static
#      binaries of trixie's docker-compose and docker-buildx packages are fetched with a private
#      apt configuration (the system's sources are left alone) and placed in
#      $DOCKER_CONFIG/cli-plugins, a private DOCKER_CONFIG.
#   3. A base image: there is no registry to pull from, so `hyperbench/base:bookworm` is made
#      with debootstrap and `docker import`.
#   4. The build context: the local CPU torch wheel (the registry's torch is the CUDA build) and
#      the cached llama-cpp-python wheel (scripts/build_llamacpp_wheel.sh) are hard-linked into
#      the git-ignored containers/context/.
#
# Afterwards (the last lines printed say the same):
#   export DOCKER_CONFIG=<dir> DOCKER_BUILDKIT=1 HYPERBENCH_BASE_IMAGE=hyperbench/base:bookworm
#   /usr/bin/docker compose -f compose/docker-compose.yml build
# Users with Docker and Compose v2 already need none of this beyond step 4 for CPU images
# (`mkdir -p containers/context` is enough for CUDA images, which take torch from the registry).
#
# Exit status: 0 ready; 3 this machine cannot be set up by this script (not root where a step
# needs root, no apt): scripts/test.sh then lets the container tests skip with the reason; any
# other status is a real failure.
#
# Env: HYPERBENCH_DOCKER_CONFIG (default ${HYPERBENCH_CACHE:-$HOME/.cache/hyperbench}/docker),
#      HYPERBENCH_BASE_IMAGE (hyperbench/base:bookworm), DEBIAN_MIRROR (http://deb.debian.org/debian),
#      TORCH_VERSION (2.13.0), SKIP_LLAMACPP=1 (no llama wheel: the llamacpp image then compiles).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${HYPERBENCH_CACHE:-$HOME/.cache/hyperbench}"
export DOCKER_CONFIG="${HYPERBENCH_DOCKER_CONFIG:-$CACHE/docker}"
BASE_IMAGE="${HYPERBENCH_BASE_IMAGE:-hyperbench/base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TORCH="${TORCH_VERSION:-2.13.0}"
CONTEXT=containers/context

log() { echo "containers_setup: $*" >&2; }
need_root() { [[ "$(id -u)" == 0 ]] || { log "$1 needs root (or do it yourself, then re-run)"; exit 3; }; }
need_apt() { command -v apt-get >/dev/null || { log "$1 needs apt (a Debian/Ubuntu machine)"; exit 3; }; }
t0=$(date +%s)

# 1. docker.io + debootstrap ------------------------------------------------------------------
# Debian's client (/usr/bin/docker) first: the cli-plugins below are tested with it (another
# `docker` earlier on PATH may lack buildx); a workstation's own docker otherwise.
DOCKER=/usr/bin/docker
[[ -x "$DOCKER" ]] || DOCKER="$(command -v docker || echo /usr/bin/docker)"
if ! "$DOCKER" info >/dev/null 2>&1 && { [[ ! -x "$DOCKER" ]] || ! command -v dockerd >/dev/null; }; then
    need_root "installing docker.io"
    need_apt "installing docker.io"
    log "apt-get install docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq docker.io >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq docker.io >/dev/null; }
    DOCKER=/usr/bin/docker
fi
if ! "$DOCKER" info >/dev/null 2>&1; then
    need_root "starting dockerd"
    mkdir -p "$CACHE"
    log "starting dockerd (log: $CACHE/dockerd.log)"
    # its own session, so it outlives this script and the CI step that ran it
    setsid nohup dockerd >"$CACHE/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 1; done
    "$DOCKER" info >/dev/null 2>&1 || { log "dockerd did not start:"; tail -20 "$CACHE/dockerd.log" >&2; exit 1; }
fi

# 2. compose v2 + buildx as CLI plugins in a private DOCKER_CONFIG ----------------------------
plugins="$DOCKER_CONFIG/cli-plugins"
has_v2() { "$DOCKER" compose version 2>/dev/null | grep -qE 'version v?2' && "$DOCKER" buildx version >/dev/null 2>&1; }
if [[ ( ! -x "$plugins/docker-compose" || ! -x "$plugins/docker-buildx" ) ]] && ! has_v2; then
    need_apt "fetching docker-compose and docker-buildx"
    log "fetching docker-compose and docker-buildx from Debian trixie into $plugins"
    apt_dir="$(mktemp -d)"
    trap 'rm -rf "$apt_dir"' EXIT
    mkdir -p "$apt_dir"/{lists/partial,cache/archives/partial,debs,root} "$plugins"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR trixie main" \
        > "$apt_dir/sources.list"
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/nonexistent
              -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
              -o Dir::State::status=/dev/null -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
    apt-get "${apt_opts[@]}" update -qq
    (cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" download docker-compose docker-buildx -qq)
    for deb in "$apt_dir"/debs/*.deb; do dpkg-deb -x "$deb" "$apt_dir/root"; done
    install -m 0755 "$apt_dir/root/usr/libexec/docker/cli-plugins/docker-compose" \
        "$apt_dir/root/usr/libexec/docker/cli-plugins/docker-buildx" "$plugins/"
fi
has_v2 || { log "docker compose (v2) or buildx does not run with $DOCKER"; exit 1; }

# 3. the local base image -------------------------------------------------------------------
if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    need_root "debootstrap"
    if ! command -v debootstrap >/dev/null; then
        need_apt "installing debootstrap"
        apt-get install -y -qq debootstrap >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
    fi
    log "building $BASE_IMAGE with debootstrap (about half a minute)"
    rootfs="$(mktemp -d)"
    debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "$DOCKER" import -c 'CMD ["bash"]' -m "debootstrap minbase bookworm" - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
fi

# 4. wheels the images take from the build context ------------------------------------------
mkdir -p "$CONTEXT/wheels"
link() { ln -f "$1" "$CONTEXT/wheels/" 2>/dev/null || cp -f "$1" "$CONTEXT/wheels/"; }
if ! ls "$CONTEXT"/wheels/torch-"$TORCH"+cpu-*.whl >/dev/null 2>&1; then
    log "fetching the CPU torch==$TORCH wheel"
    tmp="$(mktemp -d)"
    python3 -m pip download -q --no-deps --only-binary :all: "torch==$TORCH" -d "$tmp"
    whl="$(ls "$tmp"/torch-*.whl)"
    [[ "$whl" == *+cpu* ]] || { log "the registry's torch==$TORCH is not a CPU build ($whl): put a CPU wheel in $CONTEXT/wheels"; exit 1; }
    mv "$whl" "$CONTEXT/wheels/" && rm -rf "$tmp"
fi
if [[ "${SKIP_LLAMACPP:-0}" != 1 ]]; then
    NO_INSTALL=1 bash scripts/build_llamacpp_wheel.sh >&2
    for w in "${WHEEL_DIR:-$CACHE/wheels}"/llama_cpp_python-*.whl; do
        [[ "$(cat "$w.cmake_args" 2>/dev/null)" == *GGML_CUDA=on* ]] || link "$w"  # CPU wheels only
    done
fi

log "ready in $(( $(date +%s) - t0 )) s"
cat <<EOF
export DOCKER_CONFIG=$DOCKER_CONFIG DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1 HYPERBENCH_BASE_IMAGE=$BASE_IMAGE
# then: $DOCKER compose -f compose/docker-compose.yml build
EOF
