#!/usr/bin/env bash
# Run where pip reaches a registry: gather what a GPU node with only torch + transformers lacks
# (the lent H100 has Python 3.12, torch, transformers, no internet) into one folder to carry:
#   - wheels of the harness's light dependencies and bitsandbytes (py3.12, manylinux x86_64)
#   - llama-cpp-python's source tarball, slimmed of llama.cpp's models/docs/media/benches
#     (76 MB -> ~12 MB); it is built there with CUDA (benchmarks/gpu/run.sh setup) and its
#     convert_hf_to_gguf.py makes the GGUFs.
#   - in DIR/fa2/: flash-attn's source tarball cut to a head-dim-128 inference build
#     (slim_flash_attn.py: 8.4 -> 2.5 MB, minutes to compile) and the wheels its build needs
#     (ninja, wheel, einops); built there by `run.sh fa2 DIR`. Reading flash-attn's metadata
#     imports torch, so this part needs torch installed here (FA2=0 skips it).
# Usage: benchmarks/gpu/prepare.sh DIR [--no-bnb]
#   BNB_CUDA=130: keep only bitsandbytes' library for that CUDA (+ CPU): 43 MB -> 3.6 MB to carry
set -euo pipefail
DIR=${1:?usage: prepare.sh DIR [--no-bnb]}
mkdir -p "$DIR"
cd "$(dirname "$0")/../.."
PLAT=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
# versions = what the harness is tested with here (pydantic-core pinned by pydantic)
PKGS=(pydantic==2.13.4 pydantic-core==2.46.4 annotated-types typing-extensions typing-inspection
      fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 opentelemetry-api diskcache gguf)
[[ "${2:-}" == --no-bnb ]] || PKGS+=(bitsandbytes==0.50.2)
python3 -m pip download -q --no-deps --only-binary=:all: "${PLAT[@]}" -d "$DIR" "${PKGS[@]}"
if [[ -n "${BNB_CUDA:-}" ]] && ls "$DIR"/bitsandbytes-*.whl >/dev/null 2>&1; then
  # a wheel is a zip: drop the other CUDA/ROCm/XPU builds (pip installs what is left)
  whl=("$DIR"/bitsandbytes-*.whl)
  (( ${#whl[@]} == 1 )) || { echo "prepare.sh: several bitsandbytes wheels in $DIR" >&2; exit 2; }
  unzip -Z1 "$whl" | grep -qx "bitsandbytes/libbitsandbytes_cuda${BNB_CUDA}\.so" \
    || { echo "prepare.sh: $whl has no libbitsandbytes_cuda${BNB_CUDA}.so (BNB_CUDA=130 for CUDA 13.0)" >&2; exit 2; }
  drop=$(unzip -Z1 "$whl" | grep -E 'libbitsandbytes_(cuda|rocm|xpu)' | grep -v "libbitsandbytes_cuda${BNB_CUDA}\.so" || true)
  [[ -z "$drop" ]] || zip -q -d "$whl" $drop
fi

SDIST=llama_cpp_python-0.3.36.tar.gz
if [[ ! -f "$DIR/$SDIST" ]]; then
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp" llama-cpp-python==0.3.36
  tar -C "$tmp" -xzf "$tmp/$SDIST"
  v="$tmp/llama_cpp_python-0.3.36/vendor/llama.cpp"
  rm -rf "$v/models" "$v/docs" "$v/media" "$v/benches" "$v/.git" "$tmp/llama_cpp_python-0.3.36/.git"
  mkdir -p "$v/models"  # CMake globs nothing there when tests/examples are off
  tar -C "$tmp" -czf "$DIR/$SDIST" llama_cpp_python-0.3.36
  rm -rf "$tmp"
fi
FA=flash_attn-2.8.3.tar.gz
if [[ "${FA2:-1}" != 0 && ! -f "$DIR/fa2/$FA" ]]; then
  tmp=$(mktemp -d)
  mkdir -p "$DIR/fa2"
  FLASH_ATTENTION_SKIP_CUDA_BUILD=TRUE python3 -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
    -d "$tmp" flash-attn==2.8.3
  python3 benchmarks/gpu/slim_flash_attn.py "$tmp/$FA" "$DIR/fa2/$FA"
  python3 -m pip download -q --no-deps --only-binary=:all: "${PLAT[@]}" -d "$DIR/fa2" ninja wheel einops
  rm -rf "$tmp"
fi
du -sh "$DIR"/* | sort -h
