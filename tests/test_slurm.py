"""SLURM for real: `hyperbench slurm ... --submit` on a one-node cluster (scripts/slurm_setup.sh).

- a job that cannot start (no SIF) ends in one line with the job's own error, exit 1;
- a request the cluster refuses (no such partition) or can never run (more memory than the node
  has) is one line, exit 2, nothing left queued;
- `compare --executor slurm`: 4 cells of one job array, at least 3 at once, one cancelled;
- (with the Apptainer tier's SIFs) a bench job is followed from submission to its run folder;
  `scancel` leaves the run incomplete, its records kept, no instance behind.

The jobs run as CPU jobs (no GPU GRES here), with the submitting environment (SLURM's default
--export=ALL), so the job's `hyperbench` is this checkout's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from hpc import REPO, apptainer, build_sif, cache, cancel_when_recorded, instances, queued, slurm_up

pytestmark = [pytest.mark.timeout(1800)]
CPU_JOB = ["--gpus", "0", "--cpus-per-task", "1", "--mem", "1G", "--time-limit", "00:20:00"]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    if why := slurm_up():
        pytest.skip(why)


def submit(*args, cwd, env=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", "slurm", *map(str, args), "--submit"], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **(env or {})})


def test_start_up_failure_is_the_jobs_own_line(tmp_path):
    r = submit("--engine", "llamacpp", "--model", "tiny-llama", *CPU_JOB, "--sif-dir", tmp_path / "nosif",
               "--job-name", "hb-test-nosif", "--results-dir", tmp_path / "results", cwd=tmp_path, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    line = r.stdout.strip()
    assert "\n" not in line and "Traceback" not in r.stderr
    assert re.fullmatch(rf"job \d+: FAILED \(exit 1:0\): hyperbench: no {tmp_path}/nosif/llamacpp.sif "
                        r"\(apptainer build it first\) \[log: .*hb-test-nosif-\d+\.out\]", line), line
    assert re.search(r"job \d+ submitted \(log: ", r.stderr)


def test_refused_or_impossible_requests_are_one_line(tmp_path):
    r = submit("--engine", "llamacpp", *CPU_JOB, "--partition", "no-such-partition", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == \
        "error: sbatch refused the job: Batch job submission failed: Invalid partition name specified", r.stderr
    # sbatch accepts a job that asks more cores than the partition has; it would pend forever
    r = submit("--engine", "llamacpp", "--gpus", "0", "--cpus-per-task", "64", "--mem", "1G",
               "--job-name", "hb-test-huge", cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "can never start here" in r.stderr.splitlines()[-1] and "cancelled" in r.stderr.splitlines()[-1]
    assert queued("hb-test-huge") == []


# ---------------------------------------------------------------------------- with the engine's SIF


@pytest.fixture(scope="module")
def sif_env():
    """The llamacpp SIF that the Apptainer tier built (tests/test_apptainer_tier.py), and the
    tiny model's GGUF in the cache."""
    try:
        binary = apptainer()
    except RuntimeError as e:
        pytest.skip(str(e))
    from test_containers import docker_setup, Docker  # the images: built by the container tier

    setup = docker_setup()
    if isinstance(setup, str):
        pytest.skip(setup)
    docker = Docker(*setup, cache())
    if docker.run("image", "inspect", "hyperbench/llamacpp:latest", check=False).returncode != 0:
        docker.compose("build", "llamacpp-image", timeout=2400)
    sif = build_sif(binary, docker, "llamacpp")
    from backends.llamacpp.gguf import ensure_gguf
    from harness.models import resolve_model

    ensure_gguf(resolve_model("tiny-llama").path, "f32")
    return {"binary": binary, "env": {"HYPERBENCH_APPTAINER": binary}, "sif_dir": sif.parent}


@pytest.mark.container
def test_submit_follows_the_job_to_its_run_folder(sif_env, tmp_path):
    start = time.monotonic()
    r = submit("--engine", "llamacpp", "--model", "tiny-llama", "--quant", "f32", *CPU_JOB, "--sif-dir",
               sif_env["sif_dir"], "--job-name", "hb-test-bench", "--input-len", "16", "--output-len", "8",
               "--num-requests", "4", "--no-plots", "--results-dir", "results", cwd=tmp_path, env=sif_env["env"])
    print(f"\n[slurm] bench job submitted, followed, landed: {time.monotonic() - start:.0f} s", file=sys.stderr)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    job = re.search(r"job (\d+) submitted", r.stderr)[1]
    assert f"job {job}: RUNNING on " in r.stderr
    assert "  | " in r.stderr  # the job's log, followed
    folder = tmp_path / "results" / f"hb-test-bench-{job}"
    assert r.stdout.strip() == f"job {job}: COMPLETED: run folder {folder} (complete)"
    s = json.loads((folder / "summary.json").read_text())
    assert s["status"] == "complete" and s["engine_info"]["engine"] == "llamacpp"
    assert (tmp_path / f"hb-test-bench-{job}.out").is_file()  # the job log, in the submit folder


@pytest.mark.container
def test_scancel_leaves_the_run_incomplete(sif_env, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "slurm", "--engine", "llamacpp", "--model",
                             "tiny-llama", "--quant", "f32", *CPU_JOB, "--sif-dir", str(sif_env["sif_dir"]),
                             "--job-name", "hb-test-cancel", "--input-len", "16", "--output-len", "64",
                             "--num-requests", "400", "--concurrency", "1", "--no-plots", "--results-dir", "results",
                             "--run-name", "cut", "--submit"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **sif_env["env"]})
    job, out, err = cancel_when_recorded(proc, tmp_path / "results" / "cut" / "records.jsonl", 3, "hb-test-cancel")
    assert proc.returncode == 130, out + err[-3000:]
    line = out.strip()
    assert line.startswith(f"job {job}: CANCELLED") and f"run folder {tmp_path}/results/cut is incomplete" in line, line
    s = json.loads((tmp_path / "results" / "cut" / "summary.json").read_text())
    assert s["status"] == "incomplete"
    kept = [json.loads(ln) for ln in (tmp_path / "results" / "cut" / "records.jsonl").read_text().splitlines()]
    assert sum(1 for rec in kept if rec["error"] is None) >= 3
    assert not [n for n in instances(sif_env["binary"]) if n.startswith("hyperbench-llamacpp-")]


# ---------------------------------------------------------------------------- compare as a job array


@pytest.mark.slow  # ~50 s: four engines start at once on 2 cores
def test_compare_cells_as_a_job_array_one_cancelled(tmp_path):
    """4 llamacpp quants of tiny-llama (process launcher: the scheduling is under test here; the
    engine-in-SIF path is the bench job's above), all at once; one cancelled mid-run is recorded
    as failed, the three others finish, and the comparison is the local one's."""
    from backends.llamacpp.gguf import ensure_gguf
    from harness.models import resolve_model

    quants = ["f32", "f16", "q8_0", "q4_0"]
    model = resolve_model("tiny-llama").path
    for q in quants:  # made once, before four tasks would race to make them
        ensure_gguf(model, q)
    cells = [f"llamacpp:{q}" for q in quants]
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "compare", "--engines", ",".join(cells), "--model", "tiny-llama",
         "--input-len", "16", "--output-len", "16", "--num-requests", "12", "--concurrency", "1", "--no-plots",
         "--executor", "slurm", "--max-parallel", "4", *CPU_JOB, "--job-name", "hb-test-array",
         "--results-dir", str(tmp_path), "--run-name", "cmp"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    _, _, err = cancel_when_recorded(proc, tmp_path / "cmp" / "runs" / "llamacpp-q8_0" / "records.jsonl", 2,
                                     "hb-test-array", "_2")
    assert proc.returncode == 0, err[-3000:]
    jobs = json.loads((tmp_path / "cmp" / "jobs" / "jobs.json").read_text())
    assert [j["cell"] for j in jobs] == cells
    assert [j["state"] for j in jobs] == ["COMPLETED", "COMPLETED", "CANCELLED", "COMPLETED"], jobs
    assert "llamacpp:q8_0 failed: CANCELLED (cancelled)" in err
    # at least 3 cells ran at the same time, by the tasks' own clocks
    latest_start = sorted(j["start"] for j in jobs)[2]
    assert sum(1 for j in jobs if j["start"] <= latest_start < j.get("end", float("inf"))) >= 3, jobs
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    status = {run["label"]: run["status"] for run in data["runs"]}
    assert status == {"llamacpp:f32": "complete", "llamacpp:f16": "complete", "llamacpp:q8_0": "incomplete",
                      "llamacpp:q4_0": "complete"}, status
    assert (tmp_path / "cmp" / "report.md").is_file()
