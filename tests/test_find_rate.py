"""bench --find-max-rate: bracketing then bisection on the Poisson rate, against the synthetic
engine given a known capacity (it starts at most capacity_rps requests a second)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from harness import cli as cli_module
from harness.bench.find_rate import find_max_rate


@pytest.mark.parametrize("start, edge", [(1.0, 37.0), (100.0, 37.0), (5.0, 5.0)])
def test_search_brackets_then_bisects_to_the_precision(start, edge):
    # the search itself, on a known attainment curve: every request meets the SLO up to `edge`
    async def measure(rate):
        return {"slo_attainment": 1.0 if rate <= edge else 0.4}

    out = asyncio.run(find_max_rate(measure, start, share=0.9, precision=0.05))
    lo, hi = out["bracket"]
    assert out["found"] and out["rate"] == lo and lo <= edge < hi and (hi - lo) / hi <= 0.05
    assert all(w["passed"] == (w["rate"] <= edge) for w in out["walk"])
    assert len({w["rate"] for w in out["walk"]}) == len(out["walk"])  # no rate measured twice


def test_no_rate_passing_is_said_not_found():
    async def measure(rate):
        return {"slo_attainment": 0.0}

    out = asyncio.run(find_max_rate(measure, 1.0, share=0.9, precision=0.1))
    assert out["rate"] is None and not out["found"] and out["walk"]


def test_find_max_rate_needs_slos(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_module.main(["bench", "--engine", "synthetic", "--find-max-rate", "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--slo" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def _search(tmp_path, name, capacity, precision) -> dict:
    res = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--engine", "synthetic",
                          "--capacity-rps", str(capacity), "--ttft-ms", "20", "--itl-ms", "1", "--output-len", "2",
                          "--num-requests", "40", "--find-max-rate", "--rate", "10", "--rate-precision", str(precision),
                          "--slo", "ttft=80", "--results-dir", str(tmp_path), "--run-name", name, "--no-plots"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads((tmp_path / name / "summary.json").read_text())


def test_finds_the_synthetic_engines_capacity(tmp_path):
    capacity, precision = 40.0, 0.1
    # above the capacity the queue grows for the whole point and TTFTs break the SLO (20 ms + 60 ms
    # of queueing); a little below it, Poisson bursts alone queue that long: the edge is just under
    # capacity (32.5-37.5 req/s in runs on the 2-core box). A machine busy enough to delay 10% of
    # first tokens by 60 ms makes the search stop early: a second attempt, as other timing tests do.
    for attempt in ("f", "g"):
        s = _search(tmp_path, attempt, capacity, precision)
        mr = s["max_rate"]
        lo, hi = mr["bracket"]
        assert mr["found"] and (hi - lo) / hi <= precision
        assert mr["rate"] <= (1 + precision) * capacity, mr["walk"]
        if mr["rate"] >= 0.7 * capacity:
            break
    assert 0.7 * capacity <= mr["rate"], mr["walk"]
    assert [p["rate"] for p in s["points"]] == [w["rate"] for w in mr["walk"]]  # every rate tried is a point
    assert "Highest rate under the SLOs" in (tmp_path / attempt / "report.md").read_text()
    # had it been killed before writing its summary, its records still give every rate it tried
    from harness.bench.resume import rebuild_summary
    from harness.results import RunFolder

    rebuilt = rebuild_summary(RunFolder(tmp_path / attempt), {**s, "points": []})
    assert [p["rate"] for p in rebuilt["points"]] == [w["rate"] for w in mr["walk"]]
