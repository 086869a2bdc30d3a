"""`python -m backends.hf`: serve a transformers model over the wire contract.

Flags mirror `backends.hf.spec.HFConfig` (choices and defaults are read from it, not repeated).
Every problem the user can fix is one line on stderr and exit status 2, before weights load
where it can be checked before.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import get_args

from backends.base import api_key_arg_default, exit_with_parent
from backends.hf.spec import HFConfig, parse_speculative
from backends.openai_server.listen import bind
from harness.errors import HyperbenchError

log = logging.getLogger("hf")


def build_parser() -> argparse.ArgumentParser:
    fields = HFConfig.model_fields
    p = argparse.ArgumentParser(prog="python -m backends.hf", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="Local model folder (or a .gguf file).")
    p.add_argument("--served-model-name", help="Name in /v1/models (default: --model).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    for name in ("quant", "attn", "dtype", "device"):
        f = fields[name]
        p.add_argument(f"--{name}", choices=get_args(f.annotation), default=f.default, help=f.description)
    f = fields["max_batch_size"]
    p.add_argument("--max-batch-size", type=int, default=f.default, help=f.description)
    p.add_argument("--api-key", default=api_key_arg_default(),
                   help=fields["api_key"].description + " [default: $HYPERBENCH_API_KEY]")
    p.add_argument("--enforce-eager", action="store_true", help=fields["enforce_eager"].description)
    p.add_argument("--speculative", default="none",
                   help="none, or draft:<folder or .gguf> (a draft model with the same tokenizer).")
    f = fields["num_speculative_tokens"]
    p.add_argument("--num-speculative-tokens", type=int, default=f.default, help=f.description)
    f = fields["assistant_confidence_threshold"]
    p.add_argument("--assistant-confidence-threshold", type=float, default=f.default, help=f.description)
    p.add_argument("--prune", type=float, default=0.0, help=fields["prune"].description)
    p.add_argument("--prune-scope", choices=get_args(fields["prune_scope"].annotation),
                   default=fields["prune_scope"].default, help=fields["prune_scope"].description)
    p.add_argument("--lora", help=fields["lora"].description)
    p.add_argument("--load-format", choices=["auto", "dummy"], default="auto",
                   help="dummy: random weights of the model's config (speed runs without weights).")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def run(args: argparse.Namespace) -> None:
    import uvicorn

    from backends.hf.loading import LoadSettings, draft_settings, load, preflight
    from backends.hf.server import Runtime, ServeSettings, create_app

    if args.max_batch_size < 1:
        raise HyperbenchError("--max-batch-size must be at least 1")
    if not 1 <= args.num_speculative_tokens <= 64:
        raise HyperbenchError("--num-speculative-tokens must be in [1, 64]")
    if not 0 <= args.assistant_confidence_threshold <= 1:
        raise HyperbenchError("--assistant-confidence-threshold must be in [0, 1]")
    if not 0 <= args.prune < 1:
        raise HyperbenchError(f"--prune {args.prune}: the fraction of weights pruned must be in [0, 1)")
    if args.prune and args.quant != "none":
        raise HyperbenchError(f"--prune cannot be combined with --quant {args.quant}")
    _, draft = parse_speculative(args.speculative)
    load_settings = LoadSettings(
        args.model, args.quant, args.attn, args.dtype, args.device, args.load_format, draft,
        args.prune, args.prune_scope, args.lora,
    )
    preflight(load_settings)
    sock = bind(args.host, args.port)
    loaded = load(load_settings)
    draft_model = load(draft_settings(load_settings)) if draft else None
    serve = ServeSettings(args.served_model_name or args.model, args.max_batch_size, args.api_key,
                          args.num_speculative_tokens, args.assistant_confidence_threshold,
                          args.enforce_eager)  # fmt: skip
    runtime = Runtime(loaded, load_settings, serve, draft_model)
    runtime.scheduler.start()
    config = uvicorn.Config(
        create_app(runtime),
        log_config=None,  # keep our timestamped format on stderr
        access_log=False,  # one line per request would swamp a benchmark's log
        timeout_graceful_shutdown=5,
    )
    log.info("serving %s as %r on http://%s:%d", args.model, serve.served_model_name, args.host, args.port)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        runtime.scheduler.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exit_with_parent()
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run(args)
    except HyperbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
