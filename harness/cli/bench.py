"""`hyperbench bench`: one engine under a sweep; its progress bar and summary table."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from harness.cli.merge import merge_engine, read_file, refuse_with_resume
from harness.cli.options import engine_options, section_options, with_options
from harness.export.after_job import export_finished, export_option
from harness.config import BenchConfig, Load, Output, Target, Workload, build


def bench_options(helps=None):
    return section_options(
        {"workload": Workload, "load": Load, "target": Target, "output": Output}, skip={"url"}, helps=helps
    )


# compare and slurm have no --url: their engines are started, from a folder or a .gguf
STARTED_TOKENIZER_HELP = {"tokenizer": "Tokenizer folder that synthetic prompts are built with (exact "
                           "input lengths) [default: the served model's folder; needed for a .gguf "
                           "--model unless --dataset is given]."}

@click.command(context_settings={"show_default": True})
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML experiment file.")
@click.option("--engine", "engine_kind", help="Engine to start: hf, llamacpp, llama-server, vllm (synthetic: the test engine).")
@click.option("--url", help="Bench an engine someone else runs (base URL, …/v1).")
@click.option("--slo", help="Goodput SLOs in ms, e.g. ttft=500,tpot=50,e2e=5000.")
@click.option("--resume", type=click.Path(path_type=Path),
              help="Finish a cut bench run folder (its saved config; no other flags).")
@export_option
@with_options(bench_options() + engine_options())
def bench(config_file, engine_kind, url, slo, resume, export_tracker, **params):
    """Latency and throughput of an engine under a concurrency or Poisson-rate sweep."""
    from harness.bench.run import run
    from harness.cli.options import collect, parse_slo

    cli_data = collect(params)
    if resume is not None:
        refuse_with_resume(config_file, engine_kind, url, slo, cli_data)
        from harness.bench.run import resume as resume_run

        with Progress() as progress:
            run_dir = resume_run(resume, progress)
        print_summary(run_dir)
        export_finished(export_tracker, run_dir.path)
        return
    file_data = read_file(config_file)
    if slo:
        cli_data["slo"] = parse_slo(slo)
    merge_engine(file_data, cli_data, engine_kind, url)
    cfg = build(BenchConfig, file_data, cli_data)
    progress = Progress()
    with progress:
        run_dir = run(cfg, progress)
    print_summary(run_dir)
    export_finished(export_tracker, run_dir.path)


class Progress:
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


def print_summary(run_dir) -> None:
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
