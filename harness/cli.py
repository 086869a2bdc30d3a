"""The `hyperbench` command: thin; each command builds one typed config and calls one `run`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from harness.config import SLO, BenchConfig, Load, Output, Target, Workload, build, load_yaml
from harness.errors import HyperbenchError


def _with(options):
    """Attach derived options to a command function (click reads __click_params__)."""

    def deco(f):
        f.__dict__.setdefault("__click_params__", []).extend(reversed(options))
        return f

    return deco


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hyperbench")
def cli():
    """Bench, tune and score LLM inference engines through one wire contract."""


@cli.command()
def engines():
    """Engines known, whether each can run here, and what each supports."""
    from rich.console import Console
    from rich.table import Table

    from backends import available_engines

    t = Table("engine", "runs here", "quantizations", "sampling parameters", "speculative")
    for kind, cls in available_engines().items():
        ok, why = cls.installed()
        cap = cls().capabilities()
        t.add_row(kind, "yes" if ok else f"no: {why}", ", ".join(cap.quantizations),
                  ", ".join(cap.sampling_params), ", ".join(cap.speculative) or "-")
    Console().print(t)


@cli.command()
def models():
    """Built-in models (staged offline on first use)."""
    from harness.models import BUILTIN_MODELS

    for name, desc in BUILTIN_MODELS.items():
        click.echo(f"{name:16s} {desc}")


@cli.command()
def env():
    """Print the environment capture (what every run folder records) as JSON."""
    from harness.envinfo import capture

    click.echo(json.dumps(capture(), indent=2))


def _engine_opts():
    from harness.cliutil import engine_options

    return engine_options()


def _bench_opts():
    from harness.cliutil import section_options

    return section_options(
        {"workload": Workload, "load": Load, "target": Target, "output": Output}, skip={"url"}
    )


@cli.command(context_settings={"show_default": True})
@click.argument("engine_kind", metavar="ENGINE")
@click.option("--host", default="127.0.0.1", help="Interface to listen on (0.0.0.0 in containers).")
@click.option("--port", type=int, default=8000, help="Port to listen on.")
@_with(_engine_opts())
def serve(engine_kind, host, port, **params):
    """Serve ENGINE on the wire contract in the foreground (Ctrl-C stops it)."""
    from backends import engine_class
    from harness.cliutil import check_engine_flags, collect
    from harness.launchers.process import check_port_free
    from harness.models import resolve_model

    engine_dict = {"kind": engine_kind, **collect(params).get("engine", {})}
    check_engine_flags(engine_kind, engine_dict)
    cfg = BenchConfig(engine=engine_dict).engine_config()
    ok, why = engine_class(engine_kind).installed()
    if not ok:
        raise HyperbenchError(f"engine {engine_kind} is not installed here: {why}")
    cfg.check()
    check_port_free(host, port)
    resolved = resolve_model(cfg.model)
    cmd = cfg.server_command(host, port, str(resolved.path or resolved.gguf))
    click.echo(f"serving {cfg.display_name()} with {engine_kind} on http://{host}:{port}/v1", err=True)
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)


@cli.command(context_settings={"show_default": True})
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML experiment file.")
@click.option("--engine", "engine_kind", help="Engine to start: hf, llamacpp, vllm.")
@click.option("--url", help="Bench an engine someone else runs (base URL, …/v1).")
@click.option("--slo", help="Goodput SLOs in ms, e.g. ttft=500,tpot=50,e2e=5000.")
@_with(_bench_opts() + _engine_opts())
def bench(config_file, engine_kind, url, slo, **params):
    """Latency and throughput of an engine under a concurrency or Poisson-rate sweep."""
    from harness.bench import run
    from harness.cliutil import check_engine_flags, collect, parse_slo

    file_data = load_yaml(config_file) if config_file else {}
    cli_data = collect(params)
    if engine_kind:
        cli_data.setdefault("engine", {})["kind"] = engine_kind
    if url:
        cli_data.setdefault("target", {})["url"] = url
    if slo:
        cli_data["slo"] = parse_slo(slo)
    file_engine = file_data.get("engine", {}) if isinstance(file_data.get("engine"), dict) else {}
    engine = {**file_engine, **cli_data.get("engine", {})}
    kind = engine.setdefault("kind", "hf")
    check_engine_flags(kind, engine)
    cli_data["engine"] = engine
    cfg = build(BenchConfig, file_data, cli_data)
    progress = _Progress()
    with progress:
        run_dir = run(cfg, progress)
    _print_summary(run_dir)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--no-plots", is_flag=True, help="Skip PNG plots.")
def report(run_dir, no_plots):
    """Write (again) the markdown report and plots of a run folder."""
    from harness.report import write_report
    from harness.results import RunFolder

    run = RunFolder.open(run_dir)
    write_report(run, plots=not no_plots)
    click.echo(run.file("report.md"))


class _Progress:
    """rich progress bar for sweeps (quiet when stdout is not a terminal)."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), transient=False, disable=not sys.stderr.isatty())

    def __enter__(self):
        self.p.__enter__()
        return self

    def __exit__(self, *exc):
        self.p.__exit__(*exc)

    def start(self, kind, value, total):
        return self.p.add_task(f"{kind}={value:g}", total=total)

    def advance(self, task):
        self.p.advance(task)


def _print_summary(run_dir) -> None:
    from rich.console import Console
    from rich.table import Table

    from harness.report import COLUMNS, fmt, point_label

    s = run_dir.read_json("summary.json")
    t = Table(title=f"{s['engine']} / {s['model']} ({s['status']})")
    t.add_column("point")
    t.add_column("ok")
    for name, _ in COLUMNS:
        t.add_column(name, justify="right")
    for p in s["points"]:
        t.add_row(point_label(p), f"{p.get('completed', 0)}/{p.get('requests', 0)}",
                  *[fmt(f(p)) for _, f in COLUMNS])
    Console().print(t)
    click.echo(f"run folder: {run_dir.path}")


def main(argv=None) -> None:
    try:
        cli.main(args=argv, prog_name="hyperbench", standalone_mode=False)
    except HyperbenchError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted: finished records are kept, the run is marked incomplete", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2)


if __name__ == "__main__":
    main()
