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


def hb(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=env)


def test_include_path_from_the_command_line_and_its_errors(tiny_model, task_dir, tmp_path):
    ok = hb("score", "--engine", "hf", "--model", str(tiny_model), "--dtype", "float32", "--device", "cpu",
            "--include-path", str(task_dir), "--tasks", "my_facts", "--results-dir", str(tmp_path),
            "--run-name", "cli", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "my_facts" in ok.stdout
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert config["score"]["include_path"] == [str(task_dir)]  # saved for --resume
    for args, says in ((["--include-path", str(tmp_path / "nope"), "--tasks", "my_facts"], "not a folder"),
                       (["--tasks", str(tmp_path / "nope.yaml")], "does not exist")):
        bad = hb("score", "--engine", "hf", "--model", str(tiny_model), *args,
                 "--results-dir", str(tmp_path), cwd=tmp_path)
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
