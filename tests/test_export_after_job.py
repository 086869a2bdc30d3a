"""`--export` on a job: a real hf bench on tiny-llama exported into a real MLflow file store when its
run folder is done, read back through MLflow's API; a compare of it exported the same way; an
export that fails is one line, and the run folder stays."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.test_cli_errors import assert_one_line_error


def hb_env(*args, **env):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


def test_bench_and_compare_export_to_mlflow_file_store(tmp_path):
    mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed: pip install 'hyperbench[track]'")
    store = tmp_path / "mlruns"
    res = hb_env("bench", "--engine", "hf", "--model", "tiny-llama", "--concurrency", "1", "--input-len", "8",
                 "--output-len", "4", "--num-requests", "2", "--no-plots", "--results-dir", str(tmp_path),
                 "--run-name", "b", "--export", "mlflow", MLFLOW_TRACKING_URI=str(store))
    assert res.returncode == 0, res.stderr[-2000:]
    run_id = res.stdout.split("mlflow run ")[1].split()[0]
    res2 = hb_env("compare", str(tmp_path / "b"), "--no-plots", "--results-dir", str(tmp_path),
                  "--run-name", "cmp", "--export", "mlflow", MLFLOW_TRACKING_URI=str(store))
    assert res2.returncode == 0, res2.stderr[-2000:]
    cmp_id = res2.stdout.split("mlflow run ")[1].split()[0]

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    client = mlflow.tracking.MlflowClient(tracking_uri=store.resolve().as_uri())
    run = client.get_run(run_id)
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert run.info.status == "FINISHED" and run.data.tags["hyperbench.kind"] == "bench"
    assert run.data.params["engine.kind"] == "hf" and run.data.params["engine.model"] == "tiny-llama"
    (tput,) = client.get_metric_history(run_id, "output_throughput")
    assert tput.value == summary["points"][0]["output_throughput"] > 0
    assert "summary.json" in {a.path for a in client.list_artifacts(run_id)}

    label = json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"][0]["label"]
    cmp = client.get_run(cmp_id)
    assert cmp.data.tags["hyperbench.kind"] == "compare" and cmp.info.status == "FINISHED"
    (same,) = client.get_metric_history(cmp_id, f"{label}/output_throughput")
    assert same.value == tput.value
    assert {"compare.json", "report.md"} <= {a.path for a in client.list_artifacts(cmp_id)}


def test_failed_export_is_one_line_and_keeps_the_run(tmp_path):
    pytest.importorskip("mlflow", reason="mlflow is not installed: pip install 'hyperbench[track]'")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = hb_env("bench", "--engine", "synthetic", "--model", "tiny-llama", "--ttft-ms", "1", "--itl-ms", "1",
                 "--concurrency", "1", "--input-len", "8", "--output-len", "4", "--num-requests", "2",
                 "--no-plots", "--results-dir", str(tmp_path), "--run-name", "s", "--export", "mlflow",
                 MLFLOW_TRACKING_URI=str(blocker / "mlruns"))
    assert_one_line_error(res, "export to mlflow failed", "the run folder is kept")
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["status"] == "complete"
