"""`hyperbench export mlflow|wandb`: a real bench run folder (synthetic engine) exported into a real
MLflow file store and real W&B offline files, read back through each library's own API."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tests.test_cli_errors import assert_one_line_error, hb


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> Path:
    """A real bench run folder in seconds: two sweep points on the synthetic engine, with plots."""
    root = tmp_path_factory.mktemp("runs")
    res = hb("bench", "--engine", "synthetic", "--model", "tiny-llama", "--ttft-ms", "1", "--itl-ms", "1",
             "--concurrency", "1,2", "--input-len", "8", "--output-len", "4", "--num-requests", "2",
             "--results-dir", str(root), "--run-name", "b")
    assert res.returncode == 0, res.stderr[-2000:]
    return root / "b"


def test_mlflow_file_store_holds_params_steps_and_artifacts(bench_run, tmp_path):
    mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed: pip install 'hyperbench[track]'")
    store = tmp_path / "mlruns"
    res = hb("export", "mlflow", str(bench_run), "--tracking-uri", str(store), "--experiment", "exp")
    assert res.returncode == 0, res.stderr[-2000:]
    run_id = res.stdout.split("mlflow run ")[1].split()[0]

    import os

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    client = mlflow.tracking.MlflowClient(tracking_uri=store.resolve().as_uri())
    run = client.get_run(run_id)
    config = json.loads((bench_run / "config.json").read_text())
    summary = json.loads((bench_run / "summary.json").read_text())
    assert run.data.params["engine.kind"] == config["engine"]["kind"] == "synthetic"
    assert run.data.tags["hyperbench.kind"] == "bench" and run.info.status == "FINISHED"
    history = client.get_metric_history(run_id, "output_throughput")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
        [(i, p["output_throughput"]) for i, p in enumerate(summary["points"])]
    assert [m.value for m in sorted(client.get_metric_history(run_id, "concurrency"), key=lambda m: m.step)] == [1, 2]
    arts = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"summary.json", "config.json", "report.md", "plots/latency.png"} <= arts, arts


def wandb_records(run_file: Path):
    """The records of a W&B .wandb file, decoded with wandb's own protobuf Record: the file is a
    leveldb-style log (7-byte ':W&B' header, 32 KiB blocks of crc/length/type-framed chunks)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, block = 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left in the block for a header: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        buf += chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            rec = Record()
            rec.ParseFromString(buf)
            yield rec
            buf = b""


def test_wandb_offline_run_holds_config_steps_and_artifacts(bench_run, tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed: pip install 'hyperbench[track]'")
    res = hb("export", "wandb", str(bench_run), "--dir", str(tmp_path), "--project", "p")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "wandb sync" in res.stdout
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    config, steps, artifact_files = {}, {}, set()
    for rec in wandb_records(run_file):
        which = rec.WhichOneof("record_type")
        if which in ("run", "config"):  # the config at init, then any updates
            updates = rec.run.config.update if which == "run" else rec.config.update
            config.update({i.key: json.loads(i.value_json) for i in updates})
        elif which == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item}
            steps[items["_step"]] = items
        elif which == "artifact":
            artifact_files |= {e.path for e in rec.artifact.manifest.contents}
    summary = json.loads((bench_run / "summary.json").read_text())
    assert config["engine"] == json.loads((bench_run / "config.json").read_text())["engine"], config
    assert sorted(steps) == [0, 1]
    assert [steps[i]["output_throughput"] for i in (0, 1)] == [p["output_throughput"] for p in summary["points"]]
    assert {"summary.json", "config.json", "report.md", "plots/latency.png"} <= artifact_files, artifact_files


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_folder_that_is_not_a_run_is_one_line(tmp_path, tracker):
    assert_one_line_error(hb("export", tracker, str(tmp_path), "--tracking-uri", str(tmp_path / "m"),
                             "--dir", str(tmp_path)), f"{tmp_path} is not a run folder (no summary.json)")
    assert not (tmp_path / "m").exists() and not (tmp_path / "wandb").exists()


def write_run(folder: Path, summary: dict) -> Path:
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"schema_version": 1, "status": "complete", **summary}))
    (folder / "config.json").write_text(json.dumps({"engine": {"kind": "hf", "dtype": "float32"}}))
    return folder


def test_score_tasks_and_tune_trials_become_metrics(tmp_path):
    """The score and tune readers on summaries of the shape those jobs write (harness/score/run.py,
    harness/tune/run.py): a metric per task and lm-eval metric; a step per trial."""
    from harness.export.runs import read_run

    score = read_run(write_run(tmp_path / "s", {"kind": "score", "tasks": {
        "gsm8k": {"metrics": {"exact_match,strict-match": {"value": 0.25, "stderr": 0.1}}},
        "mmlu_anatomy": {"metrics": {"acc": {"value": 0.5, "stderr": None}}}}}))
    assert {(m.key, m.value, m.step) for m in score.metrics} == {
        ("gsm8k/exact_match_strict-match", 0.25, 0), ("gsm8k/exact_match_strict-match_stderr", 0.1, 0),
        ("mmlu_anatomy/acc", 0.5, 0)}
    assert score.params == {"engine.kind": "hf", "engine.dtype": "float32"}
    tune = read_run(write_run(tmp_path / "t", {"kind": "tune", "trials": [
        {"index": 0, "params": {"temperature": 0.8}, "metrics": {"accuracy": {"mean": 0.1, "sem": 0.05}}},
        {"index": 1, "params": {"temperature": 0.2}, "status": "failed"}]}))
    assert {(m.key, m.value, m.step) for m in tune.metrics} == {
        ("param/temperature", 0.8, 0), ("accuracy", 0.1, 0), ("param/temperature", 0.2, 1)}
    assert [str(a) for a in tune.artifacts] == ["summary.json", "config.json"]


def test_a_kind_that_cannot_be_exported_is_one_line(tmp_path):
    run = write_run(tmp_path / "c", {"kind": "study"})
    assert_one_line_error(hb("export", "mlflow", str(run), "--tracking-uri", str(tmp_path / "m")),
                          "kind 'study'; one of bench, score, tune, agree, compare")
