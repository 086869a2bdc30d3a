#!/usr/bin/env bash
# Run where pip reaches a registry: gather vLLM 0.26.0 for a GPU node that has torch 2.11 (CUDA 13)
# but no vLLM and no network (the lent H100), and cut it into parts small enough to carry one per
# call (the device tool carries 64 MiB a call). benchmarks/gpu/stage_vllm.sh puts them together
# there, resumably: a part already there (same sha256) is not needed again.
#
#   benchmarks/gpu/prepare_vllm.sh DIR        # -> DIR/p00/part-00 ... DIR/pNN/part-NN, DIR/SHA256SUMS
#
# What goes: the vllm wheel less what Hopper never loads (FlashAttention-2's library: Hopper runs
# FA3 from _vllm_fa3_C; the vllm-rs binary; deep_gemm builds for other Pythons; Blackwell's
# fmha_sm100 sources), and the ~60 small packages the node lacks (py3.12 manylinux wheels,
# --no-deps; versions that import together, measured 2026-12-06: newer mcp/anthropic/openai need
# a package named httpx2, xgrammar 0.2.9 needs apache-tvm-ffi >= 0.1.11 although vLLM pins 0.1.10).
set -euo pipefail
DIR=${1:?usage: prepare_vllm.sh DIR}
PART_MB=${PART_MB:-60}
mkdir -p "$DIR/wheels"
PLAT=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_31_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
DEPS=(annotated-types anthropic==0.71.0 'apache-tvm-ffi>=0.1.11' astor blake3 cachetools cbor2 compressed-tensors==0.17.0
      depyf==0.20.0 dill distro docstring-parser 'fastapi<0.137' gguf httptools httpx-sse ijson importlib-metadata
      interegular jiter jmespath jsonschema jsonschema-specifications lark==1.2.2 'llguidance<1.8'
      lm-format-enforcer==0.11.3 loguru 'mcp<1.30' mistral-common model-hosting-container-standards msgspec nvtx
      'openai<3' openai-harmony opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions
      opentelemetry-semantic-conventions-ai outlines-core==0.2.14 partial-json-parser prometheus-fastapi-instrumentator
      pybase64 pycountry pydantic pydantic-extra-types pydantic-settings pyjwt python-dotenv python-json-logger
      python-multipart pyzmq referencing rpds-py setproctitle sniffio sse-starlette starlette supervisor
      typing-inspection uvicorn watchfiles websockets xgrammar)
W="$DIR/wheels"
if ! ls "$W"/vllm-0.26.0-*.whl >/dev/null 2>&1; then
  python3 -m pip download -q --no-deps --only-binary=:all: "${PLAT[@]}" -d "$W" vllm==0.26.0
  drop=$(unzip -Z1 "$W"/vllm-0.26.0-*.whl | grep -E '^vllm/(vllm_flash_attn/_vllm_fa2_C|vllm-rs$|third_party/fmha_sm100/)|deep_gemm/_C\.cpython-3(10|11|13|14)' || true)
  [[ -z "$drop" ]] || zip -q -d "$W"/vllm-0.26.0-*.whl $drop
fi
python3 -m pip download -q --no-deps --only-binary=:all: "${PLAT[@]}" -d "$W" "${DEPS[@]}"
# pydantic-core: exactly the one the downloaded pydantic pins
pc=$(unzip -p "$W"/pydantic-2*.whl '*/METADATA' | sed -n 's/^Requires-Dist: \(pydantic-core==[^ ;]*\).*/\1/p')
python3 -m pip download -q --no-deps --only-binary=:all: "${PLAT[@]}" -d "$W" "$pc"
# one version of each (pip download may leave an older one from an earlier run)
ls "$W" | sed -E 's/-[0-9][^-]*-.*//' | sort | uniq -d | while read -r dup; do
  echo "prepare_vllm.sh: several wheels of $dup in $W: remove the old one" >&2; exit 2; done
# one tar (wheels are compressed already), cut into parts; each part in a folder of its own so a
# call can carry exactly one
rm -rf "$DIR"/p[0-9][0-9]
tar -C "$W" -cf "$DIR/vllm-wheels.tar" .
( cd "$DIR" && split -b "${PART_MB}M" -d vllm-wheels.tar part- && rm vllm-wheels.tar
  for p in part-*; do n=${p#part-}; mkdir -p "p$n"; mv "$p" "p$n/"; done
  sha256sum p*/part-* | sed 's#  p[0-9]*/#  #' > SHA256SUMS )
du -sh "$DIR"/p* "$W"; cat "$DIR/SHA256SUMS"
