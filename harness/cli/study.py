"""`hyperbench study`: thin; builds a StudyConfig (flags derived from the config tree) and runs it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from harness.cli.merge import read_file, refuse_with_resume
from harness.cli.options import with_options
from harness.config import Load, Target, Workload, build
from harness.errors import HyperbenchError
from harness.study.config import StudyConfig, StudyOutput, StudySpec


def _study_opts():
    from harness.cli.options import engine_options, section_options

    from harness.slurm import SlurmJob

    return section_options({"study": StudySpec, "workload": Workload, "load": Load, "target": Target,
                            "output": StudyOutput, "slurm": SlurmJob},
                           skip={"url", "resume", "rate", "max_concurrency", "submit", "job_log"},
                           helps={"tokenizer": TOKENIZER_HELP}) + engine_options()


# every variant is started by the study, from a folder or a .gguf: no --url
TOKENIZER_HELP = ("Tokenizer folder of the model: bench cells build synthetic prompts with it (exact input "
                  "lengths), score and agree cells read token ids with it [default: the served model's "
                  "folder; needed for a .gguf --model].")


@click.command(context_settings={"show_default": True})
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML study file.")
@click.option("--resume", type=click.Path(path_type=Path),
              help="Continue a study folder: only its missing cells run (no other options).")
@with_options(_study_opts())
def study(config_file, resume, **params):
    """Bench, score and agree (and tune) every variant, then one verdict against the reference.

    hyperbench study --model M --variants hf,hf:int8,llamacpp:q8_0 --tasks gsm8k,mmlu --concurrency 1,8
    """
    from harness.cli.options import collect
    from harness.study.run import run

    cli_data = collect(params)
    if resume is not None:
        refuse_with_resume(config_file, cli_data,
                           message="--resume continues a study with its saved plan: give no other options")
        cfg = StudyConfig(output=StudyOutput(resume=resume))
    else:
        cfg = build(StudyConfig, read_file(config_file), cli_data)
    folder = run(cfg, echo=lambda line: click.echo(line, err=True))
    print_verdict(folder)
    summary = folder.read_json("summary.json")
    if summary["status"] != "complete":  # as agree does: the report is written, the exit code says so
        raise HyperbenchError(f"study incomplete: {summary.get('reason')}; after a fix: "
                              f"hyperbench study --resume {folder.path}")


def print_verdict(folder) -> None:
    s = folder.read_json("summary.json")
    v = s["verdict"]
    click.echo(f"study {s['status']}" + (f" ({s['reason']})" if s.get("reason") else ""))
    click.echo(f"verdict: {v['answer']}")
    click.echo(f"report: {folder.file('report.md')}")
    sys.stdout.flush()
