"""`--export mlflow|wandb` on every job: the finished run folder exported as `hyperbench export`
would, with the tracker's settings from the environment (MLFLOW_TRACKING_URI, WANDB_DIR).

The run folder is written before the export starts and is never touched by it: an export that
fails (no extra installed, a tracking server down) is one line and a non-zero exit, and the
folder can be exported again later with `hyperbench export`."""

from __future__ import annotations

import click

from harness.errors import HyperbenchError
from harness.export.trackers import TRACKERS

export_option = click.option(
    "--export", "export_tracker", type=click.Choice(TRACKERS),
    help="When the run folder is written, export it to MLflow ($MLFLOW_TRACKING_URI or ./mlruns) "
         "or W&B offline ($WANDB_DIR or .), as `hyperbench export` does.")


def export_finished(tracker: str | None, run_path) -> None:
    if not tracker:
        return
    from harness.export.trackers import export_runs

    try:
        export_runs(tracker, [run_path], lambda line: click.echo(f"export: {line}"))
    except Exception as e:  # noqa: BLE001 - whatever the tracker raises, the run itself stands
        line = (str(e) or type(e).__name__).splitlines()[0]
        raise HyperbenchError(f"export to {tracker} failed: {line} (the run folder is kept: {run_path}; "
                              f"retry with: hyperbench export {tracker} {run_path})") from None
