"""`hyperbench score` as a user runs it: a launched engine end to end, an engine that cannot do
loglikelihood, and a run killed with SIGKILL then resumed without recomputing finished requests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.score import staging

REPO = Path(__file__).resolve().parents[1]
TRUTHFULQA_CSV = REPO.parent / "shared" / "data" / "truthfulqa" / "TruthfulQA.csv"


@pytest.fixture(scope="session")
def staged() -> Path:
    csv = os.environ.get(staging.TRUTHFULQA_CSV_ENV) or TRUTHFULQA_CSV
    if not Path(csv).is_file():
        pytest.skip(f"TruthfulQA CSV not found at {csv}")
    return staging.ensure_staged(truthfulqa_csv=csv)


def hb_cmd(*args):
    return [sys.executable, "-m", "harness.cli", *args]


def hb(*args, timeout=900, cwd=REPO):
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(hb_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def noise(stderr: str) -> list[str]:
    """stderr lines other than EngineLM's progress bars and `note:` lines."""
    return [ln for ln in stderr.replace("\r", "\n").splitlines()
            if ln.strip() and "cached)" not in ln and not ln.startswith("note: ")]


def test_score_launches_an_engine_and_writes_a_run_folder(tiny_model, staged, tmp_path):
    res = hb("score", "--engine", "hf", "--model", str(tiny_model), "--dtype", "float32", "--device", "cpu",
             "--tasks", "mmlu_anatomy,gsm8k,truthfulqa_mc1,truthfulqa_gen", "--limit", "3",
             "--data-dir", str(staged), "--gen-kwargs", "max_gen_toks=8",
             "--results-dir", str(tmp_path), "--run-name", "e2e", cwd=tmp_path)  # not a git repository
    assert res.returncode == 0, res.stderr[-3000:]
    # no progress bars of `datasets` / lm-eval's task building, no "fatal: not a git repository"
    assert noise(res.stderr) == [], res.stderr[-3000:]
    run = tmp_path / "e2e"
    for name in ("config.json", "env.json", "engine.log", "summary.json", "report.md", "requests.jsonl",
                 "lm_eval_results.json", "tasks/gsm8k.yaml", "samples/mmlu_anatomy.jsonl",
                 "samples/gsm8k.jsonl", "samples/truthfulqa_gen.jsonl"):
        assert (run / name).is_file(), name
    s = json.loads((run / "summary.json").read_text())
    assert s["schema_version"] == 1 and s["kind"] == "score" and s["status"] == "complete"
    assert s["engine"] == "hf" and s["tasks"]["mmlu_anatomy"]["n"] == 3
    for task, metric in (("mmlu_anatomy", "acc"), ("truthfulqa_mc1", "acc"), ("gsm8k", "exact_match,strict-match"),
                         ("truthfulqa_gen", "bleu_acc"), ("truthfulqa_gen", "rouge1_max")):
        m = s["tasks"][task]["metrics"][metric]
        assert m["value"] is not None and m["stderr"] is not None, (task, metric)
    assert any("APPROXIMATION" in n for n in s["notes"])  # mc1 on the CSV-built approximation
    report = (run / "report.md").read_text()
    assert "LOCAL APPROXIMATION" in report and "| gsm8k | max_tokens=8, temperature=0.0" in report
    assert "truthfulqa_mc1" in res.stdout and f"run folder: {run}" in res.stdout
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["score"]["tasks"] == ["mmlu_anatomy", "gsm8k", "truthfulqa_mc1", "truthfulqa_gen"]
    assert cfg["engine"]["dtype"] == "float32"

    # `report` rewrites the score report (not bench's); `compare` puts accuracy beside speed
    (run / "report.md").unlink()
    rep = hb("report", str(run))
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert "## Scores" in (run / "report.md").read_text()
    bench = hb("bench", "--engine", "hf", "--model", str(tiny_model), "--dtype", "float32", "--device", "cpu",
               "--concurrency", "1", "--input-len", "16", "--output-len", "4", "--num-requests", "2",
               "--results-dir", str(tmp_path), "--run-name", "speed")
    assert bench.returncode == 0, bench.stderr[-2000:]
    cmp = hb("compare", str(run), str(tmp_path / "speed"), "--results-dir", str(tmp_path), "--run-name", "cmp",
             "--no-plots")
    assert cmp.returncode == 0, cmp.stderr[-2000:]
    assert "accuracy" in cmp.stdout and "mmlu_anatomy/acc" in cmp.stdout  # on the terminal too
    text = (tmp_path / "cmp" / "report.md").read_text()
    acc = text.split("## Accuracy beside speed")[1].strip().splitlines()
    head, row = [c.strip() for c in acc[0].split("|")], [c.strip() for c in acc[2].split("|")]
    assert row[1] == "hf" and "out tok/s (peak)" in head
    mmlu = s["tasks"]["mmlu_anatomy"]["metrics"]["acc"]["value"]
    assert float(row[head.index("mmlu_anatomy/acc")]) == pytest.approx(mmlu, abs=1e-3)
    peak = json.loads((tmp_path / "speed" / "summary.json").read_text())["points"][0]["output_throughput"]
    assert float(row[head.index("out tok/s (peak)")].replace(",", "")) == pytest.approx(peak, rel=0.01)


def test_engine_without_prompt_logprobs_asked_for_mmlu(staged, tmp_path):
    from backends.synthetic import start_in_thread

    with start_in_thread(ttft_ms=0, itl_ms=0) as srv:  # a real server of ours with no prompt logprobs
        res = hb("score", "--url", srv.base_url, "--model", "synthetic", "--tasks", "mmlu_anatomy",
                 "--limit", "2", "--data-dir", str(staged), "--results-dir", str(tmp_path), "--run-name", "r")
    assert res.returncode == 2, res.stderr[-2000:]
    err = [ln for ln in res.stderr.splitlines() if ln.strip() and "it/s" not in ln]
    assert len(err) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "returns no prompt logprobs" in err[0] and "loglikelihood tasks" in err[0]
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "failed"


@pytest.fixture(scope="module")
def hf_server(tiny_model, tmp_path_factory):
    from tests.conftest import start_server

    with start_server("hf", tiny_model, tmp_path_factory.mktemp("engine")) as server:
        yield server


def test_killed_run_resumes_without_recomputing(hf_server, staged, tmp_path):
    args = ["score", "--url", hf_server.base_url, "--model", hf_server.model,
            "--tokenizer", str(hf_server.model_path), "--tasks", "mmlu_anatomy", "--limit", "100",
            "--num-fewshot", "5", "--concurrency", "2", "--data-dir", str(staged),
            "--results-dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(hb_cmd(*args, "--run-name", "killed"), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    cache = tmp_path / "killed" / "requests.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if cache.exists() and len(cache.read_text().splitlines()) >= 40:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = set()
    for line in cache.read_text().splitlines():
        try:
            done.add(json.loads(line)["key"])
        except json.JSONDecodeError:
            pass  # torn by the kill
    assert 40 <= len(done) < 400
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["status"] == "running"  # killed: nothing got to mark it

    res = hb("score", "--resume", str(tmp_path / "killed"))
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert s["status"] == "complete" and len(s["resumed"]) == 1
    assert s["requests"]["loglikelihood"] == {"cached": len(done), "sent": 400 - len(done)}
    keys = [json.loads(x)["key"] for x in cache.read_text().splitlines()]  # the torn line was cut
    assert len(keys) == len(set(keys)) == 400  # each request answered once, across the two runs

    clean = hb(*args, "--run-name", "clean")
    assert clean.returncode == 0, clean.stderr[-3000:]
    c = json.loads((tmp_path / "clean" / "summary.json").read_text())
    assert c["requests"]["loglikelihood"] == {"cached": 0, "sent": 400}
    assert s["tasks"]["mmlu_anatomy"]["metrics"] == c["tasks"]["mmlu_anatomy"]["metrics"]
    resumed = [json.loads(x)["resps"] for x in (tmp_path / "killed/samples/mmlu_anatomy.jsonl").open()]
    fresh = [json.loads(x)["resps"] for x in (tmp_path / "clean/samples/mmlu_anatomy.jsonl").open()]
    # the same answers; the loglikelihoods to float rounding: the hf engine's scoring prefix cache
    # starts a forward after the prefix it shares with the prompt scored before it, and which
    # prompt that was differs between a resumed and an uninterrupted run (~1e-6)
    assert len(resumed) == len(fresh)
    for r, f in zip(resumed, fresh):
        got, want = [x[0] for x in r], [x[0] for x in f]
        assert [g[1] for g in got] == [w[1] for w in want]  # is-greedy flags: exact
        assert [g[0] for g in got] == pytest.approx([w[0] for w in want], abs=1e-4)


def test_resume_of_a_complete_run_is_refused(tmp_path):
    run = tmp_path / "done"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"schema_version": 1, "kind": "score", "status": "complete"}))
    res = hb("score", "--resume", str(run))
    assert res.returncode == 2 and "nothing to resume" in res.stderr


def test_interrupted_run_says_how_to_resume_and_resume_clears_the_reason(hf_server, staged, tmp_path):
    """SIGTERM (a scheduler's, or Ctrl-C) mid-run: one line names the resume command; the resumed
    run ends complete, without the interruption's reason, its note on --num-fewshot kept."""
    args = ["score", "--url", hf_server.base_url, "--model", hf_server.model,
            "--tokenizer", str(hf_server.model_path), "--tasks", "mmlu_anatomy,truthfulqa_mc1",
            "--limit", "30", "--num-fewshot", "1", "--concurrency", "1", "--data-dir", str(staged),
            "--results-dir", str(tmp_path), "--run-name", "stopped"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(hb_cmd(*args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)
    cache = tmp_path / "stopped" / "requests.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if cache.exists() and len(cache.read_text().splitlines()) >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    lines = noise(err)
    assert f"hyperbench score --resume {tmp_path / 'stopped'}" in lines[0] and "Traceback" not in err, err
    s = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert s["status"] == "incomplete" and s["reason"] == "interrupted"

    res = hb("score", "--resume", str(tmp_path / "stopped"))
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert s["status"] == "complete" and "reason" not in s and len(s["resumed"]) == 1
    assert s["requests"]["loglikelihood"]["cached"] >= 10
    # truthfulqa_mc1 keeps its own num_fewshot (0): said, not silently ignored
    assert any("--num-fewshot 1 not applied to truthfulqa_mc1" in n for n in s["notes"]), s["notes"]
    assert "not applied to truthfulqa_mc1" in res.stderr
    assert "complete**" in (tmp_path / "stopped" / "report.md").read_text()


def test_context_longer_than_the_engine_is_cut_as_lm_eval_hf_does(hf_server):
    """A loglikelihood prompt longer than the engine's context: the oldest context tokens go, as
    lm-eval's hf model drops them, and the continuation's loglikelihood is the same."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    from harness.score.lm import EngineLM

    tok = AutoTokenizer.from_pretrained(hf_server.model_path)
    context = " ".join(f"item {i} is number {i * 7 % 13}." for i in range(40)) + " The answer is"
    reqs = [Instance("loglikelihood", {}, (context, c), i) for i, c in enumerate((" 3", " seven", " 12."))]
    reqs.append(Instance("loglikelihood", {}, ("Short context:", " fits"), 3))
    assert len(tok(context, add_special_tokens=False).input_ids) > 200
    lm = EngineLM(hf_server.base_url, hf_server.model, tokenizer=tok, max_length=64, progress=False)
    ours = lm.loglikelihood(reqs)
    assert lm.alignment["token-ids (context cut)"] == 3 and sum(lm.alignment.values()) == 4
    # EngineLM keeps max_length - 2 = 62 tokens in all; lm-eval's hf keeps max_length + 1
    ref = HFLM(pretrained=str(hf_server.model_path), max_length=61, batch_size=1, device="cpu", dtype="float32")
    theirs = ref.loglikelihood(reqs[:3], disable_tqdm=True)
    for (a, _), (b, _) in zip(ours[:3], theirs):
        assert a == pytest.approx(b, abs=1e-3)
    whole = EngineLM(hf_server.base_url, hf_server.model, tokenizer=tok, max_length=2048, progress=False)
    assert whole.loglikelihood(reqs[:1])[0][0] != pytest.approx(ours[0][0], abs=1e-3)  # the cut mattered


def test_compare_shows_a_group_not_its_57_members():
    from harness.compare.run import score_metrics

    m = lambda v: {"metrics": {"acc": {"value": v, "stderr": 0.1}}}  # noqa: E731
    summary = {"tasks": {"mmlu_anatomy": m(0.3), "mmlu_virology": m(0.2), "gsm8k": m(0.1)},
               "groups": {"mmlu": {**m(0.25), "subtasks": ["mmlu_stem", "mmlu_other"]},
                          "mmlu_stem": {**m(0.3), "subtasks": ["mmlu_anatomy"]},
                          "mmlu_other": {**m(0.2), "subtasks": ["mmlu_virology"]}}}
    assert score_metrics(summary) == {"gsm8k/acc": 0.1, "mmlu/acc": 0.25}
