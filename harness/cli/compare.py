"""`hyperbench compare`: engines in turn on one workload, or finished runs side by side."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from harness.cli.bench import STARTED_TOKENIZER_HELP, Progress, bench_options
from harness.cli.merge import read_file
from harness.cli.options import engine_options, with_options
from harness.export.after_job import export_finished, export_option
from harness.cli.slurm import slurm_options


@click.command(context_settings={"show_default": True})
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML experiment file.")
@click.option("--engines", help="Engines to bench in turn, a quant after a colon: hf,llamacpp:q8_0,vllm.")
@click.option("--slo", help="Goodput SLOs in ms, e.g. ttft=500,tpot=50,e2e=5000.")
@click.option("--executor", type=click.Choice(["local", "slurm"]), help="Run the cells here in turn (local), "
              "or each as a task of a SLURM job array (slurm; the --partition.. options apply to each task).")
@click.option("--max-parallel", type=int, help="With --executor slurm: at most this many cells at once.")
@export_option
@with_options(bench_options(STARTED_TOKENIZER_HELP) + engine_options() + slurm_options(frozenset({"submit", "job_log"})))
def compare(runs, config_file, engines, slo, executor, max_parallel, export_tracker, **params):
    """Bench engines in turn on one workload (--engines), or put finished RUNS side by side.

    Engine options apply to every listed engine that has them. With --launcher docker each
    engine runs in its own image (hyperbench/<engine>), started and removed in turn.
    """
    from harness.cli.options import collect, parse_slo
    from harness.compare.run import build_config, run

    file_data = read_file(config_file)
    cli_data = collect(params)
    if engines:
        cli_data["engines"] = [e.strip() for e in engines.split(",") if e.strip()]
    if runs:
        cli_data["runs"] = list(runs)
    if slo:
        cli_data["slo"] = parse_slo(slo)
    cli_data.update({k: v for k, v in (("executor", executor), ("max_parallel", max_parallel)) if v is not None})
    cfg = build_config(file_data, cli_data)
    with Progress() as progress:
        folder = run(cfg, progress)
    print_compare(folder)
    export_finished(export_tracker, folder.path)


def print_compare(folder) -> None:
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
