#!/usr/bin/env bash
# On the GPU node: put together the parts prepare_vllm.sh cut, over as many calls as it takes, and
# install vLLM. Resumable: parts are kept in STAGE (outside the repo copy, which calls replace)
# and checked against SHA256SUMS; `receive` says which are still missing, so a machine taken
# back mid-chain costs only the parts it had.
#
#   benchmarks/gpu/stage_vllm.sh receive CARRY   # copy CARRY/p*/part-* that are not there yet
#   benchmarks/gpu/stage_vllm.sh install CARRY   # all parts there: vLLM into $GPU_DIR/site
#
# Env: STAGE (default /tmp/hyperbench-vllm-stage), GPU_DIR (default .gpu), PY (default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
STAGE=${STAGE:-/tmp/hyperbench-vllm-stage}
GPU_DIR=$(realpath -m "${GPU_DIR:-.gpu}")
PY=${PY:-python3}
CARRY=${2:?usage: stage_vllm.sh receive|install CARRY}
mkdir -p "$STAGE"
[[ -f "$CARRY/SHA256SUMS" ]] && cp "$CARRY/SHA256SUMS" "$STAGE/"
[[ -f "$STAGE/SHA256SUMS" ]] || { echo "stage_vllm.sh: no SHA256SUMS in $CARRY (carry it with the first part)" >&2; exit 2; }

missing() {  # the parts of SHA256SUMS not in STAGE with the right checksum
  while read -r sum name; do
    [[ -f "$STAGE/$name" ]] && [[ "$(sha256sum "$STAGE/$name" | cut -d' ' -f1)" == "$sum" ]] || echo "$name"
  done < "$STAGE/SHA256SUMS"
}

for f in "$CARRY"/p*/part-*; do
  [[ -f "$f" ]] || continue
  name=$(basename "$f")
  grep -q " $name\$" "$STAGE/SHA256SUMS" || { echo "stage_vllm.sh: $name is not in SHA256SUMS" >&2; exit 2; }
  [[ " $(missing | tr '\n' ' ') " == *" $name "* ]] && cp "$f" "$STAGE/$name"
done
left=$(missing | tr '\n' ' ')
echo "vllm parts missing: ${left:-none}"
[[ $1 == receive ]] && exit 0
[[ $1 == install ]] || { echo "stage_vllm.sh: unknown action $1" >&2; exit 2; }
[[ -z "$left" ]] || { echo "stage_vllm.sh: cannot install, parts missing: $left" >&2; exit 3; }
SITE="$GPU_DIR/site"
if ! PYTHONPATH="$SITE" "$PY" -c "import vllm" 2>/dev/null; then
  w=$(mktemp -d)
  cat $(sed 's/^[^ ]*  /'"${STAGE//\//\\/}"'\//' "$STAGE/SHA256SUMS") | tar -C "$w" -xf -
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$w"/*.whl
  rm -rf "$w"
fi
PYTHONPATH="$SITE" "$PY" -c "import vllm, vllm.entrypoints.openai.api_server as s; print('vllm', vllm.__version__)"
