"""`python -m backends.hf`: serve a transformers model over the wire contract.

The engine flags are built from `backends.hf.spec.HFConfig` (names, choices, defaults, help and
range checks stated once, there: backends/spec_cli.py).
Every problem the user can fix is one line on stderr and exit status 2, before weights load
where it can be checked before.
"""

from __future__ import annotations

import argparse
import logging
import sys

from backends.base import api_key_arg_default, exit_with_parent
from backends.hf.spec import HFConfig, parse_speculative
from backends.spec_cli import add_spec_arguments, spec_from_args
from backends.openai_server.listen import bind
from harness.errors import HyperbenchError

log = logging.getLogger("hf")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backends.hf", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="Local model folder (or a .gguf file).")
    p.add_argument("--served-model-name", help="Name in /v1/models (default: --model).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=api_key_arg_default(),
                   help=HFConfig.model_fields["api_key"].description + " [default: $HYPERBENCH_API_KEY]")
    add_spec_arguments(p, HFConfig)  # the engine settings: names, choices, defaults from the spec
    # the server's own, not engine settings of a run
    p.add_argument("--load-format", choices=["auto", "dummy"], default="auto",
                   help="dummy: random weights of the model's config (speed runs without weights).")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def run(args: argparse.Namespace) -> None:
    spec_from_args(HFConfig, args).check()  # the spec's checks (ranges, combinations), before torch loads
    import uvicorn

    from backends.hf.loading import LoadSettings, draft_settings, load, preflight
    from backends.hf.server import Runtime, ServeSettings, create_app

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
