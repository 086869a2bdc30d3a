"""`hyperbench tune`: a thin command; flags are derived from the config tree (harness/tune/config.py).

Registered on the main group in harness/cli/main.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from harness.cli.merge import merge_engine, read_file, refuse_with_resume
from harness.cli.options import with_options
from harness.config import Target, build
from harness.export.after_job import export_finished, export_option
from harness.tune.config import TuneConfig, TuneOutput, TuneSpec, parse_assignments


def _tune_opts():
    from harness.cli.options import engine_options, section_options

    from harness.slurm import SlurmJob

    return section_options({"tune": TuneSpec, "target": Target, "output": TuneOutput, "slurm": SlurmJob},
                           skip={"url", "baseline", "resume", "submit", "job_log"},
                           helps={"tokenizer": "The served model's tokenizer folder: to cut prompts longer "
                                  "than the engine's context as lm-eval does [default: the served "
                                  "model's folder; only needed with --url]."}) + engine_options()


@click.command(context_settings={"show_default": True})
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML experiment file.")
@click.option("--engine", "engine_kind", help="Engine to tune: hf, llamacpp, llama-server, vllm.")
@click.option("--url", help="Tune an engine someone else runs (base URL, …/v1; sampling parameters only).")
@click.option("--baseline", "baseline", help="Baseline configuration (trial 0), e.g. temperature=0.8,"
              "top_p=0.95 [default: temperature=0.8,top_p=0.95].")
@click.option("--resume", type=click.Path(path_type=Path),
              help="Continue an interrupted tune run folder (its saved config; no other options).")
@export_option
@with_options(_tune_opts())
def tune(config_file, engine_kind, url, baseline, resume, export_tracker, **params):
    """Bayesian optimization (Ax) of sampling parameters against quality and speed, then a
    held-out comparison of the best configurations with the baseline."""
    import os

    from harness.cli.options import collect

    # lm-eval draws a progress bar for every trial's set-up: the tune prints one line per trial
    os.environ.setdefault("TQDM_DISABLE", "1")
    from harness.tune.run import run

    cli_data = collect(params)
    if resume is not None:
        refuse_with_resume(config_file, engine_kind, url, baseline, cli_data)
        cfg = TuneConfig(output=TuneOutput(resume=resume))
    else:
        file_data = read_file(config_file)
        if baseline is not None:
            cli_data.setdefault("tune", {})["baseline"] = parse_assignments(baseline, "--baseline")
        merge_engine(file_data, cli_data, engine_kind, url)
        cfg = build(TuneConfig, file_data, cli_data)
    run_dir = run(cfg, echo=lambda s: click.echo(s, err=True))
    print_result(run_dir)
    export_finished(export_tracker, run_dir.path)


def print_result(run_dir) -> None:
    from rich.console import Console
    from rich.table import Table

    from harness.tune.report import _ms, _params

    s = run_dir.read_json("summary.json")
    sel = s.get("selection") or {}
    by = {t["index"]: t for t in s.get("trials") or []}
    metrics = ["accuracy", "tpot_ms", "ttft_ms", "e2e_ms", "output_tok_s"]
    t = Table(title=f"tune {s['engine']} / {s['model']} on {s.get('task')} ({s['status']}): "
                    f"{sum(1 for x in by.values() if x['status'] == 'completed')} trials completed, dev split")
    t.add_column("trial")
    t.add_column("parameters")
    for m in metrics:
        t.add_column(m, justify="right")
    for i in [0] + list(sel.get("picks") or []):
        rec = by.get(i)
        if rec:
            t.add_row(f"{i}{' (baseline)' if i == 0 else ''}", _params(rec["params"]),
                      *[_ms((rec.get("metrics") or {}).get(m), m) for m in metrics])
    Console(width=None if sys.stdout.isatty() else 200).print(t)
    h = s.get("holdout") or {}
    if h.get("why"):
        click.echo(f"held-out: not run: {h['why']}")
    for comp in h.get("comparisons", []):
        click.echo(f"held-out ({h['items']} items) {comp['label']}: {comp['verdict']}")
    click.echo(f"run folder: {run_dir.path}")
