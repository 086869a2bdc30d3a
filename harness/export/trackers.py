"""Run folders into a tracker (MLflow, W&B offline): what `hyperbench export` and every job's
`--export` share."""

from __future__ import annotations

import os
from pathlib import Path

TRACKERS = ("mlflow", "wandb")


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", "./mlruns")


def default_wandb_dir() -> Path:
    return Path(os.environ.get("WANDB_DIR", "."))


def export_runs(tracker: str, runs: list[Path], echo, tracking_uri: str | None = None,
                experiment: str = "hyperbench", project: str = "hyperbench", wandb_dir: Path | None = None) -> None:
    """Each run folder into the tracker, one line per run through `echo`; shared by `export` and
    every job's `--export`."""
    from harness.export.runs import read_run

    folders = [read_run(r) for r in runs]  # every folder checked before anything is logged
    if tracker == "mlflow":
        from harness.export.mlflow_export import export as to_mlflow

        tracking_uri = tracking_uri or default_tracking_uri()
        uri = tracking_uri if "://" in tracking_uri else Path(tracking_uri).resolve().as_uri()
        for run, run_id in zip(folders, to_mlflow(folders, uri, experiment)):
            echo(f"{run.path} -> mlflow run {run_id} ({len(run.metrics)} metrics, "
                 f"{len(run.artifacts)} artifacts) at {uri}")
    else:
        from harness.export.wandb_export import export as to_wandb

        wandb_dir = wandb_dir or default_wandb_dir()
        for run, folder in zip(folders, to_wandb(folders, wandb_dir, project)):
            echo(f"{run.path} -> wandb offline run {folder} ({len(run.metrics)} metrics, "
                 f"{len(run.artifacts)} artifacts)")
        echo(f"upload later with: wandb sync {Path(wandb_dir) / 'wandb'}/offline-run-*")
