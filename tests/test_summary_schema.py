"""summary.json is typed (harness/summary_schema.py): the committed run folders of schema 1 read
through the models exactly as written, a newer version is one line naming it, and a job cannot
write a summary of a shape its readers do not know (the file is kept all the same)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import HyperbenchError
from harness.results import RunFolder
from harness.summary_schema import BenchSummary, parse_summary

ROOT = Path(__file__).resolve().parents[1]
H100 = ROOT / "benchmarks" / "gpu" / "results" / "h100-2026-12-06"
H100_RUNS = sorted(p.parent for p in H100.glob("*/summary.json"))


@pytest.mark.parametrize("run", H100_RUNS, ids=lambda p: p.name)
def test_committed_schema_1_folders_read_typed_and_unchanged(run):
    from harness.compare.run import read_run

    raw = json.loads((run / "summary.json").read_text())
    summary = RunFolder(run).typed_summary()
    assert isinstance(summary, BenchSummary) and summary.status == "complete" and summary.points
    p = summary.points[0]
    assert p.completed == raw["points"][0]["completed"] and p.ttft_ms.p50 == raw["points"][0]["ttft_ms"]["p50"]
    entry = read_run(RunFolder(run))  # compare's reader: the points as written, nothing added
    assert entry.points == raw["points"] and entry.status == "complete"
    assert summary.model_dump(mode="json", exclude_unset=True) == raw


def test_a_newer_schema_version_is_one_line_naming_it(tmp_path):
    run = tmp_path / "future"
    shutil.copytree(H100_RUNS[0], run)
    data = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**data, "schema_version": 2}))
    res = subprocess.run([sys.executable, "-m", "harness.cli", "compare", str(run), str(H100_RUNS[0]),
                          "--results-dir", str(tmp_path / "c"), "--no-plots"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().count("\n") == 0 and "schema_version 2" in res.stderr, res.stderr
    assert "reads 1" in res.stderr


def test_a_summary_without_a_version_is_refused_in_one_line():
    with pytest.raises(HyperbenchError, match="has no schema_version: not a hyperbench run summary"):
        parse_summary({"kind": "bench", "points": []})


def test_a_summary_of_the_wrong_shape_is_written_then_refused_naming_the_field(tmp_path):
    folder = RunFolder(tmp_path)
    bad = {"schema_version": 1, "kind": "bench", "status": "complete", "points": [{"completed": "many"}]}
    with pytest.raises(HyperbenchError, match=r"is not a bench summary of schema 1: points\.0\.completed"):
        folder.write_json("summary.json", bad)
    assert json.loads((tmp_path / "summary.json").read_text()) == bad  # never lose what a run made


def test_each_kind_has_its_model():
    base = {"schema_version": 1, "status": "complete"}
    score = parse_summary({**base, "kind": "score", "tasks": {"gsm8k": {"metrics": {
        "exact_match": {"value": 0.5, "stderr": "N/A"}}}}})
    assert score.tasks["gsm8k"].metrics["exact_match"].value == 0.5
    tune = parse_summary({**base, "kind": "tune", "trials": [
        {"index": 0, "status": "completed", "params": {"temperature": 0.2},
         "metrics": {"exact_match": {"mean": 0.4, "sem": 0.1}}}]})
    assert tune.trials[0].metrics["exact_match"].mean == 0.4
    agree = parse_summary({**base, "kind": "agree", "reference": "hf", "engines": [
        {"label": "hf", "kind": "hf", "status": "ok"}], "agreement": {"llamacpp": {
            "compared_by": "ids", "greedy": {"identical": 3}}}})
    assert agree.agreement["llamacpp"].greedy["identical"] == 3
    with pytest.raises(HyperbenchError, match="status: Input should be"):
        parse_summary({**base, "kind": "bench", "status": "done"})
