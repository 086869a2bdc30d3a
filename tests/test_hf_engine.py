"""The transformers engine's serving options, on real servers of the tiny model: the attention
implementation (--attn) and the bearer key (--api-key), as a user runs them (`hyperbench serve`,
`python -m backends.hf`, `hyperbench bench`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import start_server
from tests.test_cli_errors import hb
from tests.test_tune_errors import assert_one_line_error

PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy dog", "Once upon a time",
           "1 2 3 4", "a", "What is the capital of France? The capital is"]  # fmt: skip


def greedy(base_url, prompt, max_tokens=24, **extra) -> dict:
    r = httpx.post(f"{base_url}/completions", timeout=120, json={
        "model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": True, **extra})  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()


# --- attention implementation -----------------------------------------------------------------


def outputs(base_url) -> dict:
    """Greedy text and logprobs alone, as one batched request, and concurrently (padded rows)."""
    alone = [greedy(base_url, p, logprobs=1)["choices"][0] for p in PROMPTS]
    batch = sorted(greedy(base_url, PROMPTS)["choices"], key=lambda c: c["index"])
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: greedy(base_url, p)["choices"][0]["text"], PROMPTS))
    return {"text": [c["text"] for c in alone], "logprobs": [c["logprobs"]["token_logprobs"] for c in alone],
            "batch": [c["text"] for c in batch], "concurrent": together}


def test_eager_attention_gives_the_sdpa_tokens(tiny_model, tmp_path_factory):
    """--attn eager serves, and greedy decoding (float32) gives sdpa's tokens, alone, batched and
    concurrent (where padding masks differ between the two implementations)."""
    got = {}
    for attn in ("sdpa", "eager"):
        with start_server("hf", tiny_model, tmp_path_factory.mktemp(attn), attn=attn) as server:
            info = httpx.get(f"{server.base_url}/engine", timeout=30).json()
            assert info["attention"] == attn and info["dtype"] == "float32"
            got[attn] = outputs(server.base_url)
    sdpa, eager = got["sdpa"], got["eager"]
    assert eager["text"] == sdpa["text"]
    assert eager["batch"] == eager["concurrent"] == eager["text"]
    assert sdpa["batch"] == sdpa["concurrent"] == sdpa["text"]
    assert len({t for t in sdpa["text"]}) > 1  # the prompts lead to different texts
    for a, b in zip(eager["logprobs"], sdpa["logprobs"]):
        assert a == pytest.approx(b, abs=1e-4)


def test_flash_attention_2_without_a_gpu_is_a_one_line_error(tiny_model, tmp_path):
    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA GPU is visible: flash_attention_2 may be valid here")
    except ImportError:
        pass
    hint = "flash_attention_2 needs a CUDA GPU and the flash-attn package; use --attn sdpa"
    # the engine itself
    res = subprocess.run([sys.executable, "-m", "backends.hf", "--model", str(tiny_model), "--attn",
                          "flash_attention_2"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert_one_line_error(res, hint)
    # bench: the engine's line, passed on; the run folder says why it failed
    res = hb("bench", "--engine", "hf", "--model", str(tiny_model), "--attn", "flash_attention_2",
             "--results-dir", str(tmp_path), "--run-name", "fa2")  # fmt: skip
    assert_one_line_error(res, "engine exited (code 2)", hint)
    summary = json.loads((tmp_path / "fa2" / "summary.json").read_text())
    assert summary["status"] == "failed" and hint in summary["reason"]
    # serve: its 'serving ...' notice, then the engine's one error line
    res = hb("serve", "hf", "--model", str(tiny_model), "--attn", "flash_attention_2", "--port", "0")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error")]
    assert errors == [f"error: {hint}"], res.stderr


# --- API key ----------------------------------------------------------------------------------

KEY = "hb-test-key-7f3a"


@pytest.fixture(scope="module")
def keyed_server(tiny_model, tmp_path_factory):
    """`hyperbench serve hf --api-key KEY`, as a user starts it."""
    from harness.launchers.base import wait_healthy
    from harness.launchers.process import free_port

    port = free_port()
    log = tmp_path_factory.mktemp("keyed") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "serve", "hf", "--model", str(tiny_model),
                                 "--dtype", "float32", "--port", str(port), "--served-model-name", "tiny",
                                 "--api-key", KEY], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    root = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(root, 300, lambda: proc.poll() is None, log.read_text)
        yield root, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


AUTHS = {"none": {}, "wrong": {"Authorization": "Bearer not-the-key"},
         "not bearer": {"Authorization": KEY}, "prefix": {"Authorization": f"Bearer {KEY[:-1]}"},
         "right": {"Authorization": f"Bearer {KEY}"}}  # fmt: skip


@pytest.mark.parametrize("auth", sorted(AUTHS))
def test_api_key_is_required_on_every_v1_route(keyed_server, auth):
    root, _ = keyed_server
    h = AUTHS[auth]
    calls = [
        httpx.get(f"{root}/v1/models", headers=h, timeout=60),
        httpx.get(f"{root}/v1/engine", headers=h, timeout=60),
        httpx.post(f"{root}/v1/completions", headers=h, timeout=60,
                   json={"model": "tiny", "prompt": "Hello", "max_tokens": 4}),
        httpx.post(f"{root}/v1/chat/completions", headers=h, timeout=60,
                   json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
    ]  # fmt: skip
    if auth == "right":
        assert [r.status_code for r in calls] == [200] * 4, [r.text for r in calls]
        assert calls[2].json()["usage"]["completion_tokens"] >= 1
    else:
        assert [r.status_code for r in calls] == [401] * 4
        for r in calls:  # an OpenAI-style error body, which clients show
            assert r.json()["error"]["type"] == "authentication_error"
    # a streamed request too
    with httpx.stream("POST", f"{root}/v1/completions", headers=h, timeout=60, json={
            "model": "tiny", "prompt": "Hello", "max_tokens": 3, "stream": True}) as r:  # fmt: skip
        assert r.status_code == (200 if auth == "right" else 401)
        body = r.read().decode()
    assert ("[DONE]" in body) == (auth == "right")


def test_health_stays_open_and_the_log_keeps_no_key(keyed_server):
    root, log = keyed_server
    assert httpx.get(f"{root}/health", timeout=10).status_code == 200  # probes carry no key
    assert KEY not in log.read_text()


def test_bench_passes_the_key(tiny_model, tmp_path):
    """bench --engine hf --api-key: the engine requires the key and every request carries it."""
    res = hb("bench", "--engine", "hf", "--model", str(tiny_model), "--dtype", "float32", "--api-key", KEY,
             "--concurrency", "2", "--input-len", "8", "--output-len", "4", "--num-requests", "4", "--no-plots",
             "--results-dir", str(tmp_path), "--run-name", "keyed")  # fmt: skip
    assert res.returncode == 0, res.stderr
    run = tmp_path / "keyed"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["points"][0]["completed"] == 4
    assert summary["engine_info"]["engine"] == "hf"  # GET /v1/engine with the key
    assert all(json.loads(x)["error"] is None for x in (run / "records.jsonl").read_text().splitlines())
    for f in run.rglob("*"):  # the key is in no file of the run folder
        assert not f.is_file() or KEY.encode() not in f.read_bytes(), f.name
