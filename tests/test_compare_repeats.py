"""`compare --repeats N`: engines interleaved repeat by repeat, each engine's repeats merged into
one run folder, and a difference called only when Welch's t says it is significant. Real bench
runs of the synthetic engine (known timings: one engine made slower by a known TTFT)."""

from __future__ import annotations

import json

import pytest

from harness.compare.run import read_run, write_comparison
from harness.compare.repeats import run_interleaved, significance, welch
from harness.config import BenchConfig, Load, Output, Workload
from harness.results import RunFolder


def test_welch_calls_only_a_real_difference():
    assert welch([10.0, 10.2, 9.9], [12.0, 12.1, 11.8])["significant"]
    # overlapping spreads: the means differ, the repeats do not say they do
    assert not welch([10.0, 12.0, 9.0], [11.0, 9.5, 12.5])["significant"]
    assert welch([1.0], [2.0, 3.0]) is None  # one repeat: no spread, no test
    # Welch-Satterthwaite df: equal variances and sizes give n_a + n_b - 2
    assert welch([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])["df"] == pytest.approx(4.0)


def test_interleaved_repeats_merged_and_tested(tmp_path):
    runs = tmp_path / "cmp" / "runs"
    cells = []
    for name, ttft in (("fast", 5), ("slow", 40)):
        cells.append((name, name, BenchConfig(
            engine={"kind": "synthetic", "ttft_ms": ttft, "itl_ms": 1},
            workload=Workload(input_len=8, output_len=4, num_requests=6, warmup=0),
            load=Load(concurrency=[2], repeats=3, metrics_interval_s=0),
            output=Output(results_dir=runs, run_name=name, plots=False))))
    order = []

    def bench_run(cfg, progress=None):
        from harness.bench.run import run

        order.append((cfg.output.results_dir.name, cfg.output.run_name))
        return run(cfg, progress)

    run_interleaved(cells, 3, bench_run)
    # A rep 1, B rep 1, A rep 2, ...: a drift of the machine lands on both engines alike
    assert order == [(e, f"rep{r}") for r in (1, 2, 3) for e in ("fast", "slow")]
    merged = json.loads((runs / "fast" / "summary.json").read_text())
    assert merged["status"] == "complete" and [p["repeat"] for p in merged["points"]] == [1, 2, 3]
    stats = merged["repeat_stats"][0]
    assert stats["repeats"] == 3 and stats["ttft_ms.p50"]["ci95"] is not None
    entries = [read_run(RunFolder(runs / n)) for n in ("fast", "slow")]
    for e, n in zip(entries, ("fast", "slow")):
        e.label = n
    rows = {r["metric"]: r for r in significance(entries)}
    ttft = rows["ttft_ms.p50"]
    assert ttft["welch"]["significant"] and ttft["better"] == "fast"
    # 35 ms injected apart; the client's own share on a loaded machine moves both, not the gap
    assert 25 < ttft["b_mean"]["mean"] - ttft["a_mean"]["mean"] < 45
    data = write_comparison(RunFolder.create(tmp_path, "report", "compare", "x"), entries, plots=False)
    assert data["significance"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Repeats: is the difference real?" in report and "Welch" in report
