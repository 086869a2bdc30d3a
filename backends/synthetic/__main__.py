"""`python -m backends.synthetic`: the synthetic engine in the foreground."""

from __future__ import annotations

import argparse
import sys

from backends.base import api_key_arg_default, exit_with_parent
from backends.synthetic.server import run_loop, serve
from backends.synthetic.spec import KNOBS, SyntheticConfig


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m backends.synthetic",
                                description="A synthetic engine whose timing is known, to test the harness client's measurement.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (printed).")
    p.add_argument("--api-key", default=api_key_arg_default(),
                   help="Require this bearer key [default: $HYPERBENCH_API_KEY].")
    for name in KNOBS:  # flags derived from the config class
        f = SyntheticConfig.model_fields[name]
        kind = f.annotation if f.annotation in (int, float) else str
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=f.default,
                       help=f.description)
    args = vars(p.parse_args(argv))
    exit_with_parent()
    host, port = args.pop("host"), args.pop("port")
    cfg = SyntheticConfig(**args)

    async def run() -> None:
        server = await serve(cfg, host, port)
        bound = server.sockets[0].getsockname()[1]
        print(f"synthetic engine on http://{host}:{bound}/v1 (ttft {cfg.ttft_ms} ms, "
              f"itl {cfg.itl_ms} ms)", file=sys.stderr, flush=True)
        async with server:
            await server.serve_forever()

    try:
        run_loop(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
