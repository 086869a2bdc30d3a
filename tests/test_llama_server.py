"""The `llama-server` engine: llama.cpp's own server (scripts/build_llama_server.sh) on the same
GGUF as the llamacpp engine. Without the binary: one line naming how to build it. With it: the
same greedy text as our engine on the same f32 weights, a bench sweep through the harness's own
client, and `score` refusing loglikelihood tasks in one line (its echo logprobs are wrong)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from backends.llama_server.spec import LlamaServerConfig, binary, offloads
from harness.errors import HyperbenchError

pytestmark = pytest.mark.llamacpp
REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["The capital of France is", "Hello! How are you today?", "A B C", "Once upon a time"]


def hb(*args, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {}),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env=env)  # fmt: skip


def test_missing_binary_is_one_line_naming_the_build(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERBENCH_LLAMA_SERVER", str(tmp_path / "nowhere" / "llama-server"))
    with pytest.raises(HyperbenchError, match="scripts/build_llama_server.sh"):
        LlamaServerConfig().check()
    res = hb("bench", "--engine", "llama-server", "--model", "tiny-llama", "--num-requests", "1",
             "--results-dir", str(tmp_path), env={"HYPERBENCH_LLAMA_SERVER": str(tmp_path / "nowhere")})  # fmt: skip
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "no llama-server binary" in lines[0] and "bash scripts/build_llama_server.sh" in lines[0]


def test_command_maps_the_llamacpp_settings(tiny_model):
    cfg = LlamaServerConfig(model=str(tiny_model), quant="f32", parallel=4, n_ctx=4096, n_batch=256,
                            n_threads=2, flash_attn=True, kv_cache_type="q8_0", served_model_name="tiny")  # fmt: skip
    cmd = cfg.server_command("127.0.0.1", 9, str(tiny_model))
    pairs = {flag: cmd[i + 1] for i, flag in enumerate(cmd[:-1]) if flag.startswith("-")}
    assert pairs["-np"] == "4" and pairs["-c"] == "4096" and pairs["-b"] == "256" and pairs["-t"] == "2"
    assert pairs["-fa"] == "on" and pairs["-ctk"] == pairs["-ctv"] == "q8_0" and pairs["--alias"] == "tiny"
    assert "--kv-unified" in cmd and cmd[cmd.index("-m") + 1].endswith("f32.gguf")
    # unset: as the llamacpp engine decides it, from what the binary offloads to (nothing here)
    assert "--cache-idle-slots" in cmd
    off = LlamaServerConfig(model=str(tiny_model), quant="f32", cache_idle_slots=False)
    assert "--no-cache-idle-slots" in off.server_command("127.0.0.1", 9, str(tiny_model))
    assert cfg.capabilities().prompt_logprobs is False
    with pytest.raises(HyperbenchError, match="n_ctx=64 is too small for parallel=8"):
        LlamaServerConfig(parallel=8, n_ctx=64).check_parallel(None)


needs_binary = pytest.mark.skipif(not LlamaServerConfig.installed()[0], reason=LlamaServerConfig.installed()[1])


@needs_binary
def test_a_cpu_build_offloads_nothing():
    """`--list-devices` of the CPU build lists "(none)", so idle slots go to host RAM by default;
    a binary that cannot run says nothing of a GPU either (check() reports it in one line)."""
    assert offloads(binary(), -1) is False
    assert offloads(Path("/nonexistent/llama-server"), -1) is False


@pytest.fixture(scope="module")
def servers(tiny_model, tmp_path_factory):
    from harness.launchers.process import ProcessLauncher

    from backends.llamacpp.spec import LlamaCppConfig

    opts = dict(model=str(tiny_model), served_model_name="tiny", quant="f32", kv_cache_type="f32",
                parallel=4, n_ctx=4 * 512)  # fmt: skip
    log = tmp_path_factory.mktemp("llama-server")
    with ProcessLauncher(LlamaServerConfig(**opts), str(tiny_model), log_path=log / "server.log") as theirs, \
            ProcessLauncher(LlamaCppConfig(**opts), str(tiny_model), log_path=log / "ours.log") as ours:  # fmt: skip
        yield theirs, ours


def greedy_text(url: str, prompt: str) -> tuple[str, int]:
    r = httpx.post(f"{url}/completions", timeout=120, json={
        "model": "tiny", "prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    return body["choices"][0]["text"], body["usage"]["completion_tokens"]


@needs_binary
def test_same_greedy_text_as_our_engine_concurrently(servers):
    theirs, ours = servers
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        got = list(pool.map(lambda p: greedy_text(theirs.base_url, p), PROMPTS))
    expected = [greedy_text(ours.base_url, p) for p in PROMPTS]
    assert got == expected and all(n == 24 for _, n in got)


@needs_binary
def test_bench_through_the_harness_client(tiny_model, tmp_path):
    res = hb("bench", "--engine", "llama-server", "--model", "tiny-llama", "--quant", "f32", "--parallel", "2",
             "--concurrency", "1,2", "--input-len", "8", "--output-len", "6", "--num-requests", "4",
             "--results-dir", str(tmp_path), "--run-name", "ls", "--no-plots")  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((tmp_path / "ls" / "summary.json").read_text())
    assert [p["concurrency"] for p in summary["points"]] == [1, 2]
    records = [json.loads(x) for x in (tmp_path / "ls" / "records.jsonl").read_text().splitlines()]
    assert records and all(r.get("error") is None and r["output_tokens"] == 6 for r in records)


@needs_binary
def test_score_refuses_loglikelihood_in_one_line(tmp_path):
    res = hb("score", "--engine", "llama-server", "--model", "tiny-llama", "--tasks", "mmlu_anatomy,gsm8k",
             "--limit", "2", "--results-dir", str(tmp_path), "--run-name", "s")  # fmt: skip
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("note: ")]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "llama-server engine cannot score loglikelihood tasks (mmlu_anatomy)" in lines[0]
    assert "generative tasks" in lines[0] and not (tmp_path / "s").exists()
