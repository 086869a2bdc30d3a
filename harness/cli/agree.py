"""`hyperbench quantize` and `hyperbench agree`: thin commands (registered in harness/cli/main.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from harness.cli.merge import read_file, refuse_with_resume
from harness.cli.options import with_options
from harness.errors import HyperbenchError
from harness.export.after_job import export_finished, export_option


def _agree_opts():
    from harness.agree.config import AgreeSettings
    from harness.cli.options import engine_options, section_options
    from harness.config import Output, Target

    return section_options({"agree": AgreeSettings, "target": Target, "output": Output},
                           skip={"url", "plots"},
                           helps={"tokenizer": "Tokenizer folder that turns the prompts into the token ids "
                                  "every engine is sent [default: the --model folder; needed when "
                                  "--model is a .gguf with no tokenizer folder beside it]."}) + engine_options()


@click.command(context_settings={"show_default": True})
@click.option("--model", default="smollm2-135m", help="Built-in model name, HF folder, or an f32/f16/bf16 .gguf.")
@click.option("--to", "types", required=True, help="GGUF types to make, e.g. q4_k_m,q8_0 "
              "(f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m).")
def quantize(model, types):
    """GGUF variants of one model's weights (cached where the llama.cpp engine serves them from)."""
    from harness.agree.quantize import parse_types, run

    made = run(model, parse_types(types))  # gguf.py says on stderr what it converts or quantizes
    click.echo(f"{'type':8s} {'file type':10s} {'size MB':>9s} {'bits/weight':>11s} {'params':>12s}  path")
    for v in made:
        click.echo(f"{v.quant:8s} {v.file_type:10s} {v.file_bytes / 1e6:9.1f} {v.bits_per_weight:11.2f} "
                   f"{v.n_params:12,d}  {v.path}")


@click.command(context_settings={"show_default": True})
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML experiment file.")
@click.option("--engines", help="Engines and variants, the reference first: "
              "hf,llamacpp:q8_0,llamacpp:q4_k_m,vllm (kind[:quant][:option=value...]).")
@click.option("--resume", type=click.Path(path_type=Path),
              help="Finish a cut agree run folder (its saved config; no other flags).")
@export_option
@with_options(_agree_opts())
def agree(config_file, engines, resume, export_tracker, **params):
    """Cross-engine agreement on the same weights: greedy tokens, prompt logprobs and next-token
    KL of each engine/quantization against a reference (the first engine, or --reference)."""
    from harness.agree.config import build_config
    from harness.agree.run import run
    from harness.agree.run import resume as resume_run
    from harness.cli.options import collect

    file_data = read_file(config_file)
    cli_data = collect(params)

    def say(label, failed=None):
        if sys.stderr.isatty():  # in a log, the one error line at the end says what failed
            click.echo(f"agree: {label} failed: {failed}" if failed else f"agree: {label} ...", err=True)

    if resume is not None:
        refuse_with_resume(config_file, engines, cli_data)
        folder = resume_run(resume, progress=say)
        _finish(folder, export_tracker)
        return
    if engines:
        cli_data["engines"] = [e.strip() for e in engines.split(",") if e.strip()]
    if "engines" not in cli_data and "engines" not in file_data:
        raise HyperbenchError("agree needs --engines, e.g. --engines hf,llamacpp:q8_0,llamacpp:q4_k_m")
    cfg = build_config(file_data, cli_data)
    _finish(run(cfg, progress=say), export_tracker)


def _finish(folder, export_tracker=None) -> None:
    _print(folder)
    export_finished(export_tracker, folder.path)  # an incomplete run is exported too (status FAILED)
    summary = folder.read_json("summary.json")
    if summary["status"] != "complete":
        raise HyperbenchError(f"agree {summary['status']}: {summary.get('reason', '')} (run folder: {folder.path})")


def _print(folder) -> None:
    from rich.console import Console
    from rich.table import Table

    from harness.agree.report import COLUMNS, rows

    s = folder.read_json("summary.json")
    t = Table(title=f"hyperbench agree: {s['model']} against {s['reference']} "
                    f"({s['prompts']} prompts, {s['max_tokens']} greedy tokens, top-{s['top_logprobs']})")
    for col in ("engine", "weights", "compared by", *(c for c, _ in COLUMNS)):
        t.add_column(col, justify="left" if col in ("engine", "weights", "compared by") else "right")
    for r in rows(s):
        t.add_row(*r)
    Console(width=None if sys.stdout.isatty() else 220).print(t)
    click.echo("KL: a lower bound over the shared top-K tokens plus one bucket for the rest (see report.md)")
    click.echo(f"run folder: {folder.path}")
