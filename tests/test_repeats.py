"""bench --repeats: the sweep N times, each point's metrics as mean and 95% CI over the repeats."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness import cli as cli_module
from harness.bench.repeats import mean_ci, repeat_stats


def test_ci_uses_students_t():
    m = mean_ci([10.0, 12.0, 14.0])  # sd 2, n 3: t(2) = 4.303
    assert m["mean"] == 12.0 and m["n"] == 3
    assert m["ci95"] == pytest.approx(4.303 * 2 / 3 ** 0.5, rel=1e-4)
    assert mean_ci([5.0]) == {"mean": 5.0, "ci95": None, "n": 1}


def test_stats_group_by_load_and_leave_partial_points_out():
    pts = [{"rate": 2.0, "repeat": r, "completed": 4, "request_throughput": v, "ttft_ms": {"p50": v, "p99": v}}
           for r, v in ((1, 1.0), (2, 3.0))]
    pts.append({"rate": 2.0, "repeat": 3, "completed": 1, "partial": True, "request_throughput": 99.0})
    pts.append({"rate": "inf", "repeat": 1, "completed": 4, "request_throughput": 7.0})
    stats = repeat_stats(pts)
    assert [(e["rate"], e["repeats"]) for e in stats] == [(2.0, 2), ("inf", 1)]
    assert stats[0]["request_throughput"]["mean"] == 2.0 and stats[0]["ttft_ms.p50"]["ci95"] > 0


def test_repeats_zero_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_module.main(["bench", "--engine", "synthetic", "--repeats", "0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "repeats" in err and len(err.strip().splitlines()) == 1


def test_bench_repeats_end_to_end(tmp_path):
    res = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--engine", "synthetic", "--rate", "50,inf",
                          "--repeats", "2", "--num-requests", "4", "--output-len", "3", "--results-dir", str(tmp_path),
                          "--run-name", "r", "--no-plots"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    run = tmp_path / "r"
    s = json.loads((run / "summary.json").read_text())
    assert [(p["rate"], p["repeat"]) for p in s["points"]] == [(50.0, 1), ("inf", 1), (50.0, 2), ("inf", 2)]
    assert [(e["rate"], e["repeats"]) for e in s["repeat_stats"]] == [(50.0, 2), ("inf", 2)]
    ttft = s["repeat_stats"][0]["ttft_ms.p50"]
    assert ttft["n"] == 2 and ttft["ci95"] is not None
    assert ttft["mean"] == pytest.approx(sum(p["ttft_ms"]["p50"] for p in s["points"] if p["rate"] == 50.0) / 2)
    # each repeat's records are named apart, so `bench --resume` and `report` can tell them apart
    labels = {json.loads(line)["point"] for line in (run / "records.jsonl").read_text().splitlines()}
    assert {"rate=50#1", "rate=50#2", "rate=inf#1", "rate=inf#2"} <= labels
    assert "## Repeats" in (run / "report.md").read_text()
