"""The `hyperbench` command: thin; each command builds one typed config and calls one `run`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from harness.config import BenchConfig, Load, Output, Target, Workload, build, load_yaml
from harness.errors import HyperbenchError, Interrupted


def _with(options):
    """Attach derived options to a command function (click reads __click_params__)."""

    def deco(f):
        f.__dict__.setdefault("__click_params__", []).extend(reversed(options))
        return f

    return deco


class _Stopped(Exception):
    """Ctrl-C (or SIGTERM) carried past click.main as a plain exception, with the run's message:
    click (standalone_mode=False) would turn the KeyboardInterrupt into Abort after a blank line,
    and the run's message (what was kept, how to resume) would be lost."""


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            raise _Stopped(str(e) if isinstance(e, Interrupted) else "") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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
    # a pipe has no width: 80 columns cut 'repetition_penalty' to 'repetition_pena…'
    Console(width=None if sys.stdout.isatty() else 200).print(t)


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
    from harness.cli.options import engine_options

    return engine_options()


def _bench_opts(helps=None):
    from harness.cli.options import section_options

    return section_options(
        {"workload": Workload, "load": Load, "target": Target, "output": Output}, skip={"url"}, helps=helps
    )


# compare and slurm have no --url: their engines are started, from a folder or a .gguf
_STARTED_TOKENIZER_HELP = {"tokenizer": "Tokenizer folder that synthetic prompts are built with (exact "
                           "input lengths) [default: the served model's folder; needed for a .gguf "
                           "--model unless --dataset is given]."}


@cli.command(context_settings={"show_default": True})
@click.argument("engine_kind", metavar="ENGINE")
@click.option("--host", default="127.0.0.1", help="Interface to listen on (0.0.0.0 in containers).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, help="Port to listen on (0: any free port).")
@_with(_engine_opts())
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


@cli.command(context_settings={"show_default": True})
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML experiment file.")
@click.option("--engine", "engine_kind", help="Engine to start: hf, llamacpp, llama-server, vllm (synthetic: the test engine).")
@click.option("--url", help="Bench an engine someone else runs (base URL, …/v1).")
@click.option("--slo", help="Goodput SLOs in ms, e.g. ttft=500,tpot=50,e2e=5000.")
@click.option("--resume", type=click.Path(path_type=Path),
              help="Finish a cut bench run folder (its saved config; no other flags).")
@_with(_bench_opts() + _engine_opts())
def bench(config_file, engine_kind, url, slo, resume, **params):
    """Latency and throughput of an engine under a concurrency or Poisson-rate sweep."""
    from harness.bench.run import run
    from harness.cli.options import check_engine_flags, collect, parse_slo

    cli_data = collect(params)
    if resume is not None:
        if config_file or engine_kind or url or slo or cli_data:
            raise HyperbenchError("--resume continues a run with its saved config: give no other options")
        from harness.bench.run import resume as resume_run

        with _Progress() as progress:
            run_dir = resume_run(resume, progress)
        _print_summary(run_dir)
        return
    file_data = load_yaml(config_file) if config_file else {}
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
    from harness.bench.report import write_report
    from harness.results import RunFolder

    run = RunFolder.open(run_dir)
    summary = run.summary()
    if summary.get("kind") == "tune":
        from harness.tune.report import write_report as write_tune_report

        write_tune_report(run, plots=not no_plots)
    elif summary.get("kind") == "study":
        from harness.study.report import write_report as write_study_report

        write_study_report(run, summary, plots=not no_plots)
    elif summary.get("kind") == "score":
        from harness.score.report import write_report as write_score_report

        write_score_report(run)
    else:
        from harness.bench.resume import rebuild_summary, was_cut

        if was_cut(summary):  # killed: its records are all there is; summarize them, once
            run.write_json("summary.json", rebuild_summary(run, summary))
        write_report(run, plots=not no_plots)
    click.echo(run.file("report.md"))


def _slurm_opts(skip: frozenset = frozenset()):
    from harness.cli.options import section_options
    from harness.slurm import SlurmJob

    return section_options({"slurm": SlurmJob}, skip=skip)


@cli.command(context_settings={"show_default": True})
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML experiment file.")
@click.option("--engines", help="Engines to bench in turn, a quant after a colon: hf,llamacpp:q8_0,vllm.")
@click.option("--slo", help="Goodput SLOs in ms, e.g. ttft=500,tpot=50,e2e=5000.")
@click.option("--executor", type=click.Choice(["local", "slurm"]), help="Run the cells here in turn (local), "
              "or each as a task of a SLURM job array (slurm; the --partition.. options apply to each task).")
@click.option("--max-parallel", type=int, help="With --executor slurm: at most this many cells at once.")
@_with(_bench_opts(_STARTED_TOKENIZER_HELP) + _engine_opts() + _slurm_opts(frozenset({"submit", "job_log"})))
def compare(runs, config_file, engines, slo, executor, max_parallel, **params):
    """Bench engines in turn on one workload (--engines), or put finished RUNS side by side.

    Engine options apply to every listed engine that has them. With --launcher docker each
    engine runs in its own image (hyperbench/<engine>), started and removed in turn.
    """
    from harness.cli.options import collect, parse_slo
    from harness.compare.run import build_config, run

    file_data = load_yaml(config_file) if config_file else {}
    cli_data = collect(params)
    if engines:
        cli_data["engines"] = [e.strip() for e in engines.split(",") if e.strip()]
    if runs:
        cli_data["runs"] = list(runs)
    if slo:
        cli_data["slo"] = parse_slo(slo)
    cli_data.update({k: v for k, v in (("executor", executor), ("max_parallel", max_parallel)) if v is not None})
    cfg = build_config(file_data, cli_data)
    with _Progress() as progress:
        folder = run(cfg, progress)
    _print_compare(folder)


@cli.command(context_settings={"show_default": True})
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML experiment file.")
@click.option("--engine", "engine_kind", help="Engine to bench: hf, llamacpp, llama-server, vllm (synthetic: the test engine).")
@click.option("--slo", help="Goodput SLOs in ms, e.g. ttft=500,tpot=50,e2e=5000.")
@_with(_bench_opts(_STARTED_TOKENIZER_HELP) + _engine_opts() + _slurm_opts())
def slurm(config_file, engine_kind, slo, **params):
    """Print a SLURM batch script that runs this bench under Apptainer (> job.sbatch), or --submit it."""
    from harness.cli.options import check_engine_flags, collect, parse_slo
    from harness.slurm import SlurmJob, render

    data = collect(params)
    job = build(SlurmJob, {}, data.pop("slurm", {}))
    file_data = load_yaml(config_file) if config_file else {}
    file_engine = file_data.get("engine", {}) if isinstance(file_data.get("engine"), dict) else {}
    engine = {**file_engine, **data.get("engine", {})}
    if engine_kind:
        engine["kind"] = engine_kind
    check_engine_flags(engine.setdefault("kind", "hf"), engine)
    data["engine"] = engine
    if slo:
        data["slo"] = parse_slo(slo)
    cfg = build(BenchConfig, file_data, data)
    argv = sys.argv[sys.argv.index("slurm") + 1:] if "slurm" in sys.argv else None
    if job.submit:
        from harness.slurm_follow import submit

        code, line = submit(cfg, job, argv, lambda text: click.echo(text, err=True))
        click.echo(line)
        sys.exit(code)
    click.echo(render(cfg, job, argv), nl=False)


def _print_compare(folder) -> None:
    from rich.console import Console
    from rich.table import Table

    from harness.bench.report import fmt, point_label

    data = folder.read_json("compare.json")
    t = Table(title="hyperbench compare")
    # a bench run and a score run of one engine share its label: the kind column tells them apart
    for col in ("run", "kind", "status", "point", "ok", "out tok/s", "TTFT p50", "TPOT p50", "E2E p50"):
        t.add_column(col, justify="left" if col in ("run", "kind", "status", "point") else "right")
    for r in data["runs"]:
        for p in r.get("points") or [{}]:
            t.add_row(r["label"], r.get("kind", "bench"), r["status"],
                      point_label(p) if p else "-",
                      f"{p.get('completed', 0)}/{p.get('requests', 0)}" if p else "-",
                      fmt(p.get("output_throughput")), *[fmt((p.get(k) or {}).get("p50"))
                                                         for k in ("ttft_ms", "tpot_ms", "e2e_ms")])
    Console(width=None if sys.stdout.isatty() else 200).print(t)
    scored = [r for r in data["runs"] if r.get("metrics")]
    if scored:  # score runs: their accuracy (report.md has it beside the matching bench run's speed)
        acc = Table(title="accuracy (score runs)")
        acc.add_column("task/metric")
        for r in scored:
            acc.add_column(r["label"], justify="right")
        for m in sorted({m for r in scored for m in r["metrics"]}):
            acc.add_row(m, *[fmt(r["metrics"].get(m)) for r in scored])
        Console(width=None if sys.stdout.isatty() else 200).print(acc)
    click.echo(f"comparison: {folder.path / 'report.md'}")


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

    from harness.bench.report import fmt, point_label, spec_baseline_note, terminal_columns

    s = run_dir.read_json("summary.json")
    columns = terminal_columns(s["points"])  # + acceptance and speedup when it speculated
    t = Table(title=f"{s['engine']} / {s['model']} ({s['status']})")
    t.add_column("point")
    t.add_column("ok")
    for name, _ in columns:
        t.add_column(name, justify="right")
    for p in s["points"]:
        t.add_row(point_label(p), f"{p.get('completed', 0)}/{p.get('requests', 0)}",
                  *[fmt(f(p)) for _, f in columns])
    # a pipe or CI log has no width: do not squeeze the table into 80 columns
    Console(width=None if sys.stdout.isatty() else 200).print(t)
    if note := spec_baseline_note(s):
        click.echo(note)
    click.echo(f"run folder: {run_dir.path}")


def _add_score_commands() -> None:
    from harness.cli.score import data, score

    cli.add_command(score)
    cli.add_command(data)


_add_score_commands()


def _add_tune_command() -> None:
    from harness.cli.tune import tune

    cli.add_command(tune)


_add_tune_command()


def _add_agree_commands() -> None:
    from harness.cli.agree import agree, quantize

    cli.add_command(quantize)
    cli.add_command(agree)


_add_agree_commands()


def _add_study_command() -> None:
    from harness.cli.study import study

    cli.add_command(study)


_add_study_command()

def _add_seed_commands() -> None:
    from harness.cli.export import export
    from harness.cli.lora import merge_lora

    cli.add_command(merge_lora)
    cli.add_command(export)


_add_seed_commands()


def _sigterm(signum, frame):
    # a batch scheduler or `docker stop` sends SIGTERM: unwind like Ctrl-C so the engine is torn
    # down and the run folder is marked incomplete
    raise KeyboardInterrupt


def main(argv=None) -> None:
    import signal

    signal.signal(signal.SIGTERM, _sigterm)
    try:
        cli.main(args=argv, prog_name="hyperbench", standalone_mode=False)
    except HyperbenchError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except _Stopped as e:  # during a command: the run's own line when it has one
        _interrupted(str(e), close_echo=True)
    except click.exceptions.Abort:  # before one ran (click has closed the terminal's ^C line)
        _interrupted("", close_echo=False)
    except KeyboardInterrupt as e:  # after click let go
        _interrupted(str(e) if isinstance(e, Interrupted) else "", close_echo=True)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except OSError as e:  # a full disk, a read-only folder, a file gone: the system's word, one line
        click.echo(f"error: {os_error_line(e)}", err=True)
        sys.exit(2)


def os_error_line(e: OSError) -> str:
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror or type(e).__name__}{where}" if e.strerror else str(e) or type(e).__name__


def _interrupted(message: str, close_echo: bool) -> None:
    """One line on stderr, exit 130 (128 + SIGINT, as a shell reports Ctrl-C), no traceback."""
    if close_echo and sys.stderr.isatty():
        click.echo(err=True)  # the terminal echoed ^C without a newline
    click.echo(message or "interrupted", err=True)
    sys.exit(130)


if __name__ == "__main__":
    main()
