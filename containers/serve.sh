#!/bin/sh
# Entrypoint of the engine images: `hyperbench serve ENGINE` on 0.0.0.0:$HYPERBENCH_PORT (8000),
# with every further argument an engine flag (--model, --quant, --dtype...). A built-in model
# name is staged into $HYPERBENCH_CACHE (the shared cache volume) on first use.
# HYPERBENCH_API_KEY, when set, is the key `hyperbench serve` requires: it reads it from the
# environment and hands it to the engine the same way, so it is on no command line (`ps`).
set -eu
engine="$1"
shift
exec hyperbench serve "$engine" --host "${HYPERBENCH_HOST:-0.0.0.0}" --port "${HYPERBENCH_PORT:-8000}" "$@"
