"""`hyperbench serve ENGINE`: one engine on the wire contract, in the foreground."""

from __future__ import annotations

import os
import sys

import click

from harness.cli.options import engine_options, with_options
from harness.config import BenchConfig
from harness.errors import HyperbenchError


@click.command(context_settings={"show_default": True})
@click.argument("engine_kind", metavar="ENGINE")
@click.option("--host", default="127.0.0.1", help="Interface to listen on (0.0.0.0 in containers).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, help="Port to listen on (0: any free port).")
@with_options(engine_options())
def serve(engine_kind, host, port, **params):
    """Serve ENGINE on the wire contract in the foreground (Ctrl-C stops it)."""
    from backends import engine_class
    from harness.cli.options import check_engine_flags, collect
    from harness.launchers.process import check_port_free, key_env, key_off_argv
    from harness.models import resolve_model

    engine_dict = {"kind": engine_kind, **collect(params).get("engine", {})}
    check_engine_flags(engine_kind, engine_dict)
    cls = engine_class(engine_kind)
    env_key = os.environ.get("HYPERBENCH_API_KEY") or os.environ.get(cls.api_key_env)
    if engine_dict.get("api_key") is None and env_key:
        # the key from the environment (the engine images' entrypoint): never on a command line
        engine_dict["api_key"] = env_key
    cfg = BenchConfig(engine=engine_dict).engine_config()
    ok, why = cls.installed()
    if not ok:
        raise HyperbenchError(f"engine {engine_kind} is not installed here: {why}")
    cfg.check()
    check_port_free(host, port)
    resolved = resolve_model(cfg.model)
    cmd, key = key_off_argv(cfg.server_command(host, port, str(resolved.path or resolved.gguf)))
    click.echo(f"serving {cfg.display_name()} with {engine_kind} on http://{host}:{port}/v1", err=True)
    sys.stdout.flush()
    # the engine's own environment (vLLM: its route middleware's PYTHONPATH, the CPU target), and
    # the API key, which a command line would show to every user
    os.execvpe(cmd[0], cmd, {**os.environ, **cfg.server_env(), **key_env(cfg, key)})
