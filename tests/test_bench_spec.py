"""`bench` with speculative decoding, end to end on the hf engine and the tiny model: acceptance
from the engine's counters, and the speedup against the same engine restarted without
speculation (a bench run folder of its own, `baseline/`), in summary.json, the terminal table
and report.md. An engine someone else runs (--url) cannot be restarted: the speedup is said to be
not measured; --no-spec-baseline skips it.

The tiny model drafts for itself (k=3, confidence threshold 0): every draft token is accepted
and each target forward pass emits k+1 = 4 tokens. The speedup's value on a shared CPU is not a
result; that it is measured on the same workload is.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

from tests.conftest import start_server  # noqa: E402

K = 3
SPEC = ["--speculative", "draft:tiny-llama", "--num-speculative-tokens", str(K),
        "--assistant-confidence-threshold", "0"]  # fmt: skip
WORKLOAD = ["--input-len", "8", "--output-len", "9", "--num-requests", "3", "--no-plots"]
SPEEDUP_KEYS = {"output_throughput", "tpot_p50", "e2e_p50", "baseline"}


def hb(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_bench_measures_the_speedup_against_the_engine_without_speculation(tmp_path, tiny_model):
    res = hb("bench", "--engine", "hf", "--model", str(tiny_model), "--dtype", "float32", *SPEC,
             "--concurrency", "1,2", *WORKLOAD, "--results-dir", str(tmp_path), "--run-name", "spec")
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "spec"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert summary["speculative_baseline"] == {"status": "complete", "run_folder": "baseline"}

    # the baseline: a complete bench run folder of the same engine, speculation off, same workload
    base_dir = run / "baseline"
    base = json.loads((base_dir / "summary.json").read_text())
    assert base["status"] == "complete" and base["engine"] == "hf"
    assert "speculative_baseline" not in base and all("speculative" not in p for p in base["points"])
    cfg = json.loads((run / "config.json").read_text())
    base_cfg = json.loads((base_dir / "config.json").read_text())
    assert base_cfg["engine"]["speculative"] == "none"
    assert {k: v for k, v in base_cfg["engine"].items() if k not in ("speculative", "num_speculative_tokens",
            "assistant_confidence_threshold")} == {k: v for k, v in cfg["engine"].items() if k not in (
            "speculative", "num_speculative_tokens", "assistant_confidence_threshold")}  # fmt: skip
    assert base_cfg["workload"] == cfg["workload"] and base_cfg["load"]["concurrency"] == [1, 2]
    assert json.loads((base_dir / "engine.json").read_text())["speculative"] is None
    assert (base_dir / "engine.log").stat().st_size > 0 and (base_dir / "report.md").is_file()
    records = [json.loads(x) for x in (run / "records.jsonl").read_text().splitlines()]
    base_records = [json.loads(x) for x in (base_dir / "records.jsonl").read_text().splitlines()]
    assert len(records) == len(base_records) == 2 * 3  # the baseline's records are its own

    def prompts(recs):  # same seed: the same prompts at the same points
        return sorted((r["point"], r["request_id"], r["prompt_tokens"]) for r in recs)

    assert prompts(records) == prompts(base_records)

    for p, b in zip(summary["points"], base["points"], strict=True):
        assert p["concurrency"] == b["concurrency"] and p["completed"] == b["completed"] == 3
        s = p["speculative"]
        # 8 tokens after the prefill's = 2 steps of 3 drafts + 1, per request
        assert (s["drafts"], s["draft_tokens"], s["accepted_tokens"]) == (3 * 2, 3 * 2 * K, 3 * 2 * K)
        assert s["acceptance_rate"] == 1.0 and s["mean_accepted_length"] == K + 1
        up = s["speedup"]
        assert set(up) == SPEEDUP_KEYS
        assert up["baseline"]["output_throughput"] == pytest.approx(b["output_throughput"])
        assert up["baseline"]["tpot_p50_ms"] == pytest.approx(b["tpot_ms"]["p50"])
        assert up["output_throughput"] == pytest.approx(p["output_throughput"] / b["output_throughput"])
        assert up["tpot_p50"] == pytest.approx(b["tpot_ms"]["p50"] / p["tpot_ms"]["p50"])
        assert up["e2e_p50"] == pytest.approx(b["e2e_ms"]["p50"] / p["e2e_ms"]["p50"])

    # the terminal table and the report show acceptance and speedup
    head = next(line for line in res.stdout.splitlines() if "point" in line)
    for col in ("accept", "acc. len", "speedup tok/s", "speedup TPOT"):
        assert col in head
    row = next(line for line in res.stdout.splitlines() if "concurrency=1" in line)
    x = summary["points"][0]["speculative"]["speedup"]["output_throughput"]
    assert "1.00" in row and f"{K + 1:.2f}" in row and f"{x:.2f}x" in row
    report = (run / "report.md").read_text()
    section = report.split("## Speculative decoding", 1)[1].split("\n## ", 1)[0]
    assert "run folder `baseline/`" in section
    line = next(x for x in section.splitlines() if x.startswith("| concurrency=1 |"))
    assert f"| 1.00 | {K + 1:.2f} | 1.00, 1.00, 1.00 |" in line and f"{x:.2f}x" in line

    # `hyperbench report` renders the same section again, and the baseline's own report
    assert hb("report", str(run), "--no-plots", timeout=300).returncode == 0
    assert "## Speculative decoding" in (run / "report.md").read_text()
    assert "## Speculative decoding" not in (base_dir / "report.md").read_text()


def test_no_spec_baseline_and_external_engines_say_the_speedup_was_not_measured(tmp_path, tiny_model):
    res = hb("bench", "--engine", "hf", "--model", str(tiny_model), "--dtype", "float32", *SPEC,
             "--no-spec-baseline", *WORKLOAD, "--results-dir", str(tmp_path), "--run-name", "skip")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "skip" / "summary.json").read_text())
    assert summary["status"] == "complete" and not (tmp_path / "skip" / "baseline").exists()
    assert summary["speculative_baseline"] == {"status": "skipped", "reason": "--no-spec-baseline"}
    (p,) = summary["points"]
    assert p["speculative"]["acceptance_rate"] == 1.0 and p["speculative"]["speedup"] is None
    assert "speedup not measured: baseline skipped (--no-spec-baseline)" in res.stdout

    # an engine someone else runs, speculating: acceptance read, speedup not measured
    with start_server("hf", tiny_model, tmp_path, speculative="draft:tiny-llama", num_speculative_tokens=K,
                      assistant_confidence_threshold=0.0) as server:  # fmt: skip
        res = hb("bench", "--url", server.base_url, "--engine", "hf", "--model", str(tiny_model), *SPEC,
                 *WORKLOAD, "--results-dir", str(tmp_path), "--run-name", "ext")  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "ext"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and not (run / "baseline").exists()
    sb = summary["speculative_baseline"]
    assert sb["status"] == "not measured" and "external engine" in sb["reason"]
    (p,) = summary["points"]
    assert p["speculative"]["mean_accepted_length"] == K + 1 and p["speculative"]["speedup"] is None
    assert "speedup not measured: baseline not measured (external engine" in res.stdout
    section = (run / "report.md").read_text().split("## Speculative decoding", 1)[1]
    assert "Speedup not measured: baseline not measured (external engine" in section


def test_the_baseline_engine_is_the_same_engine_with_speculation_off():
    from harness.config import BenchConfig
    from harness.bench.report import COLUMNS, terminal_columns

    for engine in ({"kind": "hf"}, {"kind": "vllm"}, {"kind": "llamacpp"}):
        assert BenchConfig(engine=engine).engine_config().without_speculation() is None
    # speculation-only settings go back to their defaults (the engine's own check refuses them
    # without speculation); everything else stays
    hf = BenchConfig(engine={"kind": "hf", "model": "m", "dtype": "float32", "speculative": "draft:tiny-llama",
                             "num_speculative_tokens": 3, "assistant_confidence_threshold": 0}).engine_config()
    off = hf.without_speculation()
    assert (off.speculative, off.num_speculative_tokens, off.assistant_confidence_threshold) == ("none", 4, 0.4)
    assert (off.model, off.dtype) == ("m", "float32")
    off.check()
    vllm = BenchConfig(engine={"kind": "vllm", "speculative": "ngram", "ngram_min": 2, "ngram_max": 3,
                               "num_speculative_tokens": 2, "enforce_eager": True}).engine_config()
    off = vllm.without_speculation()
    assert (off.speculative, off.ngram_min, off.ngram_max, off.enforce_eager) == ("none", None, None, True)
    off.check()
    from backends.llamacpp.spec import LlamaCppConfig

    if "ngram_min" in LlamaCppConfig.model_fields:  # llama.cpp's n-gram speculation
        cpp = BenchConfig(engine={"kind": "llamacpp", "speculative": "ngram", "ngram_min": 2,
                                  "num_speculative_tokens": 2, "quant": "f32"}).engine_config()
        off = cpp.without_speculation()
        assert (off.speculative, off.ngram_min, off.num_speculative_tokens, off.quant) == ("none", None, 4, "f32")
        off.check()
    # no speculation: the terminal table keeps its plain columns
    assert terminal_columns([{"concurrency": 1}]) == list(COLUMNS)
