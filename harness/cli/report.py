"""`hyperbench report RUN`: write (again) a run folder's report, by the kind of run it is."""

from __future__ import annotations

from pathlib import Path

import click


def _bench(run, summary: dict, plots: bool) -> None:
    from harness.bench.report import write_report
    from harness.bench.resume import rebuild_summary, was_cut

    if was_cut(summary):  # killed: its records are all there is; summarize them, once
        run.write_json("summary.json", rebuild_summary(run, summary))
    write_report(run, plots=plots)


def _score(run, summary: dict, plots: bool) -> None:
    from harness.score.report import write_report

    write_report(run)


def _tune(run, summary: dict, plots: bool) -> None:
    from harness.tune.report import write_report

    write_report(run, plots=plots)


def _study(run, summary: dict, plots: bool) -> None:
    from harness.study.report import write_report

    write_report(run, summary, plots=plots)


# summary.json's "kind" -> the writer of its report.md; each job's report module is imported only
# when a run of that kind is reported. A run with no kind (or another) is written as a bench run.
REPORT_WRITERS = {"bench": _bench, "score": _score, "tune": _tune, "study": _study}


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--no-plots", is_flag=True, help="Skip PNG plots.")
def report(run_dir, no_plots):
    """Write (again) the markdown report and plots of a run folder."""
    from harness.results import RunFolder

    run = RunFolder.open(run_dir)
    summary = run.summary()
    write = REPORT_WRITERS.get(summary.get("kind"), _bench)
    write(run, summary, plots=not no_plots)
    click.echo(run.file("report.md"))
