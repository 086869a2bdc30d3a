"""The llama.cpp engine on its own: GGUF conversion/quantization of the tiny model, the same fp32
weights in transformers and llama.cpp, and its one-line failures. (The wire contract it shares
with every engine is tests/contract/.)

Tolerance: with f32 weights *and* an f32 KV cache, llama.cpp's prompt logprobs match a
transformers fp32 forward pass to 1e-5 (measured: 1.5e-7 over 313 tokens); llama.cpp's default
f16 KV cache alone moves them by up to ~6e-5, so that case is held to 2e-4.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.llamacpp
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: scripts/build_llamacpp_wheel.sh")

from backends.llamacpp.gguf import ensure_gguf, gguf_file_type  # noqa: E402
from backends.llamacpp.spec import LlamaCppConfig  # noqa: E402
from harness.errors import HyperbenchError  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "Hello! How are you today?",
    "In 1999, the big dog reads 42 red books.",
    "What makes the city of the river?",
    "The quick brown fox jumps over the lazy dog",
]


# --- conversion -------------------------------------------------------------------------------


@pytest.mark.parametrize("quant", ["f32", "q8_0", "q4_0"])
def test_tiny_model_converts_to_gguf(tiny_model, quant):
    path = ensure_gguf(tiny_model, quant)
    assert path.read_bytes()[:4] == b"GGUF"
    assert path.name == f"{quant}.gguf"
    assert gguf_file_type(path) == quant
    assert ensure_gguf(tiny_model, quant) == path  # cached: the second call builds nothing


def test_quantized_files_are_smaller(tiny_model):
    sizes = [ensure_gguf(tiny_model, q).stat().st_size for q in ("f32", "q8_0", "q4_0")]
    assert sizes == sorted(sizes, reverse=True)


def test_native_is_the_checkpoint_precision(tiny_model):
    assert ensure_gguf(tiny_model, "native") == ensure_gguf(tiny_model, "f32")  # fp32 checkpoint


def test_a_gguf_given_directly_is_served_as_is(tiny_model):
    q8 = ensure_gguf(tiny_model, "q8_0")
    assert ensure_gguf(q8, "native") == q8
    assert ensure_gguf(q8, "q8_0") == q8  # asking for what it already is changes nothing


def test_requantizing_a_quantized_gguf_is_refused(tiny_model):
    with pytest.raises(HyperbenchError, match=r"already quantized \(q4_0\)"):
        ensure_gguf(ensure_gguf(tiny_model, "q4_0"), "q8_0")


def test_not_a_gguf_is_a_one_line_error(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF")
    with pytest.raises(HyperbenchError) as err:
        ensure_gguf(bad, "native")
    assert str(err.value) == f"{bad} is not a GGUF file (bad magic)"


def test_unsupported_quant_type_errors(tiny_model):
    with pytest.raises(HyperbenchError, match="unsupported quant type 'q3_k_s'"):
        ensure_gguf(tiny_model, "q3_k_s")
    with pytest.raises(ValueError, match="quant"):  # the config refuses it before anything runs
        LlamaCppConfig(quant="q3_k_s")


def test_spec_declares_what_it_honours():
    cfg = LlamaCppConfig()
    caps = cfg.capabilities()
    assert {"min_tokens", "ignore_eos", "min_p", "repetition_penalty"} <= set(caps.sampling_params)
    assert cfg.quant == "native" and "q4_k_m" in caps.quantizations
    with pytest.raises(HyperbenchError, match="one sequence at a time"):
        LlamaCppConfig(parallel=4, speculative="ngram").check()
    with pytest.raises(HyperbenchError, match="flash_attn"):
        LlamaCppConfig(kv_cache_type="q8_0").check()
    cmd = LlamaCppConfig(quant="q8_0", n_threads=2, api_key="k").server_command("127.0.0.1", 9, "/m")
    assert cmd[1:3] == ["-m", "backends.llamacpp"]
    assert ["--quant", "q8_0"] == cmd[cmd.index("--quant") : cmd.index("--quant") + 2]
    assert "--api-key" in cmd and "--n-threads" in cmd


# --- the server against transformers on the same fp32 weights -----------------------------------


def serve(model: Path, tmp_path_factory, **options):
    from harness.launchers.process import ProcessLauncher

    cfg = LlamaCppConfig(model=str(model), served_model_name="tiny", **options)
    log = tmp_path_factory.mktemp("llamacpp") / "engine.log"
    return ProcessLauncher(cfg, str(model), log_path=log, startup_timeout_s=600)


@pytest.fixture(scope="module")
def f32_server(tiny_model, tmp_path_factory):
    with serve(tiny_model, tmp_path_factory, quant="f32", kv_cache_type="f32") as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def hf_model(tiny_model):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(tiny_model)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    return tok, model.eval()


def hf_prompt_logprobs(hf_model, ids: list[int]) -> list[float]:
    import torch

    _, model = hf_model
    with torch.no_grad():
        lp = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
    return [lp[i - 1, ids[i]].item() for i in range(1, len(ids))]


def test_same_fp32_weights_same_greedy_text(f32_server, hf_model):
    import torch

    tok, model = hf_model
    for prompt in PROMPTS:
        ids = tok(prompt).input_ids
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=24, min_new_tokens=24,
                                 do_sample=False)[0].tolist()  # fmt: skip
        body = httpx.post(f"{f32_server.base_url}/completions", timeout=60, json={
            "model": "tiny", "prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True,
            "logprobs": 0, "return_tokens_as_token_ids": True}).json()  # fmt: skip
        choice = body["choices"][0]
        got = [int(t.removeprefix("token_id:")) for t in choice["logprobs"]["tokens"]]
        assert got == out[len(ids) :], prompt  # the same tokens, one by one
        hf_text = tok.decode(out, skip_special_tokens=True)[len(tok.decode(ids, skip_special_tokens=True)) :]
        # a random model emits stray byte tokens: transformers turns a whole run of them into
        # U+FFFD where the UTF-8 decoder (and llama.cpp's text) keeps the valid ASCII among
        # them. So the text must be the tokens' bytes decoded as UTF-8, and transformers' own
        # text wherever no replacement character is involved
        assert choice["text"] == spm_bytes(tok, out[len(ids) :]).decode("utf-8", "replace")
        if "\ufffd" not in hf_text:
            assert choice["text"] == hf_text, prompt


def spm_bytes(tok, ids: list[int]) -> bytes:
    """The bytes SentencePiece pieces stand for: '▁' is a space, <0xNN> is one byte."""
    out = b""
    for piece in tok.convert_ids_to_tokens(ids):
        if re.fullmatch(r"<0x[0-9A-F]{2}>", piece):
            out += bytes([int(piece[3:5], 16)])
        else:
            out += piece.replace("▁", " ").encode()
    return out


def test_same_fp32_weights_same_prompt_logprobs(f32_server, hf_model):
    tok, _ = hf_model
    for prompt in PROMPTS:
        ids = tok(prompt).input_ids
        body = httpx.post(f"{f32_server.base_url}/completions", timeout=60, json={
            "model": "tiny", "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 1,
            "echo": True}).json()  # fmt: skip
        lp = body["choices"][0]["logprobs"]
        n = body["usage"]["prompt_tokens"]
        assert n == len(ids) and lp["token_logprobs"][0] is None  # BOS kept, as vLLM does
        assert lp["token_logprobs"][1:n] == pytest.approx(hf_prompt_logprobs(hf_model, ids), abs=1e-5)
        assert body["choices"][0]["text"].startswith(prompt)
        # text offsets point into the returned text: token i's text starts at its offset
        text, offsets = body["choices"][0]["text"], lp["text_offset"]
        assert offsets == sorted(offsets) and text[: offsets[-1]] == prompt


def test_default_f16_kv_cache_prompt_logprobs(tiny_model, tmp_path_factory, hf_model):
    tok, _ = hf_model
    ids = tok(PROMPTS[4]).input_ids
    with serve(tiny_model, tmp_path_factory, quant="f32") as endpoint:
        body = httpx.post(f"{endpoint.base_url}/completions", timeout=60, json={
            "model": "tiny", "prompt": ids, "max_tokens": 0, "logprobs": 1, "echo": True}).json()  # fmt: skip
    got = body["choices"][0]["logprobs"]["token_logprobs"]
    assert len(got) == len(ids) and body["usage"]["completion_tokens"] == 0
    assert got[1:] == pytest.approx(hf_prompt_logprobs(hf_model, ids), abs=2e-4)


def test_engine_specific_errors(f32_server):
    url = f32_server.base_url
    r = httpx.post(f"{url}/completions", json={"prompt": "Hi", "logit_bias": {"5": 1}}, timeout=30)
    assert r.status_code == 400 and "logit_bias" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/completions", json={"prompt": [1, 10**6]}, timeout=30)
    assert r.status_code == 400 and "out of range" in r.json()["error"]["message"]
    info = httpx.get(f"{url}/engine", timeout=30).json()
    assert info["engine"] == "llamacpp" and info["quantization"] == "f32"
    assert info["weight_bytes"] > 0 and info["device"] == "cpu"
    # unset: llama-server's 4 slots, each with the room one request had alone (4096 or the trained context)
    assert info["parallel"] == 4 and info["n_ctx_per_sequence"] == min(4096, info["n_ctx_train"])
    assert info["n_ctx"] == 4 * info["n_ctx_per_sequence"]


def test_api_key(tiny_model, tmp_path_factory):
    with serve(tiny_model, tmp_path_factory, quant="q8_0", api_key="sesame") as endpoint:
        url = endpoint.base_url
        assert httpx.get(f"{url}/models", timeout=30).status_code == 401
        ok = httpx.get(f"{url}/models", headers={"Authorization": "Bearer sesame"}, timeout=30)
        assert ok.status_code == 200


@pytest.mark.slow
def test_smollm2_same_greedy_text_as_transformers(tmp_path_factory):
    """The real model: its bf16 HF folder served as an f32 GGUF, against transformers in fp32."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from harness.models import ensure_smollm2

    folder = ensure_smollm2().path
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompts = ["The capital of France is", "def fibonacci(n):", "Water boils at"]
    with serve(folder, tmp_path_factory, quant="f32", kv_cache_type="f32", n_ctx=1024) as endpoint:
        for prompt in prompts:
            ids = tok(prompt).input_ids
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0]
            expected = tok.decode(out[len(ids) :], skip_special_tokens=True)
            body = httpx.post(f"{endpoint.base_url}/completions", timeout=120, json={
                "model": "tiny", "prompt": prompt, "max_tokens": 32, "temperature": 0}).json()  # fmt: skip
            assert body["choices"][0]["text"] == expected, prompt


# --- one-line failures of the server process ------------------------------------------------------


def run_server(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backends.llamacpp", *args], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_server_port_in_use_exits_2(tiny_model):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = run_server("--model", str(tiny_model), "--port", str(port))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"error: port {port} is in use on 127.0.0.1 (Address already in use)"]


def test_server_bad_model_exits_2(tmp_path):
    bad = tmp_path / "weights.gguf"
    bad.write_bytes(b"\x00" * 64)
    res = run_server("--model", str(bad), "--port", "0")
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"error: {bad} is not a GGUF file (bad magic)"]
