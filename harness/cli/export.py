"""`hyperbench export mlflow|wandb RUN...`: thin command (registered in harness/cli/main.py)."""

from __future__ import annotations

from pathlib import Path

import click

from harness.export.trackers import TRACKERS, default_tracking_uri, default_wandb_dir, export_runs


@click.command(context_settings={"show_default": True})
@click.argument("tracker", type=click.Choice(TRACKERS))
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--tracking-uri", default=default_tracking_uri, show_default="$MLFLOW_TRACKING_URI or ./mlruns",
              help="mlflow: a local folder (MLflow's file store), sqlite:///mlflow.db, or a tracking server URI.")
@click.option("--experiment", default="hyperbench", help="mlflow: experiment name.")
@click.option("--project", default="hyperbench", help="wandb: project name.")
@click.option("--dir", "wandb_dir", type=click.Path(path_type=Path), default=default_wandb_dir,
              show_default="$WANDB_DIR or .",
              help="wandb: folder the offline runs are written under (DIR/wandb/offline-run-*).")
def export(tracker, runs, tracking_uri, experiment, project, wandb_dir):
    """Run folders as MLflow or W&B (offline) runs: config as params, metrics, report and plots."""
    export_runs(tracker, list(runs), click.echo, tracking_uri, experiment, project, wandb_dir)
