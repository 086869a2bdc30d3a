"""smollm2-135m (a real model) on a real 20-question subset of each task, end to end through the
CLI, on transformers and on llama.cpp (q4_k_m): the same tasks, the same scoring code. Scores are
printed, not judged (135M parameters are near chance on MMLU); what is asserted is that every
task ran on 20 real items, produced its metrics, and carried the data notes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.score import staging

REPO = Path(__file__).resolve().parents[1]
TRUTHFULQA_CSV = REPO.parent / "shared" / "data" / "truthfulqa" / "TruthfulQA.csv"
# MMLU by one subject: 20 questions of the `mmlu` group would be 20 per subject (1,140)
TASKS = ["mmlu_high_school_geography", "gsm8k", "truthfulqa_mc1", "truthfulqa_mc2", "truthfulqa_gen"]
METRICS = {"mmlu_high_school_geography": "acc", "gsm8k": "exact_match,flexible-extract",
           "truthfulqa_mc1": "acc", "truthfulqa_mc2": "acc", "truthfulqa_gen": "bleu_acc"}


@pytest.fixture(scope="module")
def staged() -> Path:
    csv = os.environ.get(staging.TRUTHFULQA_CSV_ENV) or TRUTHFULQA_CSV
    if not Path(csv).is_file():
        pytest.skip(f"TruthfulQA CSV not found at {csv}")
    return staging.ensure_staged(truthfulqa_csv=csv)


@pytest.mark.slow
@pytest.mark.parametrize("engine", [
    pytest.param(["--engine", "hf"], id="hf"),
    pytest.param(["--engine", "llamacpp", "--quant", "q4_k_m"], id="llamacpp-q4_k_m", marks=pytest.mark.llamacpp),
])  # fmt: skip
def test_smollm2_on_20_items_of_each_task(engine, staged, tmp_path):
    from backends import engine_class

    ok, why = engine_class(engine[1]).installed()
    if not ok:
        pytest.skip(f"engine {engine[1]} is not installed here ({why})")
    res = subprocess.run(
        [sys.executable, "-m", "harness.cli", "score", *engine, "--model", "smollm2-135m",
         "--tasks", ",".join(TASKS), "--limit", "20", "--num-fewshot", "5", "--data-dir", str(staged),
         "--gen-kwargs", "max_gen_toks=128", "--results-dir", str(tmp_path), "--run-name", "r"],
        capture_output=True, text=True, timeout=3000, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    print(f"\nsmollm2-135m {' '.join(engine)}: {s['throughput']['items']} items, "
          f"{s['throughput']['items_per_s']:.2f} items/s")
    for task in TASKS:
        t = s["tasks"][task]
        assert t["n"] == 20, task
        m = t["metrics"][METRICS[task]]
        assert m["value"] is not None, task
        print(f"  {task:28s} {METRICS[task]:30s} {m['value']:.3f} ± {m['stderr'] or 0:.3f}")
    assert any("APPROXIMATION" in n for n in s["notes"])
    assert s["tasks"]["gsm8k"]["generation"]["greedy"] is True


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_gives_lm_eval_hf_loglikelihoods_on_smollm2(staged, tmp_path):
    """vLLM (CPU) through the same scoring path: per-item loglikelihoods within 1e-3 of lm-eval's
    `hf` model on the same real weights (tests/test_score_engines.py does it on the tiny model)."""
    import lm_eval
    from transformers import AutoTokenizer

    from backends import engine_class
    from harness.launchers.process import ProcessLauncher
    from harness.models import resolve_model
    from harness.score.lm import EngineLM
    from harness.score.tasks import prepare

    ok, why = engine_class("vllm").installed()
    if not ok:
        pytest.skip(f"vllm is not installed here ({why})")
    model = resolve_model("smollm2-135m")
    p = prepare(["mmlu_high_school_geography", "truthfulqa_mc2"], staged, tmp_path / "tasks")
    kw = dict(tasks=p.names, task_manager=p.tm, limit=5, log_samples=True, bootstrap_iters=0)
    ref = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model.path},dtype=float32",
                                  device="cpu", batch_size=4, **kw)
    cfg = engine_class("vllm")(model=str(model.path), served_model_name="m", dtype="float32")
    with ProcessLauncher(cfg, str(model.path), log_path=tmp_path / "vllm.log", startup_timeout_s=900) as ep:
        lm = EngineLM(ep.base_url, ep.model, tokenizer=AutoTokenizer.from_pretrained(model.path))
        ours = lm_eval.simple_evaluate(model=lm, **kw)
    for task in p.names:
        for a, b in zip(ref["samples"][task], ours["samples"][task]):
            for x, y in zip(a["resps"], b["resps"]):
                assert y[0][0] == pytest.approx(x[0][0], abs=1e-3), (task, a["doc_id"])
        assert ours["results"][task]["acc,none"] == pytest.approx(ref["results"][task]["acc,none"], abs=1e-6)
