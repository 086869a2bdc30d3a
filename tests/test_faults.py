"""Fault injection: kill -9 of the harness or of the engine mid-run, then look at the process
table and the run folder. Nothing may be left running, nothing finished may be lost, and a cut
run must be resumable. The synthetic engine (a real server subprocess with known timings) keeps
each drill to seconds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

SLOW_BENCH = ["bench", "--engine", "synthetic", "--model", "tiny-llama", "--ttft-ms", "5", "--itl-ms", "20",
              "--concurrency", "1", "--input-len", "8", "--output-len", "10", "--no-plots"]  # fmt: skip


def hb(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def start_hb(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_records(proc: subprocess.Popen, records: Path, n: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not (records.exists() and records.read_text().count("\n") >= n):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no records came"
        time.sleep(0.1)


def running(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def gone_within(procs: list[psutil.Process], seconds: float) -> bool:
    deadline = time.time() + seconds
    while running(procs) and time.time() < deadline:
        time.sleep(0.1)
    return not running(procs)


def engine_of(run: Path) -> psutil.Process:
    """The engine process, by the pid file the process launcher writes beside engine.log."""
    info = json.loads((run / "engine.pid.json").read_text())
    return psutil.Process(info["pid"])


def test_kill_9_of_bench_takes_its_engine_down(tmp_path):
    """SIGKILL gives the harness no chance to clean up: the engine must go by itself (the kernel's
    parent-death signal), not be left serving as a child of PID 1."""
    run = tmp_path / "k"
    proc = start_hb(*SLOW_BENCH, "--num-requests", "500", "--results-dir", str(tmp_path), "--run-name", "k")
    wait_records(proc, run / "records.jsonl", 2)
    engine = engine_of(run)
    assert engine.ppid() == proc.pid
    proc.kill()
    proc.communicate()
    assert gone_within([engine], 15), engine.cmdline()


def test_engine_watches_its_parent_when_the_signal_is_lost(tmp_path):
    """The fallback: an engine whose parent dies without a parent-death signal (here its parent is
    a shell that never asked for one) notices the new parent and stops itself."""
    parent_code = ("import os, subprocess, sys, time; subprocess.Popen([sys.executable, '-m', "
                   "'backends.synthetic', '--port', '0'], env={**os.environ, 'HYPERBENCH_PARENT_PID': "
                   "str(os.getpid())}); time.sleep(300)")
    sh = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 30
    while not (kids := psutil.Process(sh.pid).children()) and time.time() < deadline:
        time.sleep(0.05)
    assert kids, "the engine did not start"
    os.kill(sh.pid, signal.SIGKILL)
    sh.wait()
    assert gone_within(kids, 15), kids[0].cmdline()


def test_api_key_is_not_on_the_engine_command_line(tmp_path):
    """`ps` shows every user every command line: the key goes through the environment."""
    key = "do-not-show-this-key-7"
    run = tmp_path / "s"
    proc = start_hb(*SLOW_BENCH, "--num-requests", "6", "--api-key", key, "--results-dir", str(tmp_path),
                    "--run-name", "s")
    wait_records(proc, run / "records.jsonl", 1)
    engine = engine_of(run)
    assert key not in " ".join(engine.cmdline())
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["points"][0]["completed"] == 6  # the engine required the key, and got it


def test_serve_takes_the_key_from_the_environment(tmp_path, tiny_model):
    """`hyperbench serve` with HYPERBENCH_API_KEY set (how the engine images pass it): the engine
    requires the key, and it is on no command line, before or after serve hands over."""
    import httpx

    from harness.launchers.process import free_port

    key, port = "env-only-key-3", free_port()
    env = {**os.environ, "HYPERBENCH_API_KEY": key}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "serve", "hf", "--model", str(tiny_model),
                             "--dtype", "float32", "--device", "cpu", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert httpx.get(url + "/v1/models", timeout=10).status_code == 401
        ok = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert ok.status_code == 200
        assert key not in " ".join(psutil.Process(proc.pid).cmdline())  # serve exec'd the engine
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.parametrize("sig", [signal.SIGKILL])
def test_engine_killed_mid_bench_is_named_by_its_signal(tmp_path, sig):
    """A killed engine leaves no error line of its own: the reason names the signal."""
    run = tmp_path / "e"
    proc = start_hb(*SLOW_BENCH, "--num-requests", "40", "--results-dir", str(tmp_path), "--run-name", "e")
    wait_records(proc, run / "records.jsonl", 2)
    os.kill(engine_of(run).pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert f"killed by signal {int(sig)} ({sig.name})" in err, err
    summary = json.loads((run / "summary.json").read_text())
    assert f"killed by signal {int(sig)}" in summary["reason"]
    # what the dead engine refused was never sent: no record, so a resume sends it
    records = [json.loads(x) for x in (run / "records.jsonl").read_text().splitlines()]
    assert not [r for r in records if (r["error"] or "").startswith("ConnectError")]
    point = summary["points"][0]
    assert point["partial"] and point["requests"] == len(records) < 40
    res = hb("bench", "--resume", str(run))
    assert res.returncode == 0, res.stderr
    assert sorted(point_records(run)["concurrency=1"]) == list(range(40))


def point_records(run: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for line in (run / "records.jsonl").read_text().splitlines():
        r = json.loads(line)  # a torn line fails the test: the harness never leaves one on disk-full
        out.setdefault(r["point"], []).append(r["request_id"])
    return out


def test_bench_killed_then_report_then_resume_loses_and_repeats_nothing(tmp_path):
    """kill -9 in the second point: `report` rebuilds the summary from the records (incomplete,
    with the reason), and `bench --resume` keeps the first point as it was, sends only the
    second point's missing requests, and completes the run."""
    run = tmp_path / "cut"
    proc = start_hb(*SLOW_BENCH[:-7], "--concurrency", "4,1", "--input-len", "8", "--output-len", "10",
                    "--num-requests", "16", "--no-plots", "--results-dir", str(tmp_path), "--run-name", "cut")
    wait_records(proc, run / "records.jsonl", 16 + 4)
    proc.kill()
    proc.communicate()
    assert json.loads((run / "summary.json").read_text())["status"] == "running"
    before = point_records(run)
    assert len(before["concurrency=4"]) == 16 and 4 <= len(before["concurrency=1"]) < 16

    res = hb("report", str(run), "--no-plots")
    assert res.returncode == 0, res.stderr
    rebuilt = json.loads((run / "summary.json").read_text())
    assert rebuilt["status"] == "incomplete" and rebuilt["reason"] == "process ended without writing a summary"
    first, second = rebuilt["points"]
    assert first["concurrency"] == 4 and first["completed"] == 16 and not first.get("partial")
    assert second["partial"] and second["completed"] == len(before["concurrency=1"])
    assert "| 1 " in (run / "report.md").read_text() or "concurrency" in (run / "report.md").read_text()

    res = hb("bench", "--resume", str(run))
    assert res.returncode == 0, res.stderr
    after = point_records(run)
    assert after["concurrency=4"] == before["concurrency=4"]  # not sent again
    assert sorted(after["concurrency=1"]) == list(range(16))  # each request once
    assert after["concurrency=1"][:len(before["concurrency=1"])] == before["concurrency=1"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and len(summary["resumed"]) == 1 and "process" not in summary
    assert summary["points"][0] == first  # the finished point as it was
    assert summary["points"][1]["completed"] == 16 and summary["points"][1]["sessions"] == 2
    res = hb("bench", "--resume", str(run))
    assert res.returncode == 2 and res.stderr.strip() == f"error: {run} is complete: nothing to resume"


def test_docker_launcher_reaps_the_containers_of_a_killed_harness():
    """Real containers on the real daemon: one whose harness is gone is removed on the launcher's
    next start; one whose harness runs, and one of another host, are left alone."""
    docker = pytest.importorskip("docker")
    from harness.launchers.docker import LABEL, owner_labels, reap_orphans

    try:
        client = docker.from_env(timeout=60)
        client.ping()
        image = next((t for i in client.images.list() for t in i.tags if t.startswith("hyperbench/")), None)
    except Exception as e:  # no daemon, no socket
        pytest.skip(f"no Docker daemon here ({type(e).__name__})")
    if image is None:
        pytest.skip("no hyperbench image built here")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_started = psutil.Process(dead.pid).create_time()
    dead.wait()
    mine = owner_labels(None)
    kinds = {
        "gone": {**mine, "hyperbench.owner.pid": str(dead.pid), "hyperbench.owner.started": repr(dead_started)},
        "alive": mine,
        "elsewhere": {**mine, "hyperbench.owner.host": "another-host", "hyperbench.owner.pid": str(dead.pid)},
    }
    made = {k: client.containers.run(image, ["sleep", "300"], detach=True, labels={LABEL: "docker", **labels},
                                     name=f"hyperbench-reap-test-{k}-{os.getpid()}")
            for k, labels in kinds.items()}  # fmt: skip
    try:
        removed = reap_orphans(client)
        assert made["gone"].name in removed
        left = {c.name for c in client.containers.list(all=True)}
        assert made["gone"].name not in left
        assert made["alive"].name in left and made["elsewhere"].name in left
    finally:
        for c in made.values():
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass


# --- the machine fails under the run: full disk, read-only folder, an engine that hangs ---------


@contextmanager
def tmpfs(path: Path, size: str, *options: str):
    """A small real filesystem of its own (a full disk without filling the machine's); root only."""
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join([f"size={size}", *options])
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path, leave_bytes: int) -> Path:
    """Fill the filesystem of `folder` but `leave_bytes`; the filler file, to free it again."""
    free = shutil.disk_usage(folder).free - leave_bytes
    filler = folder / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(free, 0))
    return filler


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_disk_full_mid_bench_stops_in_one_line_and_resumes_once_freed(tmp_path):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        filler = fill(disk, 96 * 1024)
        proc = start_hb("bench", "--engine", "synthetic", "--ttft-ms", "1", "--itl-ms", "1", "--concurrency", "4",
                        "--output-len", "10", "--input-len", "8", "--num-requests", "400", "--no-plots",
                        "--results-dir", str(disk), "--run-name", "full")
        _, err = proc.communicate(timeout=120)
        run = disk / "full"
        assert proc.returncode == 2, err
        assert "No space left on device" in one_error_line(err)
        assert not running(psutil.Process().children(recursive=True))  # nothing left by the run
        kept = point_records(run)["concurrency=4"]
        assert 0 < len(kept) < 400
        filler.unlink()  # space again: finish it
        res = hb("bench", "--resume", str(run))
        assert res.returncode == 0, res.stderr
        ids = point_records(run)["concurrency=4"]
        assert sorted(ids) == list(range(400)) and ids[:len(kept)] == kept
        assert json.loads((run / "summary.json").read_text())["status"] == "complete"


def test_report_on_a_full_disk_or_a_read_only_folder_keeps_the_run(tmp_path):
    res = hb(*SLOW_BENCH[:5], "--ttft-ms", "1", "--itl-ms", "1", "--num-requests", "2", "--output-len", "2",
             "--no-plots", "--results-dir", str(tmp_path), "--run-name", "done")
    assert res.returncode == 0, res.stderr
    with tmpfs(tmp_path / "disk", "1m") as disk:
        shutil.copytree(tmp_path / "done", disk / "done")
        (disk / "done" / "report.md").unlink()
        before = (disk / "done" / "summary.json").read_text()
        fill(disk, 0)
        res = hb("report", str(disk / "done"), "--no-plots")
        assert res.returncode == 2 and "No space left on device" in one_error_line(res.stderr)
        assert (disk / "done" / "summary.json").read_text() == before
        (disk / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        res = hb("report", str(disk / "done"), "--no-plots")
        assert res.returncode == 2 and "Read-only file system" in one_error_line(res.stderr)
        res = hb(*SLOW_BENCH[:5], "--results-dir", str(disk / "new"))
        assert res.returncode == 2 and "Read-only file system" in one_error_line(res.stderr)
        assert (disk / "done" / "summary.json").read_text() == before


def test_engine_that_hangs_is_timed_out_and_torn_down(tmp_path):
    """Connection open, no token ever (first token due in ~3 h): each request ends at its
    timeout, the run says so in one line, and the engine is stopped."""
    t0 = time.monotonic()
    proc = start_hb("bench", "--engine", "synthetic", "--ttft-ms", "10000000", "--concurrency", "2",
                    "--num-requests", "2", "--warmup", "0", "--timeout-s", "2", "--no-plots",
                    "--results-dir", str(tmp_path), "--run-name", "hang")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "every request failed at concurrency=2" in one_error_line(err), err
    assert time.monotonic() - t0 < 60
    assert not running(psutil.Process().children(recursive=True))
    summary = json.loads((tmp_path / "hang" / "summary.json").read_text())
    assert summary["status"] == "incomplete" and summary["points"][0]["failed"] == 2


def test_sigterm_as_slurm_sends_it_then_resume(tmp_path):
    """SLURM's scancel / time limit signals every process of the job at once: the harness and
    its engine get SIGTERM together. The run is marked, nothing is left, and it resumes."""
    run = tmp_path / "job"
    proc = start_hb(*SLOW_BENCH, "--num-requests", "30", "--results-dir", str(tmp_path), "--run-name", "job")
    wait_records(proc, run / "records.jsonl", 3)
    engine = engine_of(run)
    for p in (proc.pid, engine.pid):
        os.kill(p, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (2, 130), err
    assert "Traceback" not in err
    assert gone_within([engine], 15)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "incomplete", summary
    kept = point_records(run)["concurrency=1"]
    res = hb("bench", "--resume", str(run))
    assert res.returncode == 0, res.stderr
    ids = point_records(run)["concurrency=1"]
    assert sorted(ids) == list(range(30)) and ids[:len(kept)] == kept


# --- mid-score: the engine killed, then the harness killed, then resumed ------------------------


@pytest.mark.slow
def test_score_engine_killed_then_harness_killed_then_resume_recomputes_nothing(tmp_path, tiny_model):
    """Three hf engine starts on the tiny model (~1-2 min on 2 cores): kill -9 of the engine mid-
    score (one line, exit 2, marked incomplete); --resume, then kill -9 of the harness mid-score
    (its engine goes with it); --resume again: complete, every request answered exactly once."""
    from harness.score import staging

    csv = os.environ.get(staging.TRUTHFULQA_CSV_ENV) or (Path(__file__).resolve().parents[2] / "shared" / "data"
                                                          / "truthfulqa" / "TruthfulQA.csv")
    if not Path(csv).is_file():
        pytest.skip(f"TruthfulQA CSV not found at {csv}")
    data = staging.ensure_staged(truthfulqa_csv=csv)
    run = tmp_path / "s"
    cache = run / "requests.jsonl"

    def answered() -> int:
        return cache.read_bytes().count(b"\n") if cache.exists() else 0

    proc = start_hb("score", "--engine", "hf", "--model", str(tiny_model), "--dtype", "float32", "--tasks",
                    "mmlu_anatomy", "--limit", "60", "--concurrency", "1", "--data-dir", str(data),
                    "--results-dir", str(tmp_path), "--run-name", "s")
    wait_records(proc, cache, 10, timeout=600)
    os.kill(engine_of(run).pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert json.loads((run / "summary.json").read_text())["status"] == "incomplete"

    first = answered()
    proc = start_hb("score", "--resume", str(run))
    wait_records(proc, cache, first + 10, timeout=600)
    engine = engine_of(run)
    proc.kill()
    proc.communicate()
    assert gone_within([engine], 20)

    res = hb("score", "--resume", str(run), timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    keys = [json.loads(x)["key"] for x in cache.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 240  # 60 questions x 4 choices, each sent once
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_agree_killed_mid_run_resumes_only_the_engines_it_had_not_finished(tmp_path, tiny_model):
    """kill -9 of agree while its second engine runs: that engine goes too; --resume reads the
    reference's saved output back (not run again) and runs only the second engine."""
    run = tmp_path / "a"
    proc = start_hb("agree", "--engines", "hf,hf:dtype=bfloat16", "--model", str(tiny_model), "--prompts", "4",
                    "--max-tokens", "8", "--results-dir", str(tmp_path), "--run-name", "a")
    ref_out, pid_file = run / "outputs" / "hf.json", run / "logs" / "engine.pid.json"
    deadline = time.time() + 600
    while not (ref_out.is_file() and pid_file.is_file()):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    engine = engine_of(run / "logs")
    saved = ref_out.stat().st_mtime_ns
    proc.kill()
    proc.communicate()
    assert gone_within([engine], 20)
    assert not (run / "outputs" / "hf-dtype-bfloat16.json").exists()

    res = hb("agree", "--resume", str(run), timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "complete" and len(s["resumed"]) == 1
    assert ref_out.stat().st_mtime_ns == saved  # the reference was not run again
    assert set(s["agreement"]) == {"hf:dtype=bfloat16"}
    assert {e["label"]: e["status"] for e in s["engines"]} == {"hf": "ok", "hf:dtype=bfloat16": "ok"}
