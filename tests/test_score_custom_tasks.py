"""Custom lm-eval tasks (the user's own YAML + JSONL, no hub): `--tasks path/to/task.yaml` and
`--include-path DIR` through every engine give lm-eval's own `hf` loglikelihoods, item by item."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.score.config import ScoreConfig
from harness.score.run import run

REPO = Path(__file__).resolve().parents[1]

ROWS = [
    {"question": "The sky on a clear day is", "choices": ["blue", "green", "made of cheese"], "label": 0},
    {"question": "Two plus two is", "choices": ["three", "four", "five", "twenty two"], "label": 1},
    {"question": "Water boils at sea level at", "choices": ["100 degrees", "10 degrees"], "label": 0},
    {"question": "The capital of France is", "choices": ["Berlin", "Madrid", "Paris"], "label": 2},
    {"question": "A week has", "choices": ["five days", "seven days"], "label": 1},
]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """A task folder as an lm-eval user keeps one: a YAML reading a local JSONL (absolute path:
    `datasets` reads relative ones from the working directory, as in lm-eval)."""
    d = tmp_path_factory.mktemp("my_tasks")
    (d / "facts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (d / "facts.yaml").write_text(
        "task: my_facts\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {d / 'facts.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        "doc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n"
        "metadata:\n  version: 1.0\n")
    return d


@pytest.fixture(scope="module")
def hf_reference(tiny_model, task_dir):
    """lm-eval's own `hf` model on the same weights and the same YAML (its own --include_path)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_model},dtype=float32", device="cpu", batch_size=8,
        tasks=["my_facts"], task_manager=TaskManager(include_path=str(task_dir)), log_samples=True,
        bootstrap_iters=0)  # fmt: skip
    return [[r[0][0] for r in s["resps"]] for s in out["samples"]["my_facts"]]


def test_a_custom_task_file_scores_as_lm_eval_hf(engine_server, hf_reference, task_dir, tmp_path):
    cfg = ScoreConfig(engine={"kind": engine_server.kind, "model": engine_server.model},
                      target={"url": engine_server.base_url, "tokenizer": str(engine_server.model_path)},
                      score={"tasks": [str(task_dir / "facts.yaml")], "bootstrap_iters": 0},
                      output={"results_dir": str(tmp_path), "run_name": "custom"})
    folder = run(cfg).path
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["tasks"]["my_facts"]["n"] == len(ROWS)
    ours = [[r[0][0] for r in json.loads(x)["resps"]]
            for x in (folder / "samples" / "my_facts.jsonl").read_text().splitlines()]
    assert sum(map(len, ours)) == sum(len(r["choices"]) for r in ROWS)
    for mine, ref in zip(ours, hf_reference, strict=True):
        assert mine == pytest.approx(ref, abs=1e-3)
    assert "facts.yaml" in summary["tasks"]["my_facts"]["data"]["source"]  # where the items came from
    # the precision that ran, as the engine reports it (all three serve these fp32 weights in fp32)
    full = {"hf": "float32", "vllm": "float32", "llamacpp": "f32"}[engine_server.kind]
    assert summary["precision"] == {"weights": full, "activations": full, "kv_cache": full}
    assert f"precision: weights {full}, activations {full}, KV cache {full}" in (folder / "report.md").read_text()


def hb(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=env)


def test_custom_task_errors_are_one_line_before_an_engine_starts(tiny_model, tmp_path):
    for args, says in ((["--include-path", str(tmp_path / "nope"), "--tasks", "my_facts"], "not a folder"),
                       (["--tasks", str(tmp_path / "nope.yaml")], "does not exist")):
        bad = hb("score", "--engine", "hf", "--model", str(tiny_model), *args,
                 "--results-dir", str(tmp_path), cwd=tmp_path)
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    assert list(tmp_path.iterdir()) == []  # no run folder left behind


@pytest.mark.llamacpp
def test_llamacpp_quant_f32_alone_scores_as_lm_eval_hf(tiny_model, task_dir, hf_reference, tmp_path):
    """--quant f32 and no other flag: the KV cache follows the weights (llama.cpp's own f16 cache
    moved every loglikelihood by 0.02-0.03 nats). Also the custom task by name from --include-path."""
    pytest.importorskip("llama_cpp")
    res = hb("score", "--engine", "llamacpp", "--model", str(tiny_model), "--quant", "f32",
             "--include-path", str(task_dir), "--tasks", "my_facts", "--results-dir", str(tmp_path),
             "--run-name", "f32", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "my_facts" in res.stdout and "precision: weights f32, activations f32, KV cache f32" in res.stdout
    folder = tmp_path / "f32"
    config = json.loads((folder / "config.json").read_text())
    assert config["score"]["include_path"] == [str(task_dir)]  # saved for --resume
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["precision"] == {"weights": "f32", "activations": "f32", "kv_cache": "f32"}
    assert summary["engine_info"]["kv_cache_type_requested"] == "auto"
    ours = [[r[0][0] for r in json.loads(x)["resps"]]
            for x in (folder / "samples" / "my_facts.jsonl").read_text().splitlines()]
    for mine, ref in zip(ours, hf_reference, strict=True):
        assert mine == pytest.approx(ref, abs=1e-3)


def test_precision_says_16_bit_where_dtype_auto_ran_16_bit():
    from backends.vllm.spec import VLLMConfig
    from harness.precision import effective_precision, precision_line

    info = {"precision": {"weights": "bfloat16", "activations": "bfloat16", "kv_cache": "bfloat16"}}
    p = effective_precision(info, VLLMConfig(model="m"))
    assert p["note"].startswith("16-bit: dtype auto ran bfloat16")
    assert precision_line(p).startswith("weights bfloat16, activations bfloat16, KV cache bfloat16 (16-bit")
    assert "note" not in effective_precision(info, VLLMConfig(model="m", dtype="bfloat16"))
    assert effective_precision(None)["weights"] is None  # an engine with no /v1/engine: said, not guessed
