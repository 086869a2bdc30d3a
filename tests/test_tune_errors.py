"""`hyperbench tune` bad input: one line on stderr, exit code 2, no traceback, no run folder left
behind. All but the task checks are decided before lm-eval is imported (about a second each)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tune(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "harness.cli", "tune", "--model", "tiny-llama", *args,
                           "--results-dir", str(tmp_path / "runs")], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def assert_one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), res.stderr
    for n in needles:
        assert n in err[0], err[0]


@pytest.mark.parametrize("args,needles", [
    (["--params", "foo"], ["unknown parameter 'foo' for engine hf", "temperature, top_p"]),
    (["--params", "n_ctx"], ["unknown parameter 'n_ctx' for engine hf", "option of engine llama-server, llamacpp"]),
    (["--engine", "llamacpp", "--params", "temperature,max_batch_size"],
     ["unknown parameter 'max_batch_size' for engine llamacpp"]),
    (["--engine", "vllm", "--speculative", "ngram", "--params", "min_p"],
     ["min_p is not a sampling parameter engine vllm honours"]),
    (["--params", ""], ["empty search space"]),
    (["--params", "temperature=1:1"], ["empty range"]),
    (["--params", "top_p=0.1:0.5"], ["baseline's top_p=0.95 is outside the searched range"]),
    (["--constraint", "tpot_ms<=0"], ["impossible constraint 'tpot_ms<=0'"]),
    (["--constraint", "accuracy>=1.5"], ["impossible constraint 'accuracy>=1.5'", "at most 1"]),
    (["--objectives", "accuracy", "--constraint", "accuracy>=0.5"], ["on the objective itself"]),
    (["--objectives", "accuracy,tpot"], ["TPOT is better lower", "-tpot_ms"]),
    (["--objectives", "accuracy,-speed"], ["unknown metric 'speed'"]),
    (["--url", "http://127.0.0.1:9/v1", "--params", "temperature,max_batch_size=1:4", "--max-batch-size", "2"],
     ["need an engine restart, which an external engine (--url) does not allow"]),
    (["--max-parallel", "3"], ["--max-parallel runs trials side by side as SLURM jobs: add --executor slurm"]),
    (["--url", "http://127.0.0.1:9/v1", "--executor", "slurm"], ["starts an engine in every trial's job"]),
])  # fmt: skip
def test_bad_search_input(tmp_path, args, needles):
    res = tune(tmp_path, *args)
    assert_one_line_error(res, *needles)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_loglikelihood_task_is_refused_with_the_reason(tmp_path):
    """MMLU is scored by loglikelihood: no sampling parameter can change its score."""
    res = tune(tmp_path, "--task", "mmlu_anatomy")
    assert_one_line_error(res, "task mmlu_anatomy is scored by loglikelihood (multiple_choice)",
                          "never samples", "cannot change its score", "generative task")
    assert not any((tmp_path / "runs").iterdir())  # the folder made for it is gone again
