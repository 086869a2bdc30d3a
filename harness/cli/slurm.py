"""`hyperbench slurm`: a SLURM batch script that runs this bench under Apptainer, or its submission."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from harness.cli.bench import STARTED_TOKENIZER_HELP, bench_options
from harness.cli.merge import merge_engine, read_file
from harness.cli.options import engine_options, section_options, with_options
from harness.config import BenchConfig, build


def slurm_options(skip: frozenset = frozenset()):
    from harness.slurm import SlurmJob

    return section_options({"slurm": SlurmJob}, skip=skip)


@click.command(context_settings={"show_default": True})
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML experiment file.")
@click.option("--engine", "engine_kind", help="Engine to bench: hf, llamacpp, llama-server, vllm (synthetic: the test engine).")
@click.option("--slo", help="Goodput SLOs in ms, e.g. ttft=500,tpot=50,e2e=5000.")
@with_options(bench_options(STARTED_TOKENIZER_HELP) + engine_options() + slurm_options())
def slurm(config_file, engine_kind, slo, **params):
    """Print a SLURM batch script that runs this bench under Apptainer (> job.sbatch), or --submit it."""
    from harness.cli.options import collect, parse_slo
    from harness.slurm import SlurmJob, render

    data = collect(params)
    job = build(SlurmJob, {}, data.pop("slurm", {}))
    file_data = read_file(config_file)
    merge_engine(file_data, data, engine_kind)
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
