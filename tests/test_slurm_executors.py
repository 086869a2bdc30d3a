"""`tune` and `study` on SLURM for real (the one-node cluster of scripts/slurm_setup.sh), each job
array through harness/slurm_array.py as `compare --executor slurm`'s:

- `tune --executor slurm --max-parallel 3` SIGKILLed while its first batch's jobs run, then
  resumed: the running jobs are adopted, no trial is submitted or measured twice, and the trial
  ids and parameters are the ones an uninterrupted tune gives (replayed here with its results);
- `study --executor slurm`: one cell fails at start, one is cancelled mid-run, the third finishes;
  the study folder is a local study's (cells/, logs/), with the tasks' states in jobs/jobs.json.

CPU jobs (no GPU GRES here), with the submitting environment (SLURM's default --export=ALL), so
the jobs' harness is this checkout's. The engines are small and quick to start (llama.cpp on
tiny-llama's GGUF, the synthetic engine): the scheduling is under test here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from hpc import REPO, queued, slurm_up, stop

from harness.slurm_array import stamps

pytestmark = [pytest.mark.timeout(900)]
CPU_JOB = ["--gpus", "0", "--cpus-per-task", "1", "--mem", "2G", "--time-limit", "00:15:00"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}


@pytest.fixture(scope="module", autouse=True)
def cluster():
    if why := slurm_up():
        pytest.skip(why)


def hb(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def trial(run, i: int) -> dict:
    path = run / "trials" / f"{i:04d}" / "trial.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@pytest.mark.slow  # ~160 s on the shared 2-core sandbox: five trial jobs, each starting an engine and lm-eval
def test_tune_killed_mid_batch_resumes_adopting_its_jobs(tmp_path):
    from backends.llamacpp.gguf import ensure_gguf
    from harness.models import resolve_model
    from harness.score.staging import ensure_staged

    ensure_gguf(resolve_model("tiny-llama").path, "f32")  # made once, before three jobs would race to
    data = ensure_staged(("gsm8k",))
    name = "hb-test-tune"
    run = tmp_path / "t"
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "tune", "--engine", "llamacpp", "--model", "tiny-llama", "--quant",
         "f32", "--num-fewshot", "0", "--max-gen-toks", "8", "--dev-limit", "3", "--data-dir", str(data),
         "--trials", "5", "--test-limit", "0", "--executor", "slurm", "--max-parallel", "3", *CPU_JOB,
         "--job-name", name, "--no-plots", "--results-dir", str(tmp_path), "--run-name", "t"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        # the first batch (the baseline and two of Ax's) submitted as one array: kill the tune
        # while its jobs start their engines (tens of seconds; the resume is back in a few)
        deadline = time.monotonic() + 400
        while not all(trial(run, i).get("job") for i in range(3)):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the first batch was never submitted"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = {i: trial(run, i) for i in range(3)}
        unfinished = [i for i in range(3) if trial(run, i).get("status") not in ("completed", "failed")]
        res = hb("tune", "--resume", run)
    finally:
        stop(proc, name)
    print(f"\n[slurm] tune of 5 trials, 3 at a time, killed and resumed: {time.monotonic() - start:.0f} s; "
          f"trials {unfinished} unfinished at the resume, {res.stderr.count('(adopted)')} adopted", file=sys.stderr)
    assert res.returncode == 0, res.stderr[-3000:]
    array = before[0]["job"]
    assert all(before[i]["job"] == array for i in range(3)), before  # one array for the first batch
    if unfinished:  # its jobs outlived the killed tune: the resume followed them, submitting nothing again
        assert "(adopted)" in res.stderr and f"task {array}_" in res.stderr, res.stderr[-3000:]

    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "complete"
    trials = [trial(run, i) for i in range(5)]
    assert [t["index"] for t in s["trials"]] == [0, 1, 2, 3, 4]
    assert [t["status"] for t in trials] == ["completed"] * 5
    # each trial measured once, by one task of one of two arrays (task id = trial index)
    assert [t["attempts"] for t in trials] == [1] * 5
    assert [t["slurm_task"] for t in trials[:3]] == [f"{array}_{i}" for i in range(3)]
    second = trials[3]["job"]
    assert second != array and [t["slurm_task"] for t in trials[3:]] == [f"{second}_3", f"{second}_4"]
    assert sorted(p.name for p in (run / "jobs").glob("*.sbatch")) == ["trials-0.sbatch", "trials-3.sbatch"]
    assert sorted(p.name for p in (run / "jobs").glob("*.out")) == [f"{i}.out" for i in range(5)]
    assert [t["params"] for t in trials[:3]] == [before[i]["params"] for i in range(3)]
    # the first batch's three tasks ran at the same time, by their own clocks
    first = [stamps(run / "jobs" / f"{i}.out") for i in range(3)]
    assert max(f["start"] for f in first) < min(f["end"] for f in first), first

    # as if uninterrupted: Ax, asked for the same batches with the same results, gives the same trials
    from harness.tune.loop import _raw
    from harness.tune.run import _objectives
    from harness.tune.space import SearchSpace
    from harness.tune.study import Study

    plan = json.loads((run / "plan.json").read_text())
    objectives, constraints = _objectives(plan)
    replay = Study.create(tmp_path / "replay", SearchSpace.from_json(plan["space"]), objectives, constraints,
                          "bayes", 0, None, plan["tracking"])
    got = [(0, trials[0]["params"])] + replay.new_trials(2)
    for i in range(3):
        replay.complete(i, _raw(trials[i]))
    got += replay.new_trials(2)
    assert [i for i, _ in got] == [0, 1, 2, 3, 4]
    for (_, params), t in zip(got, trials):
        assert params == pytest.approx(t["params"])
    ax = Study.load(run, 0).trials()
    assert [status for status, _, _ in ax.values()] == ["completed"] * 5


def test_study_cells_as_a_job_array_one_failed_one_cancelled(tmp_path):
    name = "hb-test-study"
    study = tmp_path / "s"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "study", "--model", "tiny-llama", "--variants",
         "hf:model=/nonexistent,synthetic,synthetic:ttft_ms=60000", "--reference", "synthetic", "--ttft-ms", "1",
         "--itl-ms", "1", "--concurrency", "1", "--input-len", "8", "--output-len", "4", "--num-requests", "2",
         "--no-plots", "--executor", "slurm", *CPU_JOB, "--job-name", name, "--results-dir", str(tmp_path),
         "--run-name", "s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 300
        slow = study / "cells" / "bench-synthetic-ttft_ms-60000" / "summary.json"
        while not slow.is_file():  # the slow cell's bench is under way: cancel its task
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the slow cell never started"
            time.sleep(0.3)
        task = next(t for t in queued(name) if t.endswith("_2"))
        subprocess.run(["scancel", task], check=True)
        out, err = proc.communicate(timeout=300)
    finally:
        stop(proc, name)
    assert proc.returncode == 2, err[-3000:]
    jobs = json.loads((study / "jobs" / "jobs.json").read_text())
    assert [(j["cell"], j["state"]) for j in jobs] == [
        ("bench-hf-model--nonexistent", "FAILED"), ("bench-synthetic", "COMPLETED"),
        ("bench-synthetic-ttft_ms-60000", "CANCELLED")], jobs
    s = json.loads((study / "summary.json").read_text())
    assert s["status"] == "incomplete" and s["executor"] == "slurm"
    assert "2 cell(s) did not complete" in s["reason"]
    assert "bench-hf-model--nonexistent: failed: model path /nonexistent does not exist" in err
    cells = {c: json.loads((study / "cells" / c / "summary.json").read_text())["status"]
             for c in ("bench-synthetic", "bench-synthetic-ttft_ms-60000")}
    assert cells == {"bench-synthetic": "complete", "bench-synthetic-ttft_ms-60000": "incomplete"}, cells
    # the folder of a local study: each cell's log where the verdict reads a failed cell's error
    assert sorted(p.name for p in (study / "logs").iterdir()) == sorted(f"{j['cell']}.log" for j in jobs)
    assert s["verdict"]["winner"] == "synthetic"
    assert (study / "report.md").is_file()
