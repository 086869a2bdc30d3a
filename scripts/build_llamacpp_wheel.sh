#!/usr/bin/env bash
# Build llama-cpp-python once as a wheel, cache it, and install it with its server extras.
#
# llama-cpp-python is source-only on the registry and takes ~5 minutes to compile on 2 cores,
# so CI calls this before the tests: the first run compiles, later runs install the cached wheel
# in seconds. GGML_NATIVE=off keeps the wheel portable across the CPUs of a CI fleet (no
# -march=native); LLAVA_BUILD=off skips the multimodal helper library we never use.
# The source tarball stays beside the wheel: backends/llamacpp/gguf.py takes llama.cpp's
# HF->GGUF converter from it, so conversion works later without the network.
#
# Env: WHEEL_DIR (default ${HYPERBENCH_CACHE:-$HOME/.cache/hyperbench}/wheels),
#      LLAMACPP_VERSION (0.3.36), CMAKE_ARGS, CMAKE_BUILD_PARALLEL_LEVEL (2), PYTHON (python),
#      NO_INSTALL=1 to build/cache only.
# A wheel is reused only if it was built with the same CMAKE_ARGS (recorded beside it), so a
# CUDA build and a CPU build never stand in for each other.
set -euo pipefail

VERSION="${LLAMACPP_VERSION:-0.3.36}"
WHEEL_DIR="${WHEEL_DIR:-${HYPERBENCH_CACHE:-$HOME/.cache/hyperbench}/wheels}"
PYTHON="${PYTHON:-python}"
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=off -DLLAVA_BUILD=off}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
SDIST="$WHEEL_DIR/llama_cpp_python-$VERSION.tar.gz"
mkdir -p "$WHEEL_DIR"

find_wheel() {
    # llama-cpp-python loads its library through ctypes, so the wheel is tagged
    # py3-none-<platform>: llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl
    local w
    for w in "$WHEEL_DIR"/llama_cpp_python-"$VERSION"-*"$(uname -m)".whl; do
        [[ -f "$w" && "$(cat "$w.cmake_args" 2>/dev/null)" == "$CMAKE_ARGS" ]] && { echo "$w"; return; }
    done
    return 0
}

wheel="$(find_wheel)"
if [[ -n "$wheel" ]]; then
    echo "build_llamacpp_wheel: using cached $wheel"
else
    if [[ ! -f "$SDIST" ]]; then
        "$PYTHON" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WHEEL_DIR"
    fi
    echo "build_llamacpp_wheel: compiling llama-cpp-python==$VERSION with CMAKE_ARGS='$CMAKE_ARGS' (minutes)..."
    start=$(date +%s)
    # build into a private folder, then move: an interrupted build never leaves a half wheel
    tmp="$(mktemp -d "$WHEEL_DIR/.build.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    "$PYTHON" -m pip wheel --no-deps "$SDIST" -w "$tmp"
    built="$(ls "$tmp"/llama_cpp_python-*.whl)"
    printf '%s' "$CMAKE_ARGS" > "$tmp/args"
    mv "$tmp/args" "$WHEEL_DIR/$(basename "$built").cmake_args"
    mv "$built" "$WHEEL_DIR/"
    wheel="$(find_wheel)"
    echo "build_llamacpp_wheel: built $wheel in $(( $(date +%s) - start )) s"
fi

if [[ "${NO_INSTALL:-0}" != "1" ]]; then
    # the wheel, then the [server] extra's dependencies: pip sees 0.3.36 already installed and
    # does not rebuild it
    "$PYTHON" -m pip install --no-deps --force-reinstall "$wheel"
    "$PYTHON" -m pip install "llama-cpp-python[server]==$VERSION" "gguf>=0.10"
fi
