"""`hyperbench compare`: finished run folders side by side, and engines benched in turn.

Real runs on the tiny model (seconds each). The docker launcher's `compare` (engine containers
started and removed by the harness container) is in tests/test_containers.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def hb(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def bench(tmp_path, tiny_model, name, *extra):
    res = hb("bench", "--engine", "hf", "--model", str(tiny_model), "--dtype", "float32", "--device", "cpu",
             "--concurrency", "1,2", "--input-len", "16", "--output-len", "4", "--num-requests", "4",
             "--results-dir", str(tmp_path), "--run-name", name, "--no-plots", *extra)
    assert res.returncode == 0, res.stderr[-2000:]
    return tmp_path / name


def test_compare_finished_runs(tmp_path, tiny_model):
    a = bench(tmp_path, tiny_model, "a")
    b = bench(tmp_path, tiny_model, "b", "--max-batch-size", "1", "--output-len", "6")
    res = hb("compare", str(a), str(b), "--results-dir", str(tmp_path), "--run-name", "cmp")
    assert res.returncode == 0, res.stderr[-2000:]
    folder = tmp_path / "cmp"
    assert f"{folder}" in res.stdout
    data = json.loads((folder / "compare.json").read_text())
    assert data["kind"] == "compare" and data["schema_version"] == 1
    # same engine, model and quant twice: told apart by their folder names
    assert [r["label"] for r in data["runs"]] == ["hf (a)", "hf (b)"]
    for run, src in zip(data["runs"], (a, b)):
        want = json.loads((src / "summary.json").read_text())["points"]
        assert run["status"] == "complete" and run["points"] == want
    report = (folder / "report.md").read_text()
    for point in ("## concurrency=1", "## concurrency=2"):
        section = report.split(point)[1].split("##")[0]
        assert "| hf (a) | 4/4 |" in section and "| hf (b) | 4/4 |" in section
    assert (folder / "plots" / "compare_throughput.png").is_file()
    assert (folder / "plots" / "compare_latency.png").is_file()
    # runs of different workloads are still compared, and the report says they are not comparable
    assert data["workload_mismatch"] == {"output_len": ["4", "6"]}
    assert "workloads differ" in report


@pytest.mark.parametrize("args,message", [
    ([], "nothing to compare: give run folders"),
    (["--engines", "hf,hf"], "listed twice"),
    (["--engines", "hf", "--launcher", "external"], "starts each engine itself"),
    (["--engines", "nosuch"], "nosuch"),
])  # fmt: skip
def test_compare_bad_input_is_one_line(tmp_path, args, message):
    res = hb("compare", *args, "--results-dir", str(tmp_path))
    assert res.returncode == 2
    assert res.stderr.startswith("error: ") and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_compare_a_folder_that_is_no_run(tmp_path):
    res = hb("compare", str(tmp_path), str(tmp_path / "missing"), "--results-dir", str(tmp_path))
    assert res.returncode == 2 and res.stderr.startswith("error: ")


def synthetic_bench(tmp_path, name):
    """A real bench run folder in seconds: the synthetic engine (tiny-llama's tokenizer)."""
    res = hb("bench", "--engine", "synthetic", "--model", "tiny-llama", "--ttft-ms", "1", "--itl-ms", "1",
             "--concurrency", "1", "--input-len", "8", "--output-len", "4", "--num-requests", "2",
             "--results-dir", str(tmp_path), "--run-name", name, "--no-plots")
    assert res.returncode == 0, res.stderr[-2000:]
    return tmp_path / name


@pytest.mark.parametrize("summary, message", [
    ('{"schema_version": 1, "kind": "tune", "status": "complete"}', "not 'tune' runs"),
    ('{"schema_version": 1, "kind": "bench", "sta', "not valid JSON"),
], ids=["tune-run", "torn-summary"])  # fmt: skip
def test_compare_refused_input_leaves_no_run_folder(tmp_path, summary, message):
    """Inputs are read before the comparison folder is made: a refused one leaves no empty X."""
    good = synthetic_bench(tmp_path, "a")
    other = tmp_path / "other"
    other.mkdir()
    (other / "summary.json").write_text(summary)
    out = tmp_path / "out"
    res = hb("compare", str(good), str(other), "--results-dir", str(out), "--run-name", "X")
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: ") and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (out / "X").exists() and not out.exists()


@pytest.mark.llamacpp
def test_compare_engines_in_turn_with_process_launcher(tmp_path, tiny_model):
    """hf and llama.cpp (f32 GGUF of the same weights) benched one after the other on one
    workload: one comparison folder, a run folder per engine, one report with both."""
    pytest.importorskip("llama_cpp")
    res = hb("compare", "--engines", "hf,llamacpp:f32", "--model", str(tiny_model), "--concurrency", "1,2",
             "--input-len", "16", "--output-len", "4", "--num-requests", "4", "--results-dir", str(tmp_path),
             "--run-name", "turn", "--no-plots")
    assert res.returncode == 0, res.stderr[-3000:]
    folder = tmp_path / "turn"
    data = json.loads((folder / "compare.json").read_text())
    assert [r["label"] for r in data["runs"]] == ["hf", "llamacpp:f32"]
    assert data["workload_mismatch"] == {}  # one workload for all, by construction
    assert all(r["status"] == "complete" and [p["completed"] for p in r["points"]] == [4, 4] for r in data["runs"])
    assert {p.name for p in (folder / "runs").iterdir()} == {"hf", "llamacpp-f32"}
    assert json.loads((folder / "config.json").read_text())["engines"] == ["hf", "llamacpp:f32"]
    report = (folder / "report.md").read_text()
    assert "| hf | 4/4 |" in report and "| llamacpp:f32 | 4/4 |" in report


def test_compare_says_which_run_is_a_bench_and_which_a_score(tmp_path, tiny_model):
    """A bench run and a score run (perplexity on a local text file: no data set) of the same
    engine and model share the label "hf": the terminal table and the report say each one's kind."""
    speed = bench(tmp_path, tiny_model, "speed")
    text = tmp_path / "text.txt"
    text.write_text(" ".join(["the cat sat on the mat while the dog ran in the park"] * 12) + "\n")
    res = hb("score", "--engine", "hf", "--model", str(tiny_model), "--dtype", "float32", "--device", "cpu",
             "--perplexity", str(text), "--results-dir", str(tmp_path), "--run-name", "quality")
    assert res.returncode == 0, res.stderr[-2000:]
    quality = tmp_path / "quality"
    assert json.loads((quality / "summary.json").read_text())["kind"] == "score"

    res = hb("compare", str(speed), str(quality), "--results-dir", str(tmp_path), "--run-name", "cmp", "--no-plots")
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [(r["label"], r["kind"]) for r in data["runs"]] == [("hf", "bench"), ("hf", "score")]
    # the terminal table: a kind column beside the shared label
    rows = [[c.strip() for c in ln.split("│")[1:-1]] for ln in res.stdout.splitlines() if ln.startswith("│")]
    head = next([c.strip() for c in ln.split("┃")[1:-1]] for ln in res.stdout.splitlines() if "┃ run" in ln)
    assert head[:4] == ["run", "kind", "status", "point"], head
    assert ["hf", "bench", "complete", "concurrency=1"] in [r[:4] for r in rows], res.stdout
    assert ["hf", "bench", "complete", "concurrency=2"] in [r[:4] for r in rows], res.stdout
    assert ["hf", "score", "complete", "-"] in [r[:4] for r in rows], res.stdout
    assert "accuracy (score runs)" in res.stdout and "perplexity/word_perplexity" in res.stdout
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| hf | bench | hf | - |" in report and "| hf | score | hf | - |" in report


def test_compare_shows_gpu_memory_energy_and_roofline(tmp_path):
    """The H100 run folders of benchmarks/gpu/results (hf, vLLM, llama.cpp Q8_0 on the 7B shape):
    compare's report has the GPU table, with vLLM's own weights + KV cache beside its ~74 GiB
    peak (it preallocates), J/token and % of roofline from each run's summary."""
    from pathlib import Path

    h100 = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "results" / "h100-2026-12-06"
    runs = [str(h100 / f"compare-{n}") for n in ("hf", "vllm", "llamacpp-q8_0")]
    res = hb("compare", *runs, "--results-dir", str(tmp_path), "--run-name", "gpu", "--no-plots")
    assert res.returncode == 0, res.stderr[-2000:]
    report = (tmp_path / "gpu" / "report.md").read_text()
    table = report.split("## GPU memory, energy and roofline")[1]
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in table.splitlines()
            if line.startswith("| ") and "concurrency=" in line}
    vllm = [c.strip() for c in rows[("vllm", "concurrency=1")].strip("|").split("|")]
    assert vllm[2:5] == ["73.7", "12.6", "59.3"]  # peak above idle, the engine's weights, its KV cache
    assert float(vllm[6]) == pytest.approx(74.7, abs=0.1)  # % of roofline at one stream
    assert ("hf", "concurrency=32") in rows and ("llamacpp:q8_0", "concurrency=8") in rows
