"""One run folder -> one W&B run in offline mode: files under DIR/wandb/offline-run-*, uploaded
later with `wandb sync` where the network allows (no account or network needed here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from harness.errors import missing_extra
from harness.export.runs import ExportRun, metric_key


def export(runs: list[ExportRun], directory: Path, project: str) -> list[Path]:
    """Log each run offline; return each run's offline folder."""
    if importlib.util.find_spec("wandb") is None:
        raise missing_extra("track", "wandb")
    import wandb

    directory.mkdir(parents=True, exist_ok=True)
    folders = []
    for run in runs:
        # settings, not env vars: the caller's WANDB_MODE / API key never turn this into an upload
        w = wandb.init(project=project, name=run.name, dir=str(directory), config=run.config,
                       tags=[f"{k}:{v}"[:64] for k, v in run.tags.items()],  # W&B caps a tag at 64
                       reinit="create_new",
                       settings=wandb.Settings(mode="offline", silent=True, console="off",
                                               x_disable_stats=True, x_disable_meta=True))
        by_step: dict[int, dict[str, float]] = {}
        for m in run.metrics:
            by_step.setdefault(m.step, {})[m.key] = m.value
        for step in sorted(by_step):
            w.log(by_step[step], step=step)
        art = wandb.Artifact(metric_key(f"{run.kind}-{run.name}").replace("/", "-"), type=f"hyperbench-{run.kind}")
        for rel in run.artifacts:
            art.add_file(str(run.path / rel), name=str(rel))
        w.log_artifact(art)
        w.summary["hyperbench.status"] = run.tags.get("status", "")
        folders.append(Path(w.dir).parent)  # .../offline-run-<time>-<id>/files -> the run folder
        w.finish(exit_code=0 if run.tags.get("status") == "complete" else 1)
    return folders

