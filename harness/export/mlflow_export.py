"""One run folder -> one MLflow run, in a local file store or at a tracking URI."""

from __future__ import annotations

import importlib.util
import os
import time

from harness.errors import HyperbenchError, missing_extra
from harness.export.runs import ExportRun

MAX_PARAM_VALUE = 6000  # MLflow refuses longer values (a prompt list in the config can be longer)
BATCH = 100  # MLflow's cap on params per log_batch call (metrics: 1000)


def export(runs: list[ExportRun], tracking_uri: str, experiment: str) -> list[str]:
    """Log each run; return the MLflow run ids, in order."""
    if importlib.util.find_spec("mlflow") is None:
        raise missing_extra("track", "mlflow")
    from mlflow.exceptions import MlflowException

    if tracking_uri.startswith("file:"):
        # MLflow 3 keeps its file store in maintenance mode behind this switch; a folder is what the
        # user asked for (no database, nothing to run), so say yes for this process only
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        return _export(runs, tracking_uri, experiment)
    except MlflowException as e:
        raise HyperbenchError(f"MLflow at {tracking_uri}: {e.message.splitlines()[0]}") from None


def _export(runs: list[ExportRun], tracking_uri: str, experiment: str) -> list[str]:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    ids = []
    for run in runs:
        now = int(time.time() * 1000)
        tags = {**{f"hyperbench.{k}": v for k, v in run.tags.items()},
                "hyperbench.run_folder": str(run.path.resolve())}
        r = client.create_run(exp_id, run_name=run.name, tags=tags)
        params = [Param(k, v[:MAX_PARAM_VALUE]) for k, v in run.params.items()]
        for i in range(0, len(params), BATCH):
            client.log_batch(r.info.run_id, params=params[i:i + BATCH])
        metrics = [Metric(m.key, m.value, now, m.step) for m in run.metrics]
        for i in range(0, len(metrics), 1000):
            client.log_batch(r.info.run_id, metrics=metrics[i:i + 1000])
        for rel in run.artifacts:
            client.log_artifact(r.info.run_id, str(run.path / rel),
                                artifact_path=str(rel.parent) if str(rel.parent) != "." else None)
        status = "FINISHED" if run.tags.get("status") == "complete" else "FAILED"
        client.set_terminated(r.info.run_id, status=status)
        ids.append(r.info.run_id)
    return ids
