"""`hyperbench bench` end to end on the tiny model: a complete run folder, then `report` on it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml


def hb(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_bench_concurrency_sweep_writes_complete_run(tmp_path, tiny_model):
    res = hb("bench", "--engine", "hf", "--model", str(tiny_model), "--dtype", "float32",
             "--concurrency", "1,4", "--input-len", "16", "--output-len", "8", "--num-requests", "8",
             "--slo", "ttft=60000,tpot=60000", "--results-dir", str(tmp_path), "--run-name", "r1")
    assert res.returncode == 0, res.stderr
    run = tmp_path / "r1"
    for name in ("config.json", "env.json", "engine.json", "engine.log", "records.jsonl", "summary.json",
                 "report.md", "plots/latency.png", "plots/throughput.png"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["schema_version"] == 1 and summary["status"] == "complete"
    assert [p["concurrency"] for p in summary["points"]] == [1, 4]
    for p in summary["points"]:
        assert p["completed"] == 8 and p["failed"] == 0
        assert p["output_tokens"] == 8 * 8  # fixed output length honoured (min_tokens + ignore_eos)
        assert p["prompt_tokens"] == 8 * 16  # exact synthetic prompt lengths
        assert 0 < p["ttft_ms"]["p50"] <= p["e2e_ms"]["p50"]
        assert p["tpot_ms"]["p50"] > 0 and p["output_throughput"] > 0
        assert p["goodput"] == p["request_throughput"]  # SLOs generous enough for every request
    records = [json.loads(x) for x in (run / "records.jsonl").read_text().splitlines()]
    assert len(records) == 16 and all(r["error"] is None for r in records)
    assert all(len(r["token_times"]) >= 1 and r["output_tokens"] == 8 for r in records)
    config = json.loads((run / "config.json").read_text())
    assert config["load"]["concurrency"] == [1, 4] and config["engine"]["dtype"] == "float32"
    assert json.loads((run / "engine.json").read_text())["engine"] == "hf"
    assert "| concurrency=4 |" in (run / "report.md").read_text()

    (run / "report.md").unlink()
    res = hb("report", str(run))
    assert res.returncode == 0, res.stderr
    assert "concurrency=1" in (run / "report.md").read_text()


def test_bench_poisson_rate_from_yaml(tmp_path, tiny_model):
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({
        "engine": {"kind": "hf", "model": str(tiny_model), "dtype": "float32"},
        "workload": {"input_len": 8, "output_len": 4, "num_requests": 6, "seed": 3},
        "load": {"rate": [5.0, "inf"]},
        "output": {"results_dir": str(tmp_path), "run_name": "from-file", "plots": False},
    }))
    # CLI overrides the file: fewer requests than the file asks for
    res = hb("bench", "--config", str(exp), "--num-requests", "5")
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "from-file" / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert [p["rate"] for p in summary["points"]] == [5.0, "inf"]
    assert all(p["completed"] == 5 for p in summary["points"])
    config = json.loads((tmp_path / "from-file" / "config.json").read_text())
    assert config["workload"]["num_requests"] == 5 and config["workload"]["seed"] == 3


def test_interrupted_bench_keeps_records_and_tears_down(tmp_path, tiny_model):
    """SIGTERM (or Ctrl-C) mid-sweep: finished records kept, run marked incomplete, engine gone."""
    import os
    import signal
    import time

    import psutil

    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "bench", "--engine", "hf", "--model", str(tiny_model),
         "--dtype", "float32", "--concurrency", "1", "--input-len", "8", "--output-len", "200",
         "--num-requests", "400", "--results-dir", str(tmp_path), "--run-name", "cut"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = tmp_path / "cut" / "records.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (records.exists() and records.read_text().count("\n") >= 3):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    engines = [c for c in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["status"] == "incomplete" and summary["reason"] == "interrupted"
    kept = [json.loads(x) for x in records.read_text().splitlines()]
    assert len(kept) >= 3 and all(r["error"] is None for r in kept[:3])
    time.sleep(1)
    assert engines and not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in engines)
    assert os.path.exists(tmp_path / "cut" / "report.md")


def _table_rows(stdout: str) -> dict[str, list[str]]:
    """bench's terminal table (rich, box drawing) as {first cell: cells}, the header under 'point'."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")[1:-1]]
        if cells:
            rows[cells[0]] = cells
    return rows


def test_terminal_table_shows_goodput_when_slos_are_set(tmp_path):
    """The synthetic engine's first token comes after 20 ms: an SLO of TTFT 5 ms is met by no
    request (goodput 0), one of 5 s by every request (goodput = req/s)."""
    common = ["bench", "--engine", "synthetic", "--model", "tiny-llama", "--ttft-ms", "20", "--itl-ms", "1",
              "--input-len", "8", "--output-len", "4", "--num-requests", "4", "--no-plots",
              "--results-dir", str(tmp_path)]
    res = hb(*common, "--concurrency", "1,2", "--slo", "ttft=5", "--run-name", "slo")
    assert res.returncode == 0, res.stderr
    rows = _table_rows(res.stdout)
    col = rows["point"].index("goodput req/s")
    summary = json.loads((tmp_path / "slo" / "summary.json").read_text())
    for p in summary["points"]:
        assert p["goodput"] == 0 and rows[f"concurrency={p['concurrency']}"][col] == "0"

    res = hb(*common, "--concurrency", "1", "--slo", "ttft=5000,e2e=5000", "--run-name", "met")
    assert res.returncode == 0, res.stderr
    rows = _table_rows(res.stdout)
    req_s, goodput = (rows["concurrency=1"][rows["point"].index(c)] for c in ("req/s", "goodput req/s"))
    assert goodput == req_s != "0"

    from harness.bench.report import terminal_columns  # without --slo a point has no goodput: no column

    assert "goodput req/s" not in [name for name, _ in terminal_columns([{"concurrency": 1}])]


def test_rate_inf_is_ticked_inf_in_the_plots(tmp_path, monkeypatch):
    """rate=inf is drawn right of the highest finite rate (at 2x it): its tick must say "inf", in
    bench's plots and in compare's. A real rate sweep (synthetic engine); the figures are caught
    as the plot code closes them."""
    res = hb("bench", "--engine", "synthetic", "--model", "tiny-llama", "--ttft-ms", "1", "--itl-ms", "1",
             "--rate", "4,16,inf", "--input-len", "8", "--output-len", "4", "--num-requests", "3",
             "--no-plots", "--results-dir", str(tmp_path), "--run-name", "r")
    assert res.returncode == 0, res.stderr
    import matplotlib.pyplot as plt

    from harness.compare.plots import write_plots as compare_plots
    from harness.compare.run import read_run
    from harness.bench.report import write_plots
    from harness.results import RunFolder

    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    run = RunFolder(tmp_path / "r")
    assert write_plots(run, run.read_json("summary.json")["points"]) == ["latency.png", "throughput.png"]
    entry = read_run(run)
    entry.label = "synthetic"
    assert compare_plots(run, [entry]) == ["compare_throughput.png", "compare_latency.png"]
    axes = [ax for fig in figs for ax in fig.axes]
    assert len(axes) == 3 + 1 + 2 + 3
    for ax in axes:
        ticks = dict(zip(ax.get_xticks(), (t.get_text() for t in ax.get_xticklabels())))
        assert ticks == {4: "4", 16: "16", 32: "inf"}, (ax.get_title(), ticks)
        assert ax.get_xaxis().get_minorticklabels() == [] or not any(
            t.get_text() for t in ax.get_xaxis().get_minorticklabels())
        plotted = {x for line in ax.get_lines() for x in line.get_xdata()}
        assert plotted == {4, 16, 32}  # inf at 2x the highest finite rate, where its tick is


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupted_point_is_summarized_as_partial(tmp_path, sig):
    """A stop during the second sweep point: the first point is summarized whole, the second over
    its finished requests, marked partial with the requests it was to send; the run stays
    incomplete. (It used to get no entry: `points` lacked what records.jsonl held.) The synthetic
    engine: 20 streams at once finish in ~0.2 s, then one at a time take ~0.2 s each."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "bench", "--engine", "synthetic", "--model", "tiny-llama",
         "--ttft-ms", "5", "--itl-ms", "20", "--concurrency", "20,1", "--input-len", "8", "--output-len", "10",
         "--num-requests", "20", "--slo", "e2e=60000", "--results-dir", str(tmp_path), "--run-name", "cut",
         "--no-plots"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's foreground job
    records = tmp_path / "cut" / "records.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (records.exists() and records.read_text().count("\n") >= 23):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err

    kept = [json.loads(x) for x in records.read_text().splitlines()]
    second = [r for r in kept if r["point"] == "concurrency=1"]
    assert len(kept) - len(second) == 20 and 3 <= len(second) < 20
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["status"] == "incomplete" and summary["reason"] == "interrupted"
    whole, partial = summary["points"]
    assert whole["concurrency"] == 20 and whole["completed"] == 20 and "partial" not in whole
    assert partial["concurrency"] == 1 and partial["partial"] is True and partial["planned_requests"] == 20
    assert partial["requests"] == partial["completed"] == len(second) and partial["failed"] == 0
    assert partial["output_tokens"] == 10 * len(second) and partial["output_throughput"] > 0
    e2e_ms = sorted((r["end"] - r["send"]) * 1000 for r in second)  # over the finished requests only
    assert e2e_ms[0] <= partial["e2e_ms"]["p50"] <= e2e_ms[-1]
    assert partial["e2e_ms"]["max"] == pytest.approx(e2e_ms[-1])
    assert partial["goodput"] == partial["request_throughput"]  # the SLOs are applied to it too
    report = (tmp_path / "cut" / "report.md").read_text()
    assert f"| concurrency=1 (partial) | {len(second)}/{len(second)} |" in report
    assert f"concurrency=1 (partial): cut short; {len(second)} of 20 requests finished" in report
