#!/usr/bin/env bash
# The GPU matrix, in stages that each fit one short session on a GPU node (state lives in
# $GPU_DIR between stages). Every number comes from `hyperbench bench` (the same client,
# metrics, NVML telemetry and roofline as any run); this script only prepares and sequences.
#
#   benchmarks/gpu/prepare.sh CARRY          # where pip reaches a registry (wheels + slim sdist)
#   benchmarks/gpu/run.sh setup   CARRY      # install them; build llama-cpp-python with CUDA
#   benchmarks/gpu/run.sh models             # Llama-2-7B-shaped dummy checkpoint + GGUFs
#   benchmarks/gpu/run.sh llamacpp           # llama.cpp F16 / Q8_0 / Q4_K_M, batch 1 and 4
#   benchmarks/gpu/run.sh raw                # llama.cpp decode speed without the server
#   benchmarks/gpu/run.sh hf                 # HF engine bf16 at concurrency 1, 8, 32
#   benchmarks/gpu/run.sh bnb     CARRY      # HF engine + bitsandbytes NF4 (graphs; BNB_EAGER=1 eager too) / INT8
#   benchmarks/gpu/run.sh spec               # HF speculative decoding, a draft that agrees (make_dummy.py)
#                                            # (SPEC_EAGER=1: the same again with --enforce-eager)
#   benchmarks/gpu/run.sh llamacpp-spec      # llama.cpp with a draft model (the same target and draft, GGUF)
#   benchmarks/gpu/run.sh fa2     CARRY      # build flash-attn (slim, prepare.sh); HF engine FA2 vs SDPA
#   benchmarks/gpu/run.sh vllm               # vLLM 0.26 (stage_vllm.sh installs it): bf16 sweeps, Poisson rates,
#                                            # FP8, INT8 W8A8 / AWQ (dummy weights), n-gram and draft speculation
#   benchmarks/gpu/run.sh clients            # one vLLM server, `vllm bench serve` vs `hyperbench bench --url`
#   benchmarks/gpu/run.sh spec-models        # speculation target + draft (target = the model too, if none yet)
#   benchmarks/gpu/run.sh llamacpp-build CARRY # one CUDA build: llama-cpp-python's libraries + llama-server
#   benchmarks/gpu/run.sh ggufs              # the compare stage's GGUFs, into the engine's cache, ahead of time
#   benchmarks/gpu/run.sh compare            # `hyperbench compare --engines hf,vllm,vllm:fp8,llamacpp:...` (one report)
#   benchmarks/gpu/run.sh bandwidth          # only measure the copy bandwidth (setup does it too)
#   benchmarks/gpu/run.sh table              # markdown table of every run so far
#
# Env: GPU_DIR (default .gpu), OUT (where logs and a results tarball are copied, if set),
#      PY (python with torch+CUDA, default python3), JOBS (build jobs, default nproc).
# Workload of every run: synthetic token-id prompts of 128 tokens, exactly 128 output tokens
# (min_tokens + ignore_eos), greedy, one warm-up request.
set -euo pipefail
cd "$(dirname "$0")/../.."
GPU_DIR=$(realpath -m "${GPU_DIR:-.gpu}")
PY=${PY:-python3}
SITE="$GPU_DIR/site"
mkdir -p "$GPU_DIR"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HYPERBENCH_CACHE="$GPU_DIR/cache" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
SHAPE=${SHAPE:-llama2-7b}  # "test": the same pipeline on a small shape, on a CPU
MODEL="$GPU_DIR/models/$SHAPE"
RESULTS="$GPU_DIR/results"
WORK=(--input-len 128 --output-len 128 --temperature 0 --warmup 1 --results-dir "$RESULTS" --no-plots)

log() { echo "[gpu $(date +%T)] $*"; }
# llama-server from the llamacpp-build stage (the llama-server engine kind runs it)
[[ -x "$GPU_DIR/llama-build/bin/llama-server" ]] && export HYPERBENCH_LLAMA_SERVER="$GPU_DIR/llama-build/bin/llama-server"


bandwidth() {  # device-to-device copy rate (read + write bytes / s), capped at the spec value
  "$PY" - <<'EOF'
import torch
x = torch.empty(2**31, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record()
for _ in range(20): y.copy_(x)
e.record(); torch.cuda.synchronize()
print(f"{2 * x.numel() * 20 / (s.elapsed_time(e) / 1e3) / 1e9:.0f}")
EOF
}

bench() {  # bench NAME ARGS... : one run folder named NAME (skipped when already complete)
  local name=$1; shift
  if [[ -f "$RESULTS/$name/summary.json" ]] && grep -q '"status": "complete"' "$RESULTS/$name/summary.json"; then
    log "$name: done already"; return 0
  fi
  rm -rf "${RESULTS:?}/$name"
  log "bench $name"
  "$PY" -m harness.cli bench --run-name "$name" "${WORK[@]}" "$@" || log "$name FAILED (rc $?)"
}

spec_models() {  # the speculation target (layers >= $1 add nothing, at full cost) and its $1-layer draft
  "$PY" benchmarks/gpu/make_dummy.py --shape "$SHAPE" --out "$MODEL-spec$1" --device "${MAKE_DEVICE:-cuda}" --identity-after "$1"
  "$PY" benchmarks/gpu/make_dummy.py --draft-of "$MODEL-spec$1" --layers "$1" --out "$MODEL-draft$1"
}

gguf() {  # gguf HF_DIR OUT.gguf TYPE: convert (f16) and quantize with llama.cpp's own tools, once
  "$PY" - "$@" <<'EOF'
import sys, time
from pathlib import Path
from backends.llamacpp.gguf import convert_hf, quantize
model, out, q = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if not out.is_file():
    t = time.perf_counter()
    f16 = out.with_name(out.stem + "-f16.gguf") if q != "f16" else out
    if not f16.is_file():
        convert_hf(model, f16.with_suffix(".tmp"), "f16"); f16.with_suffix(".tmp").rename(f16)
    if q != "f16":
        quantize(f16, out.with_suffix(".tmp"), q); out.with_suffix(".tmp").rename(out); f16.unlink()
    print(f"{out.name} in {time.perf_counter() - t:.0f} s", flush=True)
EOF
}

collect() {
  [[ -n "${OUT:-}" ]] || return 0
  tar -C "$GPU_DIR" -czf "$OUT/gpu_results.tgz" --exclude='records.jsonl' results 2>/dev/null || true
  "$PY" benchmarks/gpu/table.py "$RESULTS" > "$OUT/gpu_table.md" 2>&1 || true
}
trap collect EXIT

vllm_env() {  # the vLLM that stage_vllm.sh put in $SITE; no flashinfer carried: its sampler off
  export HYPERBENCH_VLLM_PYTHON=$(command -v "$PY") VLLM_USE_FLASHINFER_SAMPLER=0
  [[ -f "$GPU_DIR/bandwidth_gbs" ]] || bandwidth > "$GPU_DIR/bandwidth_gbs"
  export HYPERBENCH_GPU_BANDWIDTH_GBS=$(cat "$GPU_DIR/bandwidth_gbs")
}

wait_for() {  # wait_for FILE SECONDS: a file another stage (in the background) writes last
  local i; for ((i = 0; i < $2; i += 5)); do [[ -e "$1" ]] && return 0; sleep 5; done
  log "gave up waiting for $1"; return 1
}

config_only() {  # config_only OUT [make_dummy args]: a config + tokenizer folder (vLLM --load-format dummy)
  local out=$1; shift
  "$PY" benchmarks/gpu/make_dummy.py --shape "$SHAPE" --out "$out" --config-only "$@"
}

quant_config() {  # quant_config DIR int8|awq: declare a quantized checkpoint (vLLM fills dummy weights of that format)
  "$PY" - "$@" <<'EOF2'
import json, sys
from pathlib import Path
cfg_path = Path(sys.argv[1]) / "config.json"
cfg = json.loads(cfg_path.read_text())
if sys.argv[2] == "int8":  # what llm-compressor writes for W8A8 INT8 (per-channel weights, per-token dynamic activations)
    q = {"quant_method": "compressed-tensors", "format": "int-quantized", "quantization_status": "compressed",
         "ignore": ["lm_head"], "config_groups": {"group_0": {"targets": ["Linear"],
         "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False},
         "input_activations": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}}}}
else:  # AutoAWQ's GEMM format, 4-bit, group 128
    q = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}
cfg["quantization_config"] = q
cfg_path.write_text(json.dumps(cfg, indent=2))
EOF2
}

case "${1:?stage: setup|models|llamacpp|raw|hf|bnb|spec|llamacpp-spec|fa2|bandwidth|table}" in
setup)
  CARRY=${2:?setup needs the folder prepare.sh filled}
  mkdir -p "$SITE" "$GPU_DIR/wheels" "$HYPERBENCH_CACHE/wheels"
  cp "$CARRY"/llama_cpp_python-*.tar.gz "$HYPERBENCH_CACHE/wheels/"  # llama.cpp's GGUF converter
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$CARRY"/*.whl
  if ! ls "$GPU_DIR"/wheels/llama_cpp_python-*.whl >/dev/null 2>&1; then
    log "building llama-cpp-python with CUDA (sm_90)"
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90}" CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-$(nproc)} \
      "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$GPU_DIR/wheels" "$CARRY"/llama_cpp_python-*.tar.gz
  fi
  "$PY" -m pip install -q --no-index --no-deps --upgrade --target "$SITE" "$GPU_DIR"/wheels/llama_cpp_python-*.whl
  bandwidth > "$GPU_DIR/bandwidth_gbs" && log "copy bandwidth $(cat "$GPU_DIR/bandwidth_gbs") GB/s"
  "$PY" -c "import llama_cpp, fastapi, pydantic; print('llama_cpp', llama_cpp.__version__, 'gpu offload', llama_cpp.llama_supports_gpu_offload())"
  ;;
models)
  "$PY" benchmarks/gpu/make_dummy.py --shape "$SHAPE" --out "$MODEL" --device "${MAKE_DEVICE:-cuda}"
  "$PY" - "$MODEL" "$GPU_DIR/gguf" "${MAKE_QUANTS-q8_0 q4_k_m}" <<'EOF'
import sys, time
from pathlib import Path
from backends.llamacpp.gguf import convert_hf, quantize
model, out = Path(sys.argv[1]), Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
t = time.perf_counter()
if not (out / "f16.gguf").is_file():
    convert_hf(model, out / "f16.tmp", "f16"); (out / "f16.tmp").rename(out / "f16.gguf")
print(f"f16 in {time.perf_counter() - t:.0f} s", flush=True)
for q in sys.argv[3].split():
    if not (out / f"{q}.gguf").is_file():
        t = time.perf_counter()
        quantize(out / "f16.gguf", out / f"{q}.tmp", q); (out / f"{q}.tmp").rename(out / f"{q}.gguf")
        print(f"{q} in {time.perf_counter() - t:.0f} s", flush=True)
EOF
  ls -la "$GPU_DIR/gguf"
  ;;
llamacpp)
  [[ -f "$GPU_DIR/bandwidth_gbs" ]] && export HYPERBENCH_GPU_BANDWIDTH_GBS=$(cat "$GPU_DIR/bandwidth_gbs")
  for q in ${QUANTS:-q4_k_m q8_0 f16}; do
    bench "llamacpp-$q-c1" --engine llamacpp --model "$GPU_DIR/gguf/$q.gguf" --tokenizer "$MODEL" --n-gpu-layers -1 --flash-attn \
      --concurrency 1 --num-requests 8
  done
  ;;
raw)  # llama.cpp's own decode speed, no server (the floor of the engine's TPOT)
  "$PY" benchmarks/gpu/llamacpp_raw.py "$GPU_DIR"/gguf/{q4_k_m,q8_0,f16}.gguf | tee "${OUT:-$GPU_DIR}/llamacpp_raw.txt"
  ;;
hf)
  [[ -f "$GPU_DIR/bandwidth_gbs" ]] && export HYPERBENCH_GPU_BANDWIDTH_GBS=$(cat "$GPU_DIR/bandwidth_gbs")
  # CUDA graphs over a static KV cache (the engine's default on a GPU), then eager (--enforce-eager)
  bench hf-bf16-c1 --engine hf --model "$MODEL" --dtype bfloat16 --device "${HF_DEVICE:-cuda}" --concurrency 1 --num-requests 8
  bench hf-bf16-c8-32 --engine hf --model "$MODEL" --dtype bfloat16 --device "${HF_DEVICE:-cuda}" --max-batch-size 32 \
    --concurrency 8,32 --num-requests 64
  bench hf-eager-bf16-c1 --engine hf --model "$MODEL" --dtype bfloat16 --device "${HF_DEVICE:-cuda}" --enforce-eager \
    --concurrency 1 --num-requests 8
  if [[ -n "${HF_EAGER_BATCH:-}" ]]; then
    bench hf-eager-bf16-c8-32 --engine hf --model "$MODEL" --dtype bfloat16 --device "${HF_DEVICE:-cuda}" --enforce-eager \
      --max-batch-size 32 --concurrency 8,32 --num-requests 64
  fi
  ;;
bnb)
  CARRY=${2:?bnb needs the folder holding the bitsandbytes wheel}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$CARRY"/bitsandbytes-*.whl
  [[ -f "$GPU_DIR/bandwidth_gbs" ]] && export HYPERBENCH_GPU_BANDWIDTH_GBS=$(cat "$GPU_DIR/bandwidth_gbs")
  # NF4 decodes through CUDA graphs (the engine's default; bitsandbytes' gemv at one row, its
  # dequantize + matmul above), then eagerly; INT8 always eagerly (graphs.py says why)
  # (BNB_MODEL: another checkpoint of the shape, e.g. the spec stage's target: same bytes, same speed)
  M=${BNB_MODEL:-$MODEL}
  bench hf-nf4-c1 --engine hf --model "$M" --dtype bfloat16 --device "${HF_DEVICE:-cuda}" --quant nf4 --concurrency 1 --num-requests 8
  bench hf-nf4-c8 --engine hf --model "$M" --dtype bfloat16 --device "${HF_DEVICE:-cuda}" --quant nf4 --concurrency 8 --num-requests 16
  if [[ -n "${BNB_EAGER:-}" ]]; then
    bench hf-eager-nf4-c1 --engine hf --model "$M" --dtype bfloat16 --device "${HF_DEVICE:-cuda}" --quant nf4 --enforce-eager \
      --concurrency 1 --num-requests 4
  fi
  bench hf-int8-c1 --engine hf --model "$M" --dtype bfloat16 --device "${HF_DEVICE:-cuda}" --quant int8 --concurrency 1 \
    --num-requests 2 --output-len 64
  ;;
spec)  # target: SHAPE with layers >= SPEC_LAYERS zeroed (same cost); draft: its first SPEC_LAYERS
  [[ -f "$GPU_DIR/bandwidth_gbs" ]] && export HYPERBENCH_GPU_BANDWIDTH_GBS=$(cat "$GPU_DIR/bandwidth_gbs")
  L=${SPEC_LAYERS:-2}
  if (( $(df --output=avail -B1G "$GPU_DIR" | tail -1) < 20 )) && [[ -f "$GPU_DIR/gguf/f16.gguf" ]]; then
    log "disk: removing gguf/f16.gguf to make room for the speculative target"; rm -f "$GPU_DIR/gguf/f16.gguf"
  fi
  spec_models "$L"
  # the no-speculation run is measured here on its own (bench's own baseline run is skipped if it has one)
  NOBASE=(); "$PY" -m harness.cli bench --help | grep -q -- --no-spec-baseline && NOBASE=(--no-spec-baseline)
  # both models decode through CUDA graphs (the engine's default); SPEC_EAGER=1 adds --enforce-eager runs
  modes=(graphs); [[ -n "${SPEC_EAGER:-}" ]] && modes+=(eager)
  for mode in "${modes[@]}"; do
    p=hf; EAGER=()
    [[ $mode == eager ]] && { p=hf-eager; EAGER=(--enforce-eager); }
    for c in ${SPEC_CONCURRENCY:-1 8}; do
      bench "$p-nospec-c$c" --engine hf --model "$MODEL-spec$L" --dtype bfloat16 --device "${HF_DEVICE:-cuda}" \
        --concurrency "$c" --num-requests $((c * 4)) "${EAGER[@]}"
      bench "$p-spec-k${SPEC_K:-4}-c$c" --engine hf --model "$MODEL-spec$L" --dtype bfloat16 --device "${HF_DEVICE:-cuda}" \
        --speculative "draft:$MODEL-draft$L" --num-speculative-tokens "${SPEC_K:-4}" --assistant-confidence-threshold 0 \
        --concurrency "$c" --num-requests $((c * 4)) "${NOBASE[@]}" "${EAGER[@]}"
    done
  done
  ;;
llamacpp-spec)  # llama.cpp with a draft model: the spec stage's target and draft as GGUFs of one type
  [[ -f "$GPU_DIR/bandwidth_gbs" ]] && export HYPERBENCH_GPU_BANDWIDTH_GBS=$(cat "$GPU_DIR/bandwidth_gbs")
  L=${SPEC_LAYERS:-2}
  spec_models "$L"
  mkdir -p "$GPU_DIR/gguf-spec"
  for q in ${SPEC_QUANTS:-q8_0}; do
    gguf "$MODEL-spec$L" "$GPU_DIR/gguf-spec/$SHAPE-target$L-$q.gguf" "$q"
    gguf "$MODEL-draft$L" "$GPU_DIR/gguf-spec/$SHAPE-draft$L-$q.gguf" "$q"
    CPP=(--engine llamacpp --model "$GPU_DIR/gguf-spec/$SHAPE-target$L-$q.gguf" --tokenizer "$MODEL-spec$L" --n-gpu-layers -1 --flash-attn)
    bench "llamacpp-$q-nospec-c1" "${CPP[@]}" --concurrency 1 --num-requests 4
    bench "llamacpp-$q-spec-k${SPEC_K:-4}-c1" "${CPP[@]}" --speculative "draft:$GPU_DIR/gguf-spec/$SHAPE-draft$L-$q.gguf" \
      --num-speculative-tokens "${SPEC_K:-4}" --concurrency 1 --num-requests 4 --no-spec-baseline
  done
  ;;
fa2)  # FlashAttention-2 against SDPA in the hf engine (bf16): flash-attn built here from prepare.sh's slim sdist
  CARRY=${2:?fa2 needs the folder prepare.sh filled}
  mkdir -p "$SITE" "$GPU_DIR/wheels"
  # the harness's light dependencies (as setup installs them) and flash-attn's build tools (ninja, wheel, einops)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$CARRY"/*.whl "$CARRY"/fa2/{ninja,wheel,einops}-*.whl
  # a wheel built here before (the stage copies it to $OUT: put it in CARRY/fa2/ to skip the build)
  ls "$CARRY"/fa2/flash_attn-*.whl >/dev/null 2>&1 && cp "$CARRY"/fa2/flash_attn-*.whl "$GPU_DIR/wheels/"
  if ! ls "$GPU_DIR"/wheels/flash_attn-*.whl >/dev/null 2>&1; then
    log "building flash-attn (head dim 128, sm_${CUDA_ARCH:-90}, ${JOBS:-$(nproc)} jobs; log: $GPU_DIR/fa2_build.log)"
    t=$SECONDS
    if ! PATH="$SITE/bin:$PATH" FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTN_CUDA_ARCHS=${CUDA_ARCH:-90} \
        MAX_JOBS=${JOBS:-$(nproc)} NVCC_THREADS=${NVCC_THREADS:-2} \
        "$PY" -m pip wheel -v --no-deps --no-build-isolation -w "$GPU_DIR/wheels" "$CARRY"/fa2/flash_attn-*.tar.gz \
        > "$GPU_DIR/fa2_build.log" 2>&1; then
      grep -m 20 -E "error|Error" "$GPU_DIR/fa2_build.log" || true; tail -20 "$GPU_DIR/fa2_build.log"
      [[ -n "${OUT:-}" ]] && cp "$GPU_DIR/fa2_build.log" "$OUT/"
      log "flash-attn build FAILED"; exit 1
    fi
    log "flash-attn built in $((SECONDS - t)) s: $(ls "$GPU_DIR"/wheels/flash_attn-*.whl)"
    [[ -n "${OUT:-}" ]] && cp "$GPU_DIR"/wheels/flash_attn-*.whl "$OUT/"
  fi
  "$PY" -m pip install -q --no-index --no-deps --upgrade --target "$SITE" "$GPU_DIR"/wheels/flash_attn-*.whl
  "$PY" -c "import flash_attn, flash_attn_2_cuda; print('flash_attn', flash_attn.__version__)"
  [[ -n "${FA2_BUILD_ONLY:-}" ]] && exit 0
  [[ -f "$MODEL/config.json" ]] || "$PY" benchmarks/gpu/make_dummy.py --shape "$SHAPE" --out "$MODEL" --device "${MAKE_DEVICE:-cuda}"
  [[ -f "$GPU_DIR/bandwidth_gbs" ]] || bandwidth > "$GPU_DIR/bandwidth_gbs"
  export HYPERBENCH_GPU_BANDWIDTH_GBS=$(cat "$GPU_DIR/bandwidth_gbs")
  HF=(--engine hf --model "$MODEL" --dtype bfloat16 --device "${HF_DEVICE:-cuda}")
  runs=" ${FA2_RUNS:-eager long graphs} "  # which of the three comparisons
  for attn in sdpa flash_attention_2; do
    a=sdpa; [[ $attn == flash_attention_2 ]] && a=fa2
    # eager decoding: every step's attention is the chosen kernel
    if [[ $runs == *" eager "* ]]; then
      for c in ${FA2_CONCURRENCY:-1 8}; do
        bench "hf-eager-$a-c$c" "${HF[@]}" --attn "$attn" --enforce-eager --concurrency "$c" --num-requests $((c * 4))
      done
    fi
    # long prompts: prefill (always eager, the chosen kernel) dominates
    if [[ $runs == *" long "* ]]; then
      bench "hf-$a-long-c1" "${HF[@]}" --attn "$attn" --input-len "${FA2_LONG:-3968}" --output-len 32 \
        --concurrency 1 --num-requests 4
    fi
    # the engine's default on a GPU: prefill by the chosen kernel, graphed decode steps by SDPA
    if [[ $runs == *" graphs "* ]]; then
      bench "hf-$a-c8" "${HF[@]}" --attn "$attn" --concurrency 8 --num-requests 32
    fi
  done
  ;;
bandwidth)  # only the copy-bandwidth measurement setup makes (the roofline's denominator)
  bandwidth > "$GPU_DIR/bandwidth_gbs" && log "copy bandwidth $(cat "$GPU_DIR/bandwidth_gbs") GB/s"
  ;;
vllm)
  vllm_env
  CFG="$MODEL-config"; config_only "$CFG"
  V=(--engine vllm --model "$CFG" --load-format dummy --dtype bfloat16)
  if [[ "${VLLM_SWEEPS:-1}" != 0 ]]; then  # VLLM_SWEEPS=0: only the checkpoint quantizations and speculation
    bench vllm-bf16-c1 "${V[@]}" --concurrency 1 --num-requests 16
    bench vllm-bf16-c8-64 "${V[@]}" --concurrency 8,32,64 --num-requests 256
    bench vllm-bf16-rate "${V[@]}" --rate 4,16,64,inf --num-requests 128
    bench vllm-fp8-c1 "${V[@]}" --quant fp8 --concurrency 1 --num-requests 16
    bench vllm-fp8-c8-64 "${V[@]}" --quant fp8 --concurrency 8,32,64 --num-requests 256
  fi
  for q in ${VLLM_CHECKPOINT_QUANTS-int8 awq}; do
    [[ -f "$CFG-$q/config.json" ]] || { config_only "$CFG-$q"; quant_config "$CFG-$q" "$q"; }
    bench "vllm-$q-c1-32" --engine vllm --model "$CFG-$q" --load-format dummy --dtype bfloat16 --quant "$q" \
      --concurrency 1,32 --num-requests 32
  done
  if [[ -z "${VLLM_NO_SPEC:-}" ]]; then
    # n-gram: dummy weights decode a repeating sequence, so prompt lookup always hits (acceptance ~1):
    # what vLLM's n-gram path costs at best, not what real text gets
    bench vllm-ngram-c1 "${V[@]}" --speculative ngram --num-speculative-tokens 4 --concurrency 1 --num-requests 16
    # a draft that agrees with its target (make_dummy --identity-after: real weight files, both)
    L=${SPEC_LAYERS:-2}; wait_for "$MODEL-draft$L/DUMMY_WEIGHTS.json" 300; spec_models "$L"
    bench vllm-nospec-real-c1 --engine vllm --model "$MODEL-spec$L" --dtype bfloat16 --concurrency 1 --num-requests 16
    bench vllm-draft-k4-c1 --engine vllm --model "$MODEL-spec$L" --dtype bfloat16 --speculative "draft:$MODEL-draft$L" \
      --num-speculative-tokens 4 --concurrency 1 --num-requests 16 --no-spec-baseline
  fi
  ;;
clients)  # the same vLLM server measured by both clients, with the tiny and with a real tokenizer
  vllm_env
  CFG="$MODEL-config"; config_only "$CFG"
  "$PY" benchmarks/gpu/two_clients.py --model "$CFG" --load-format dummy --rounds "${ROUNDS:-2}" \
    --work "$RESULTS/clients-tinytok" --out "${OUT:-$GPU_DIR}/clients-tinytok.json"
  if [[ -n "${SMOL_TOKENIZER:-}" ]]; then  # e.g. a folder holding smollm2-135m's tokenizer files
    config_only "$MODEL-smoltok" --tokenizer "$SMOL_TOKENIZER" --vocab 49152
    "$PY" benchmarks/gpu/two_clients.py --model "$MODEL-smoltok" --load-format dummy --rounds "${ROUNDS:-2}" \
      --work "$RESULTS/clients-smoltok" --out "${OUT:-$GPU_DIR}/clients-smoltok.json"
  fi
  ;;
spec-models)  # the speculation target and its draft; the target is also $MODEL when there is none (the
  # compare checkpoint: the same shape, bytes and cost as the plain dummy; one 13.5 GB folder, not two)
  L=${SPEC_LAYERS:-2}
  spec_models "$L"
  [[ -e "$MODEL" ]] || ln -s "$(basename "$MODEL")-spec$L" "$MODEL"
  ;;
llamacpp-build)  # ONE CUDA build of the vendored llama.cpp: the Python package's libraries and llama-server
  # (the `setup` wheel and scripts/build_llama_server.sh compile the same ggml-cuda twice, ~7 min
  # each on 16 cores; here once). Started in the background while other stages run, it writes
  # $GPU_DIR/llamacpp-build.done. GPU_CMAKE="" builds the same for a CPU (how it is checked off the GPU).
  CARRY=${2:?llamacpp-build needs the folder holding the llama-cpp-python source tarball}
  V=0.3.36; SRC="$GPU_DIR/src/llama_cpp_python-$V"; B="$GPU_DIR/llama-build"
  rm -f "$GPU_DIR/llamacpp-build.done"
  mkdir -p "$SITE" "$GPU_DIR/src" "$HYPERBENCH_CACHE/wheels"
  cp "$CARRY/llama_cpp_python-$V.tar.gz" "$HYPERBENCH_CACHE/wheels/"  # the GGUF converter (backends/llamacpp/gguf.py)
  [[ -d "$SRC" ]] || tar -C "$GPU_DIR/src" -xzf "$CARRY/llama_cpp_python-$V.tar.gz"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$CARRY"/*.whl
  t=$SECONDS
  # llama-cpp-python's own CMake project (its options: shared libraries, common), with llama.cpp's tools
  # (the server; mtmd comes from there, so not from llama-cpp-python a second time: LLAVA_BUILD=OFF)
  # shellcheck disable=SC2086  # GPU_CMAKE is a list of flags
  cmake -S "$SRC" -B "$B" -DCMAKE_BUILD_TYPE=Release ${GPU_CMAKE--DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90}} \
    -DGGML_NATIVE=off -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF > "$GPU_DIR/llamacpp-build.log" 2>&1 \
    || { tail -30 "$GPU_DIR/llamacpp-build.log"; log "llama.cpp configure FAILED"; exit 1; }
  cmake --build "$B" --target llama mtmd llama-server -j "${JOBS:-$(nproc)}" >> "$GPU_DIR/llamacpp-build.log" 2>&1 \
    || { tail -30 "$GPU_DIR/llamacpp-build.log"; log "llama.cpp build FAILED"; exit 1; }
  rm -rf "$SITE/llama_cpp" && cp -r "$SRC/llama_cpp" "$SITE/llama_cpp" && mkdir -p "$SITE/llama_cpp/lib"
  find "$B" -name 'lib*.so*' \( -type f -o -type l \) -exec cp -a {} "$SITE/llama_cpp/lib/" \;
  log "llama.cpp (CUDA) built in $((SECONDS - t)) s: $(ls "$SITE/llama_cpp/lib" | tr '\n' ' ')"
  # the engines' own imports too: a CARRY short of prepare.sh's wheels fails here, not at the first bench
  "$PY" -c "import llama_cpp, fastapi, uvicorn, pydantic, gguf; print('llama_cpp', llama_cpp.__version__, 'gpu offload', llama_cpp.llama_supports_gpu_offload())" \
    || { log "CARRY lacks the harness's wheels (benchmarks/gpu/prepare.sh gathers them)"; exit 1; }
  "$B/bin/llama-server" --version 2>&1 | tail -2
  touch "$GPU_DIR/llamacpp-build.done"
  ;;
ggufs)  # the compare stage's GGUFs made ahead, into the engine's own cache (what compare looks up)
  until [[ -f "$MODEL/DUMMY_WEIGHTS.json" ]]; do sleep 5; done  # make_dummy may still be writing it
  "$PY" - "$MODEL" ${GGUF_QUANTS:-q8_0 q4_k_m} <<'EOF2'
import sys, time
from pathlib import Path
from backends.llamacpp.gguf import ensure_gguf
for q in sys.argv[2:]:
    t = time.perf_counter()
    out = ensure_gguf(sys.argv[1], q)
    print(f"{out} in {time.perf_counter() - t:.0f} s", flush=True)
for base in out.parent.glob("*16.gguf"):  # the 16-bit intermediate (13.5 GB): disk is 64 GB
    if base.stem not in sys.argv[2:]:
        base.unlink()
EOF2
  ;;
compare)  # the command a user types: every engine on one GPU, in turn, one report
  vllm_env
  [[ -f "$MODEL/config.json" ]] || "$PY" benchmarks/gpu/make_dummy.py --shape "$SHAPE" --out "$MODEL" --device "${MAKE_DEVICE:-cuda}"
  name=compare-${COMPARE_NAME:-all}
  if [[ -f "$RESULTS/$name/summary.json" ]] && grep -q '"status": "complete"' "$RESULTS/$name/summary.json"; then
    log "$name: done already"
  else
    rm -rf "${RESULTS:?}/$name"
    "$PY" -m harness.cli compare --engines "${ENGINES:-hf,vllm,vllm:fp8,llamacpp:q8_0,llamacpp:q4_k_m}" \
      --model "$MODEL" --run-name "$name" "${WORK[@]}" --dtype bfloat16 --n-gpu-layers -1 --flash-attn \
      --concurrency "${COMPARE_CONCURRENCY:-1,8,32}" --num-requests "${COMPARE_REQUESTS:-64}" ${COMPARE_ARGS:-} || log "$name FAILED (rc $?)"
  fi
  [[ -n "${OUT:-}" ]] && cp "$RESULTS/$name/report.md" "$OUT/compare-report.md" 2>/dev/null || true
  ;;
table) ;;
*) echo "unknown stage $1" >&2; exit 2 ;;
esac
