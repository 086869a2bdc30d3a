"""`hyperbench study`: a real study of several variants of the tiny model (and of smollm2-135m in the
slow tier), its verdict recomputed
from the cells' own run folders; a study killed mid-cell and resumed; the paired accuracy test on
known differences; bad input.

Times on the 2-core CI box: the paired test < 1 s; bad input ~2 s per case; a failed cell ~20 s; kill + resume
(synthetic engine) ~1 min; the 3-variant study (hf, hf:int8, llamacpp:q8_0) ~1.5 min on tiny-llama, ~2.7
min on smollm2-135m (a 2-core box at load ~2).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.study.paired import paired_test


def hb(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


# ---------------------------------------------------------------------------- the paired test


def items(scores: list[int]) -> list[dict]:
    return [{"doc_id": f"t/{i}", "score": float(s)} for i, s in enumerate(scores)]


def test_paired_test_calls_a_known_difference_and_not_equal_results():
    n = 200
    ref = [1 if i % 10 < 7 else 0 for i in range(n)]  # 70% right
    worse = [r if i % 10 != 0 else 0 for i, r in enumerate(ref)]  # 20 items lost: 60%
    r = paired_test(items(ref), items(worse), alpha=0.05)
    assert r["n"] == n and r["diff"] == pytest.approx(-0.1)
    assert r["test"] == "McNemar exact" and r["p"] < 1e-5
    assert r["significant"] and r["better"] is False
    # the exact McNemar p by hand: 20 discordant pairs, all one way
    assert r["p"] == pytest.approx(2 * 0.5**20)

    same = paired_test(items(ref), items(ref), alpha=0.05)
    assert same["diff"] == 0 and same["p"] == 1 and not same["significant"] and same["better"] is None
    # the same accuracy from different items (10 right->wrong, 10 wrong->right): no difference
    swapped = list(ref)
    flips = [i for i in range(n) if ref[i]][:10] + [i for i in range(n) if not ref[i]][:10]
    for i in flips:
        swapped[i] = 1 - swapped[i]
    s = paired_test(items(ref), items(swapped), alpha=0.05)
    assert s["diff"] == 0 and s["p"] == 1 and not s["significant"]
    # only shared items are paired
    assert paired_test(items(ref), items(worse)[:50], alpha=0.05)["n"] == 50


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args,message", [
    (["--variants", "hf,nosuch"], "unknown engine 'nosuch'"),
    (["--variants", "hf,hf:int8", "--reference", "llamacpp"], "--reference llamacpp is not one of"),
    (["--variants", "hf,hf"], "listed twice"),
    ([], "no variants to study"),
    (["--variants", "hf:q9_9"], "variant 'hf:q9_9'"),
    (["--variants", "hf", "--n-ctx", "512"], "--n-ctx is an option of none of the variants"),
    (["--variants", "hf", "--resume", "x"], "give no other options"),
])  # fmt: skip
def test_bad_input_is_one_line_and_leaves_no_folder(tmp_path, args, message):
    res = hb("study", "--model", "tiny-llama", *args, "--results-dir", str(tmp_path), timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.startswith("error: ") and message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_yaml_study_file_is_the_same_config(tmp_path):
    (tmp_path / "study.yaml").write_text("engine: {model: tiny-llama}\n"
                                         "study: {variants: [hf, 'hf:int8'], reference: vllm}\n")
    res = hb("study", "--config", str(tmp_path / "study.yaml"), "--results-dir", str(tmp_path / "r"), timeout=120)
    assert res.returncode == 2 and res.stderr.strip() == \
        "error: --reference vllm is not one of --variants (hf, hf:int8)"
    assert not (tmp_path / "r").exists()


def test_a_failed_cell_is_recorded_and_the_study_goes_on(tmp_path):
    res = hb("study", "--model", "tiny-llama", "--variants", "hf:model=/nonexistent,synthetic",
             "--reference", "synthetic", "--ttft-ms", "1", "--itl-ms", "1", "--concurrency", "1",
             "--input-len", "8", "--output-len", "4", "--num-requests", "2", "--no-plots",
             "--results-dir", str(tmp_path), "--run-name", "s")
    study = tmp_path / "s"
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        "error: study incomplete: 1 cell(s) did not complete: bench-hf-model--nonexistent (failed); "
        f"after a fix: hyperbench study --resume {study}")
    assert "bench-hf-model--nonexistent: failed: model path /nonexistent does not exist" in res.stderr
    s = summary(study)
    assert s["status"] == "incomplete" and summary(study / "cells" / "bench-synthetic")["status"] == "complete"
    assert s["verdict"]["winner"] == "synthetic"  # the cells that ran still give their verdict
    assert ("| `cells/bench-hf-model--nonexistent` | bench | hf:model=/nonexistent | failed | "
            "model path /nonexistent does not exist |") in (study / "report.md").read_text()


# ---------------------------------------------------------------------------- kill and resume


@pytest.fixture(scope="module")
def mmlu_data():
    from harness.score import staging

    return staging.ensure_staged(("gsm8k", "mmlu"))


def test_killed_mid_cell_then_resume_reruns_no_finished_cell(tmp_path, mmlu_data):
    """Two synthetic variants (~8 s a bench cell): SIGKILL the study while the second cell runs;
    its engine goes down with it; --resume reruns that cell only. The synthetic engine has no
    prompt logprobs: its mmlu cells and the agree cell are skipped, with the reason in the report."""
    study = tmp_path / "s"
    args = ["study", "--model", "tiny-llama", "--variants", "synthetic,synthetic:ttft_ms=5",
            "--tasks", "mmlu_anatomy", "--data-dir", str(mmlu_data),
            "--ttft-ms", "1", "--itl-ms", "25", "--concurrency", "1", "--input-len", "8", "--output-len", "32",
            "--num-requests", "8", "--no-plots", "--results-dir", str(tmp_path), "--run-name", "s"]
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first, second = study / "cells" / "bench-synthetic", study / "cells" / "bench-synthetic-ttft_ms-5"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # the second cell is benching: its first records are in
            if (second / "records.jsonl").is_file() and (second / "records.jsonl").read_text():
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        else:
            pytest.fail("the second cell never started")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    done = summary(first)
    assert done["status"] == "complete"
    before = (first / "summary.json").stat().st_mtime_ns, (first / "records.jsonl").read_bytes()
    # the killed cell's process got SIGTERM from the kernel (parent death): it marks its folder and
    # stops its engine, whose port then refuses connections
    port = int(re.search(r"--port (\d+)", (second / "engine.log").read_text()).group(1))
    deadline = time.monotonic() + 60
    while summary(second)["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert summary(second)["status"] == "incomplete", (study / "logs" / f"{second.name}.log").read_text()[-3000:]
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                break
        time.sleep(0.2)
    else:
        pytest.fail(f"the killed cell's engine still listens on port {port}")

    res = hb("study", "--resume", str(study))
    assert res.returncode == 0, res.stderr[-3000:]
    s = summary(study)
    assert s["status"] == "complete" and s["cells_run"] == ["bench-synthetic-ttft_ms-5"]
    assert ((first / "summary.json").stat().st_mtime_ns, (first / "records.jsonl").read_bytes()) == before
    assert summary(second)["status"] == "complete" and len(summary(second)["points"]) == 1
    # the rerun cell starts from nothing: one bench's records, not the killed one's plus its own
    assert len((second / "records.jsonl").read_text().splitlines()) == 8
    assert "bench-synthetic-ttft_ms-5: complete" in res.stderr
    assert f"report: {study / 'report.md'}" in res.stdout
    plan = json.loads((study / "plan.json").read_text())["cells"]
    skipped = {c["name"]: c["reason"] for c in plan if c["status"] == "skipped"}
    assert set(skipped) == {"score-synthetic-mmlu_anatomy", "score-synthetic-ttft_ms-5-mmlu_anatomy",
                            "agree-synthetic-ttft_ms-5"}
    why = skipped["score-synthetic-mmlu_anatomy"]
    assert why == ("mmlu_anatomy is scored by loglikelihood, which needs prompt logprobs (echo + logprobs); "
                   "engine synthetic has none")
    report = (study / "report.md").read_text()
    assert f"| `cells/score-synthetic-mmlu_anatomy` | score | synthetic | skipped | {why} |" in report
    assert not (study / "cells" / "score-synthetic-mmlu_anatomy").exists()
    # no variant has an accuracy: no verdict is claimed
    assert s["verdict"]["winner"] is None and "no variant has both" in s["verdict"]["answer"]


# ---------------------------------------------------------------------------- a real study


@pytest.mark.llamacpp
@pytest.mark.parametrize("model", ["tiny-llama", pytest.param("smollm2-135m", marks=pytest.mark.slow)])
def test_a_real_study_writes_every_cell_and_a_verdict_its_folders_recompute(tmp_path, mmlu_data, model):
    study = tmp_path / "s"
    res = hb("study", "--model", model, "--variants", "hf,hf:int8,llamacpp:q8_0",
             "--tasks", "mmlu_anatomy", "--limit", "12", "--num-fewshot", "0", "--data-dir", str(mmlu_data),
             "--dtype", "float32", "--device", "cpu", "--concurrency", "1,2", "--input-len", "16",
             "--output-len", "8", "--num-requests", "4", "--agree-prompts", "4",
             "--results-dir", str(tmp_path), "--run-name", "s")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"report: {study / 'report.md'}" in res.stdout
    s = summary(study)
    assert s["kind"] == "study" and s["status"] == "complete", s.get("reason")
    plan = json.loads((study / "plan.json").read_text())["cells"]
    names = {c["name"]: c for c in plan}
    # every runnable cell is an ordinary, complete run folder of its job
    assert all(c["status"] == "planned" for c in plan) and len(plan) == 8
    for name in ("bench-hf", "bench-hf-int8", "bench-llamacpp-q8_0", "score-hf",
                 "score-hf-int8", "score-llamacpp-q8_0", "agree-hf-int8", "agree-llamacpp-q8_0"):
        cell = summary(study / "cells" / name)
        assert cell["status"] == "complete" and cell["kind"] == names[name]["job"], name
    report = (study / "report.md").read_text()
    for plot in ("accuracy_vs_speed.png", "compression.png", "compare_latency.png", "compare_throughput.png"):
        assert (study / "plots" / plot).is_file()

    # ---- the verdict, recomputed from the cells' own run folders
    v = s["verdict"]
    assert v["reference"] == "hf" and v["load"] == "concurrency=2"
    by = {x["variant"]: x for x in v["variants"]}

    def tok_s(variant):
        name = "bench-" + variant.replace(":", "-")
        point = next(p for p in summary(study / "cells" / name)["points"] if p["concurrency"] == 2)
        return point["output_throughput"]

    def per_item(variant):
        rows = (study / "cells" / f"score-{variant.replace(':', '-')}" / "samples" / "mmlu_anatomy.jsonl")
        return {r["doc_id"]: r["acc"] for r in map(json.loads, rows.read_text().splitlines())}

    ref = per_item("hf")
    assert len(ref) == 12
    eligible = []
    for variant in ("hf", "hf:int8", "llamacpp:q8_0"):
        acc = by[variant]["accuracy"]["mmlu_anatomy"]
        mine = per_item(variant)
        assert acc["metric"] == "acc" and acc["n"] == 12
        assert acc["value"] == pytest.approx(sum(mine.values()) / 12)
        assert by[variant]["speed"]["concurrency=2"]["output_tok_s"] == pytest.approx(tok_s(variant))
        if variant == "hf":
            eligible.append(variant)
            continue
        test = acc["vs_reference"]
        assert test["diff"] == pytest.approx((sum(mine.values()) - sum(ref.values())) / 12)
        n01 = sum(1 for d in ref if ref[d] == 0 and mine[d] == 1)
        n10 = sum(1 for d in ref if ref[d] == 1 and mine[d] == 0)
        k, n = min(n01, n10), n01 + n10
        p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
        assert test["p"] == pytest.approx(p)
        if not (p < 0.05 and n10 > n01):
            eligible.append(variant)
    winner = max(eligible, key=tok_s)
    assert v["winner"] == winner and winner in v["answer"]
    assert f"verdict: {v['answer']}" in res.stdout
    # agree cells: greedy agreement and KL of each variant against the reference
    agree = summary(study / "cells" / "agree-llamacpp-q8_0")["agreement"]["llamacpp:q8_0"]
    assert by["llamacpp:q8_0"]["agree"]["kl_mean"] == agree["next_token"]["kl_mean"]

    # cells are run folders that compare reads as they are, and `report` writes the study's again
    res = hb("compare", str(study / "cells" / "bench-hf"), str(study / "cells" / "score-hf"),
             "--results-dir", str(tmp_path), "--run-name", "cmp")
    assert res.returncode == 0, res.stderr[-2000:]
    (study / "report.md").unlink()
    res = hb("report", str(study), "--no-plots")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (study / "report.md").read_text().split("## Plots")[0].strip() == report.split("## Plots")[0].strip()
