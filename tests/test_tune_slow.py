"""A short real tune of smollm2-135m on GSM8K, through the CLI, on each engine that runs here.

Numbers are printed, not judged (a few items cannot tell configurations apart on accuracy); what
is asserted is that the tune completes on the real model, every trial is measured on real answers
with real timing, and the held-out comparison is made. notes/readme_tune.md has a longer run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("engine", [
    pytest.param(["--engine", "hf"], id="hf"),
    # llama-cpp-python decodes one sequence at a time: more in flight would only measure queueing
    pytest.param(["--engine", "llamacpp", "--concurrency", "1"], id="llamacpp", marks=pytest.mark.llamacpp),
])  # fmt: skip
def test_smollm2_short_tune(engine, tmp_path):
    from backends import engine_class

    ok, why = engine_class(engine[1]).installed()
    if not ok:
        pytest.skip(f"engine {engine[1]} is not installed here ({why})")
    res = subprocess.run(
        [sys.executable, "-m", "harness.cli", "tune", *engine, "--model", "smollm2-135m",
         "--params", "temperature,top_p", "--objectives", "accuracy,-tpot", "--trials", "3",
         "--dev-limit", "4", "--test-limit", "4", "--holdout-top", "1", "--num-fewshot", "1",
         "--max-gen-toks", "32", "--results-dir", str(tmp_path), "--run-name", "t"],
        capture_output=True, text=True, timeout=3000, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert s["status"] == "complete"
    assert [t["status"] for t in s["trials"]] == ["completed"] * 3
    print(f"\nsmollm2-135m {engine[1]}:")
    for t in s["trials"]:
        m = t["metrics"]
        print(f"  trial {t['index']} {t['params']}: accuracy {m['accuracy']['mean']:.3f}, "
              f"TPOT {m['tpot_ms']['mean']:.1f} ms, TTFT {m['ttft_ms']['mean']:.0f} ms")
        assert m["tpot_ms"]["mean"] > 0 and m["output_tok_s"]["mean"] > 0
    for c in s["holdout"]["comparisons"]:
        print(f"  held-out {c['label']}: {c['verdict']}")
    answers = [json.loads(x) for x in (tmp_path / "t" / "trials" / "0000" / "requests.jsonl").read_text().splitlines()]
    assert any(a["result"].strip() for a in answers)  # a real model answers
    assert s["holdout"]["comparisons"]
