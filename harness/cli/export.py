"""`hyperbench export mlflow|wandb RUN...`: thin command (registered in harness/cli/main.py)."""

from __future__ import annotations

import os
from pathlib import Path

import click


@click.command(context_settings={"show_default": True})
@click.argument("tracker", type=click.Choice(["mlflow", "wandb"]))
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--tracking-uri", default=lambda: os.environ.get("MLFLOW_TRACKING_URI", "./mlruns"),
              show_default="$MLFLOW_TRACKING_URI or ./mlruns",
              help="mlflow: a local folder (MLflow's file store), sqlite:///mlflow.db, or a tracking server URI.")
@click.option("--experiment", default="hyperbench", help="mlflow: experiment name.")
@click.option("--project", default="hyperbench", help="wandb: project name.")
@click.option("--dir", "wandb_dir", type=click.Path(path_type=Path), default=Path("."),
              help="wandb: folder the offline runs are written under (DIR/wandb/offline-run-*).")
def export(tracker, runs, tracking_uri, experiment, project, wandb_dir):
    """Run folders as MLflow or W&B (offline) runs: config as params, metrics, report and plots."""
    from harness.export.runs import read_run

    folders = [read_run(r) for r in runs]  # every folder checked before anything is logged
    if tracker == "mlflow":
        from harness.export.mlflow_export import export as to_mlflow

        uri = tracking_uri if "://" in tracking_uri else Path(tracking_uri).resolve().as_uri()
        for run, run_id in zip(folders, to_mlflow(folders, uri, experiment)):
            click.echo(f"{run.path} -> mlflow run {run_id} ({len(run.metrics)} metrics, "
                       f"{len(run.artifacts)} artifacts) at {uri}")
    else:
        from harness.export.wandb_export import export as to_wandb

        for run, folder in zip(folders, to_wandb(folders, wandb_dir, project)):
            click.echo(f"{run.path} -> wandb offline run {folder} ({len(run.metrics)} metrics, "
                       f"{len(run.artifacts)} artifacts)")
        click.echo(f"upload later with: wandb sync {Path(wandb_dir) / 'wandb'}/offline-run-*")
