#!/usr/bin/env bash
# Build llama.cpp's stock llama-server once, from the very llama.cpp that llama-cpp-python
# vendors (its source tarball carries tools/server), and cache the binary.
#
# The `llama-server` engine kind (backends/llama_server) runs this binary, so hyperbench can
# bench what llama.cpp users serve beside its own llamacpp engine, with the same kernels.
# Same cache and flags as scripts/build_llamacpp_wheel.sh: the tarball is the one it downloads
# (or downloads it), GGML_NATIVE=off keeps the binary portable. The web UI is not built and not
# fetched (LLAMA_USE_PREBUILT_UI=OFF: it would download from the hub). ~10 min on 2 cores.
#
# Env: HYPERBENCH_CACHE (~/.cache/hyperbench), LLAMACPP_VERSION (0.3.36), CMAKE_ARGS (for a
#      CUDA build: -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90), CMAKE_BUILD_PARALLEL_LEVEL (2),
#      PYTHON (python), LLAMACPP_SDIST (the source tarball, if not the cached one).
# Prints the binary's path last. It lands in
#   $HYPERBENCH_CACHE/llama-server/<version>-<hash of CMAKE_ARGS>/llama-server
# which is where backends/llama_server/spec.py looks (HYPERBENCH_LLAMA_SERVER overrides).
set -euo pipefail

VERSION="${LLAMACPP_VERSION:-0.3.36}"
CACHE="${HYPERBENCH_CACHE:-$HOME/.cache/hyperbench}"
PYTHON="${PYTHON:-python}"
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=off}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
SDIST="${LLAMACPP_SDIST:-$CACHE/wheels/llama_cpp_python-$VERSION.tar.gz}"  # e.g. the slim one of benchmarks/gpu
TAG="$VERSION-$(printf '%s' "$CMAKE_ARGS" | sha256sum | cut -c1-12)"
OUT="$CACHE/llama-server/$TAG"

if [[ -x "$OUT/llama-server" ]]; then
    echo "build_llama_server: using cached $OUT/llama-server" >&2
    echo "$OUT/llama-server"
    exit 0
fi
mkdir -p "$CACHE/wheels" "$CACHE/llama-server"
if [[ ! -f "$SDIST" ]]; then
    "$PYTHON" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE/wheels" >&2
fi
echo "build_llama_server: compiling llama-server of llama-cpp-python==$VERSION with CMAKE_ARGS='$CMAKE_ARGS' (minutes)..." >&2
start=$(date +%s)
# build in a private folder, then move: an interrupted build never leaves a half binary
tmp="$(mktemp -d "$CACHE/llama-server/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$SDIST" -C "$tmp" "llama_cpp_python-$VERSION/vendor/llama.cpp"
src="$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp"
# shellcheck disable=SC2086  # CMAKE_ARGS is a list of flags
cmake -S "$src" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    $CMAKE_ARGS >&2
cmake --build "$tmp/build" --target llama-server -j "$CMAKE_BUILD_PARALLEL_LEVEL" >&2
mkdir -p "$tmp/out"
cp "$tmp/build/bin/llama-server" "$tmp/out/"
printf '%s' "$CMAKE_ARGS" > "$tmp/out/cmake_args"
rm -rf "$OUT"
mv "$tmp/out" "$OUT"
echo "build_llama_server: built $OUT/llama-server in $(( $(date +%s) - start )) s" >&2
echo "$OUT/llama-server"
