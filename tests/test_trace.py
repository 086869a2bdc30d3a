"""Trace replay and schedule lag: traces read and checked (Mooncake JSONL, BurstGPT CSV), replayed
by the real client against the synthetic engine on their own schedule, and every open-loop send
(trace or Poisson) stamped with its scheduled time so its lag is measured."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from harness import cli as cli_module
from harness.adapter import EngineClient, GenRequest, RequestRecord
from harness.config import Workload
from harness.bench.loadgen import run_point
from harness.bench.metrics import schedule_lags, summarize
from backends.synthetic import launch
from harness.bench.trace import MOONCAKE_BLOCK, load_trace, trace_requests


def mooncake(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    with launch(log_path=tmp_path_factory.mktemp("syn") / "engine.log", ttft_ms=20, itl_ms=5) as endpoint:
        yield endpoint


def test_mooncake_hash_ids_give_shared_prefixes_of_exact_lengths(tmp_path):
    from harness.models import resolve_model
    from harness.bench.workload import load_tokenizer

    tok = load_tokenizer(resolve_model("tiny-llama").path)
    trace = mooncake(tmp_path / "t.jsonl", [
        {"timestamp": 1000, "input_length": 700, "output_length": 3, "hash_ids": [5, 6]},
        {"timestamp": 1250, "input_length": 600, "output_length": 4, "hash_ids": [5, 9]},
        {"timestamp": 1250, "input_length": 30, "output_length": 2, "hash_ids": [8]},
    ])
    entries = load_trace(trace)
    assert [e.at_s for e in entries] == [0.0, 0.25, 0.25]  # ms, from the first record
    reqs = trace_requests(entries, Workload(), tok)
    assert [len(r.prompt) for r in reqs] == [700, 600, 30]
    assert [r.max_tokens for r in reqs] == [3, 4, 2]
    assert reqs[0].prompt[:MOONCAKE_BLOCK] == reqs[1].prompt[:MOONCAKE_BLOCK]  # hash id 5
    assert reqs[0].prompt[MOONCAKE_BLOCK:600] != reqs[1].prompt[MOONCAKE_BLOCK:600]  # 6 vs 9
    assert reqs[2].prompt[:30] != reqs[0].prompt[:30]


def test_burstgpt_csv_is_read_in_seconds(tmp_path):
    f = tmp_path / "b.csv"
    f.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                 "5,ChatGPT,100,20,120,Conversation log\n7.5,GPT-4,50,10,60,API log\n")
    assert [(e.at_s, e.input_len, e.output_len) for e in load_trace(f)] == [(0.0, 100, 20), (2.5, 50, 10)]


def test_replay_keeps_the_trace_schedule_and_records_the_lag(synthetic):
    # 40 requests over 0.4 s, in bursts of two at the same instant (what a trace has)
    at = [0.02 * (i // 2) for i in range(40)]
    reqs = [GenRequest(prompt=f"p {i}", max_tokens=3, fixed_output=True, at_s=t) for i, t in enumerate(at)]

    async def replay(kind, value, requests=reqs):
        async with EngineClient(synthetic.base_url, synthetic.model) as c:
            # warmed up as bench warms it: the point's first sends find open connections
            await asyncio.gather(*(c.generate(GenRequest(prompt="warm", max_tokens=2), RequestRecord(request_id=-1))
                                   for _ in range(2)))
            return await run_point(c, requests, kind, value, 0, lambda r: None)

    records = asyncio.run(replay("trace", 1.0))
    assert all(r.ok and r.scheduled is not None for r in records)
    # scheduled sends are the trace's times from the first scheduled send
    t0 = records[0].scheduled
    assert np.allclose([r.scheduled - t0 for r in records], at, atol=1e-9)
    lag = summarize(records)["schedule_lag_ms"]
    assert lag["min"] >= 0 and lag["p99"] < 10.0  # never sent before its time; a burst's second
    # waits for the first's send (~0.2 ms)

    # the rate the ceiling benchmark holds (benchmarks/client_ceiling.py: lag p99 < 1 ms to 800
    # req/s): 200 sends at 200 req/s, within 1 ms of their times at p99 (quiet: 0.3-0.6 ms; the
    # send timer wakes the loop at the time, where asyncio's own sleep gave 1-3 ms). p99 of 200:
    # this VM's rare 1-3 ms wake-up stalls fall above it. Best of up to 5 runs on a shared box.
    steady = [GenRequest(prompt=f"s {i}", max_tokens=3, fixed_output=True, at_s=i / 200) for i in range(200)]
    lags = []
    for _ in range(5):  # a busy shared machine delays single runs; a client bias shows in every one
        lags.append(summarize(asyncio.run(replay("trace", 1.0, steady)))["schedule_lag_ms"]["p99"])
        if lags[-1] < 1.0:  # (the bound below on a machine with a core free)
            break
    # a machine whose cores are all taken by others delays any wake-up by the scheduler's slices
    # (3-7 ms with two busy loops on two cores): there the bound is the old loose one, and says so
    busy = os.getloadavg()[0] > (os.cpu_count() or 1)
    bound = 10.0 if busy else 1.0
    assert min(lags) < bound, f"schedule lag p99 at 200 req/s, ms: {lags} (load {os.getloadavg()[0]:.1f})"
    # time scale 0.5: the same trace twice as fast
    fast = asyncio.run(replay("trace", 0.5))
    assert np.allclose([r.scheduled - fast[0].scheduled for r in fast], np.array(at) * 0.5, atol=1e-9)
    # Poisson points are stamped too
    poisson = asyncio.run(replay("rate", 200.0))
    assert len(schedule_lags(poisson)) == len(reqs)


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_module.main(argv)
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize("rows, says", [
    ([{"timestamp": 10, "input_length": 5, "output_length": 2},
      {"timestamp": 5, "input_length": 5, "output_length": 2}], "goes back in time"),
    ([{"timestamp": -3, "input_length": 5, "output_length": 2}], "negative"),
    ([{"timestamp": 0, "input_length": 5}], "missing output_length"),
    ([{"timestamp": 0, "input_length": 0, "output_length": 2}], "lengths must be >= 1"),
])
def test_bad_trace_is_one_line_and_exit_2(rows, says, tmp_path, capsys):
    trace = mooncake(tmp_path / "bad.jsonl", rows)
    code, err = run_main(["bench", "--engine", "synthetic", "--trace", str(trace),
                          "--results-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()  # refused before a run folder or an engine


def test_csv_missing_columns_and_trace_with_a_sweep_are_refused(tmp_path, capsys):
    f = tmp_path / "b.csv"
    f.write_text("Timestamp,Model,Request tokens\n1,x,3\n")
    code, err = run_main(["bench", "--engine", "synthetic", "--trace", str(f), "--results-dir", str(tmp_path)], capsys)
    assert code == 2 and "missing column(s) Response tokens" in err and len(err.strip().splitlines()) == 1
    code, err = run_main(["bench", "--engine", "synthetic", "--trace", str(f), "--rate", "5"], capsys)
    assert code == 2 and "give no concurrency or rate" in err


def test_bench_trace_end_to_end_flags_a_client_that_could_not_keep_up(tmp_path):
    f = tmp_path / "b.csv"
    f.write_text("Timestamp,Model,Request tokens,Response tokens\n"
                 + "".join(f"{i * 0.01:.2f},m,{20 + i},3\n" for i in range(12)))
    # a lag limit no client meets: the point must say so
    res = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--engine", "synthetic", "--trace", str(f),
                          "--lag-limit-ms", "0.000001", "--results-dir", str(tmp_path), "--run-name", "t",
                          "--no-plots"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    point = json.loads((tmp_path / "t" / "summary.json").read_text())["points"][0]
    assert point["trace"] == 1.0 and point["completed"] == 12
    assert point["prompt_tokens"] == sum(20 + i for i in range(12))  # the trace's lengths, exactly
    assert point["schedule_lag_ms"]["p99"] >= 0
    assert point["client_behind"].startswith("client could not keep up")
    assert "could not keep up" in (tmp_path / "t" / "report.md").read_text()


def test_synthetic_prompts_share_a_prefix_of_the_stated_length(capsys):
    from harness.models import resolve_model
    from harness.bench.workload import load_tokenizer, synthetic_prompts

    tok = load_tokenizer(resolve_model("tiny-llama").path)
    plain = synthetic_prompts(tok, 4, 50, seed=1)
    shared = synthetic_prompts(tok, 4, 50, seed=1, prefix_len=20)
    assert all(len(p) == 50 for p in shared)
    assert len({tuple(p[:20]) for p in shared}) == 1 and len({p[20] for p in shared}) > 1
    assert [p[20:] for p in shared] == [p[20:] for p in plain]  # the rest as without a prefix
    code, err = run_main(["bench", "--engine", "synthetic", "--input-len", "8", "--prefix-len", "9"], capsys)
    assert code == 2 and "longer than the prompt" in err and len(err.strip().splitlines()) == 1
