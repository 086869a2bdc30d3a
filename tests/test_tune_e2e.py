"""`hyperbench tune` end to end through the CLI on a real engine (transformers, tiny-llama), a real
lm-eval task (GSM8K, staged offline from its registry package) and real Ax.

The tiny model's accuracy is 0 on GSM8K: what is asserted is structure, counts, what went on the
wire, engine restarts for an engine option, resume identity after SIGKILL, and Ax's bookkeeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--model", "tiny-llama", "--dtype", "float32", "--num-fewshot", "1", "--max-gen-toks", "8",
         "--dev-limit", "4"]  # fmt: skip


def hb(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def staged():
    from harness.score.staging import ensure_staged

    return ensure_staged(("gsm8k",))


def test_tune_hf_tiny_end_to_end(staged, tmp_path):
    res = hb("tune", "--engine", "hf", *SMALL, "--data-dir", str(staged),
             "--params", "temperature,top_p,max_batch_size=1:4", "--max-batch-size", "4",
             "--objectives", "accuracy,-tpot", "--trials", "3", "--init-trials", "2",
             "--test-limit", "4", "--holdout-top", "1", "--results-dir", str(tmp_path), "--run-name", "t")
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "t"
    assert "Traceback" not in res.stderr
    assert f"run folder: {run}" in res.stdout and "held-out (4 items) trial-" in res.stdout
    s = json.loads((run / "summary.json").read_text())
    plan = json.loads((run / "plan.json").read_text())
    assert s["kind"] == "tune" and s["status"] == "complete"
    assert s["objectives"] == ["accuracy", "-tpot_ms"] and s["metric"] == "exact_match,strict-match"
    assert len(plan["dev"]) == 4 and len(plan["test"]) == 4 and not set(plan["dev"]) & set(plan["test"])

    # every trial: completed, the baseline first, Sobol then Bayesian optimization
    trials = s["trials"]
    assert [t["index"] for t in trials] == [0, 1, 2]
    assert [t["status"] for t in trials] == ["completed"] * 3
    assert [t["generator"] for t in trials] == ["baseline", "Sobol", "MBM"]
    assert trials[0]["params"] == {"temperature": 0.8, "top_p": 0.95, "max_batch_size": 4}
    for t in trials:
        m = t["metrics"]
        assert 0 <= m["accuracy"]["mean"] <= 1 and m["accuracy"]["sem"] > 0
        assert m["tpot_ms"]["mean"] > 0 and m["tpot_ms"]["sem"] is not None and m["output_tok_s"]["mean"] > 0
        folder = run / "trials" / f"{t['index']:04d}"
        items = lines(folder / "items.jsonl")
        assert [i["doc_id"] for i in items] == plan["dev"]
        assert all(i["ttft_ms"] > 0 and i["e2e_ms"] >= i["ttft_ms"] for i in items)
        # what went on the wire: the trial's own sampling values and the run's seed, streamed
        for r in lines(folder / "requests.jsonl"):
            p = r["params"]
            assert p["temperature"] == pytest.approx(t["params"]["temperature"])
            assert p["top_p"] == pytest.approx(t["params"]["top_p"]) and p["seed"] == 0
            assert p["max_tokens"] == 8 and r["completion_tokens"] <= 8

    # Ax's state agrees with the records
    from harness.tune.study import Study

    ax = Study.load(run, 0).trials()
    assert {i: st for i, (st, _, _) in ax.items()} == {0: "completed", 1: "completed", 2: "completed"}

    # the engine option restarts the engine: one start per change, each with its value
    starts = [ln for ln in (run / "engine.log").read_text().splitlines() if ln.startswith("$ ")]
    sizes = [int(ln.split("--max-batch-size ")[1].split()[0]) for ln in starts]
    order = [t["params"]["max_batch_size"] for t in trials]
    h = s["holdout"]
    order += [h["results"][c]["params"]["max_batch_size"] for c in ["baseline"] + [x["label"] for x in h["comparisons"]]]
    expected = [v for k, v in enumerate(order) if k == 0 or v != order[k - 1]]
    assert sizes == expected
    assert not (run / "engine.pid.json").exists()  # torn down at the end

    # held-out: the baseline and one pick on the same 4 items, compared per item
    assert s["selection"]["picks"] and s["selection"]["front"]
    (comp,) = h["comparisons"]
    assert comp["verdict"] and set(comp["metrics"]) >= {"accuracy", "tpot_ms"}
    for r in comp["metrics"].values():
        assert r["n"] <= 4 and r["ci"][0] <= r["ci"][1] and 0 < r["p"] <= 1
    assert [i["doc_id"] for i in lines(run / "holdout" / "baseline" / "items.jsonl")] == plan["test"]

    report = (run / "report.md").read_text()
    for section in ("## Trials", "## Best configurations", "## Held-out comparison", "pareto.png"):
        assert section in report
    for plot in ("pareto.png", "convergence.png", "slices.png"):
        assert (run / "plots" / plot).stat().st_size > 1000
    # `hyperbench report` recognises a tune run folder
    from harness.cli import main

    (run / "report.md").unlink()
    main(["report", str(run)])
    assert "## Held-out comparison" in (run / "report.md").read_text()


def _wait_for(proc, ready, timeout: float = 600) -> None:
    """Poll every 2 ms: a tiny-model request takes ~14 ms, so what the test does next lands before
    the next answer could."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the tune ended too early"
        assert time.monotonic() < deadline
        time.sleep(0.002)


def _answers(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_engine_crash_fails_a_trial_and_sigkill_of_the_tune_resumes_it(staged, tmp_path):
    """In one run: the engine is killed during trial 1 (that trial fails, is reported to Ax as
    failed and not retried; trial 2 gets a fresh engine), then the tune itself is killed with
    SIGKILL in the middle of trial 2 (one request answered), then --resume: the same trial ids
    and parameters as an uninterrupted run, trial 2 finished from its request cache, and the
    engine gone with the killed tune (its parent-death signal), not left behind."""
    import psutil

    args = ["tune", "--engine", "hf", *SMALL, "--data-dir", str(staged), "--params", "temperature,top_p",
            "--objectives", "accuracy", "--constraint", "tpot_ms<=100000", "--trials", "4",
            "--concurrency", "1", "--test-limit", "0", "--results-dir", str(tmp_path), "--run-name", "r"]
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    run = tmp_path / "r"
    stopped = None
    try:
        # the engine crashes at trial 1's first answer (a 50 ms poll once let all 4 of its ~14 ms
        # requests finish first, in CI; the pid is read before, so the kill lands in ~2 ms)
        _wait_for(proc, lambda: (run / "trials" / "0001" / "trial.json").is_file())
        first_engine = json.loads((run / "engine.pid.json").read_text())["pid"]
        _wait_for(proc, lambda: _answers(run / "trials" / "0001" / "requests.jsonl") >= 1)
        os.killpg(first_engine, signal.SIGKILL)
        # trial 2 on a fresh engine: at its first answer the engine is frozen (SIGSTOP, so no
        # second answer can land) and the tune is killed with SIGKILL in the middle of the trial
        _wait_for(proc, lambda: _answers(run / "trials" / "0002" / "requests.jsonl") >= 1)
        stopped = json.loads((run / "engine.pid.json").read_text())["pid"]
        os.killpg(stopped, signal.SIGSTOP)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if stopped is not None:
            os.killpg(stopped, signal.SIGCONT)  # the orphan runs on, as after a real SIGKILL
    orphan = json.loads((run / "engine.pid.json").read_text())  # SIGKILL: the tune removed nothing...
    assert orphan["pid"] != first_engine
    deadline = time.time() + 30  # ...but its engine went with it
    while psutil.pid_exists(orphan["pid"]) and psutil.Process(orphan["pid"]).status() != "zombie":
        assert time.time() < deadline, "the engine outlived the killed tune"
        time.sleep(0.1)
    failed = json.loads((run / "trials" / "0001" / "trial.json").read_text())
    assert failed["status"] == "failed" and "engine died" in failed["error"] and failed["attempts"] == 1
    before = json.loads((run / "trials" / "0002" / "trial.json").read_text())
    assert before["status"] == "running" and before["attempts"] == 1

    res = hb("tune", "--resume", str(run))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "stopped the engine" not in res.stderr  # nothing was left to stop

    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "complete" and len(s["resumed"]) == 1
    assert [(t["index"], t["status"]) for t in s["trials"]] == [(0, "completed"), (1, "failed"),
                                                               (2, "completed"), (3, "completed")]
    assert [t["attempts"] for t in s["trials"]] == [1, 1, 2, 1]  # the failed trial was not retried
    cache = run / "trials" / "0002" / "requests.jsonl"
    t2 = json.loads((run / "trials" / "0002" / "trial.json").read_text())
    assert t2["requests"]["cached"] >= 1 and t2["requests"]["cached"] + t2["requests"]["sent"] == 4
    keys = [r["key"] for r in lines(cache)]
    assert len(keys) == len(set(keys)) == 4  # no request sent twice

    # Ax holds the same trials as an uninterrupted run (it proposes by seed and trial index)
    from harness.tune.objectives import Constraint, Objective
    from harness.tune.space import SearchSpace
    from harness.tune.study import Study

    ax = Study.load(run, 0).trials()
    assert {i: st for i, (st, _, _) in ax.items()} == {0: "completed", 1: "failed", 2: "completed",
                                                       3: "completed"}
    plan = json.loads((run / "plan.json").read_text())
    fresh = Study.create(tmp_path / "fresh", SearchSpace.from_json(plan["space"]),
                         [Objective(**o) for o in plan["objectives"]],
                         [Constraint(**c) for c in plan["constraints"]], "bayes", 0, None, plan["tracking"])
    data = {"accuracy": (0.0, 0.1), **{m: (1.0, 0.1) for m in ("tpot_ms", "ttft_ms", "e2e_ms")},
            "output_tok_s": 1.0}
    fresh.complete(0, data)
    for i in (1, 2, 3):
        index, params = fresh.new_trial()
        assert index == i and params == pytest.approx(s["trials"][i]["params"])
        fresh.fail(i, "x") if i == 1 else fresh.complete(i, data)


def test_speed_objectives_are_measured_right_on_an_engine_of_known_timing(staged, tmp_path):
    """The synthetic engine (backends/synthetic/, a real server on the wire contract) streams
    its first token after ttft_ms and then one every itl_ms, exactly max_tokens of them: each
    trial's TPOT, TTFT and E2E must come out at those values. Run in-process through --url (an
    engine someone else runs: sampling parameters only)."""
    from backends.synthetic import launch
    from harness.tune.config import TuneConfig
    from harness.tune.run import run

    with launch(ttft_ms=30, itl_ms=6) as endpoint:
        cfg = TuneConfig(engine={"kind": "synthetic", "model": "synthetic"},
                         target={"url": endpoint.base_url},
                         tune={"params": ["temperature"], "objectives": ["accuracy"],
                               "constraint": ["tpot_ms<=100"], "trials": 2, "dev_limit": 4,
                               "test_limit": 0, "max_gen_toks": 8, "num_fewshot": 0, "concurrency": 2,
                               "data_dir": str(staged)},
                         output={"results_dir": str(tmp_path), "run_name": "syn", "plots": False})
        s = run(cfg).read_json("summary.json")
    assert s["status"] == "complete" and s["engine"] == "external"
    for t in s["trials"]:
        m = {k: v["mean"] for k, v in t["metrics"].items()}
        assert m["tpot_ms"] == pytest.approx(6, abs=1.0), t
        assert m["ttft_ms"] == pytest.approx(30, abs=8), t
        assert m["e2e_ms"] == pytest.approx(30 + 7 * 6, abs=10), t
        # 2 streams of 8 tokens per ~72 ms
        assert m["output_tok_s"] == pytest.approx(2 * 8 / 0.072, rel=0.3), t
    assert s["holdout"]["why"]  # --test-limit 0: no held-out comparison, and it says so


def test_tune_progress_lines_count_trials_like_the_report(staged, tmp_path):
    """`--trials 3` prints trial 0 (the baseline) to trial 2, each with its place in the budget
    (it used to print 'trial 2/2': the last index read as 'two of two'); the indices are those of
    report.md and the terminal table. The synthetic engine answers in milliseconds."""
    res = hb("tune", "--engine", "synthetic", "--model", "tiny-llama", "--ttft-ms", "1", "--itl-ms", "1",
             "--params", "temperature", "--objectives", "accuracy", "--trials", "3", "--init-trials", "2",
             "--dev-limit", "2", "--test-limit", "0", "--num-fewshot", "0", "--max-gen-toks", "4",
             "--data-dir", str(staged), "--results-dir", str(tmp_path), "--run-name", "t", "--no-plots")
    assert res.returncode == 0, res.stderr[-3000:]
    progress = [ln for ln in res.stderr.splitlines() if ln.startswith("trial ")]
    assert [ln.split(":")[0] for ln in progress] == ["trial 0 (baseline, 1 of 3)", "trial 1 (2 of 3)",
                                                     "trial 2 (3 of 3)"], res.stderr
    report = (tmp_path / "t" / "report.md").read_text()
    assert "| 0 (baseline) |" in report
    assert "0 (baseline)" in res.stdout  # the terminal table names trial 0 the same way
