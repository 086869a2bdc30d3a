#!/bin/sh
# Entrypoint of the engine images: `hyperbench serve ENGINE` on 0.0.0.0:$HYPERBENCH_PORT (8000),
# with every further argument an engine flag (--model, --quant, --dtype...). A built-in model
# name is staged into $HYPERBENCH_CACHE (the shared cache volume) on first use.
# HYPERBENCH_API_KEY, when set, becomes --api-key (kept out of compose files and command lines).
set -eu
engine="$1"
shift
if [ -n "${HYPERBENCH_API_KEY:-}" ]; then
    set -- --api-key "$HYPERBENCH_API_KEY" "$@"
fi
exec hyperbench serve "$engine" --host "${HYPERBENCH_HOST:-0.0.0.0}" --port "${HYPERBENCH_PORT:-8000}" "$@"
