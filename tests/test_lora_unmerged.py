"""The hf and llama.cpp engines serving a real LoRA adapter unmerged (`--lora DIR`) against
merge-lora's folded copy of the same weights, through `hyperbench agree`: identical greedy tokens
and prompt logprobs within 1e-4, and /v1/engine saying what it served."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("peft", reason="peft is not installed: pip install 'hyperbench[lora]'")

import torch  # noqa: E402

from tests.test_cli_errors import assert_one_line_error, hb  # noqa: E402
from tests.test_lora import logits, train_adapter  # noqa: E402


@pytest.fixture(scope="module")
def adapter_and_merged(tiny_model, tmp_path_factory):
    from harness.lora import merge

    root = tmp_path_factory.mktemp("lora")
    adapter = train_adapter(tiny_model, root / "adapter")
    return adapter, merge(str(tiny_model), adapter, root / "merged").out


def agreement(merged, engines: str, tmp_path) -> dict:
    res = hb("agree", "--model", str(merged), "--engines", engines, "--prompts", "4", "--max-tokens", "8",
             "--results-dir", str(tmp_path), "--run-name", "ag")
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads((tmp_path / "ag" / "summary.json").read_text())


def test_unmerged_adapter_serves_what_the_merged_model_does(tiny_model, adapter_and_merged, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter, merged = adapter_and_merged
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    moved = (logits(AutoModelForCausalLM.from_pretrained(merged), ids)
             - logits(AutoModelForCausalLM.from_pretrained(tiny_model), ids)).abs().max()
    assert moved > 1e-2  # the adapter changes the output: equal answers below are no accident

    spec = f"hf:model={tiny_model}:lora={adapter}"
    s = agreement(merged, f"hf,{spec}", tmp_path)
    a = s["agreement"][spec]
    assert a["greedy"]["identical"] == a["greedy"]["prompts"] == 4
    assert a["prompt_logprobs"]["positions"] > 0 and a["prompt_logprobs"]["max_abs_diff"] < 1e-4
    lora = next(e for e in s["engines"] if e["label"] == spec)["engine_info"]["lora"]
    assert lora["merged"] is False and lora["modules"] == 6 and lora["rank"] == 4


def test_lora_that_is_no_adapter_is_one_line(tmp_path):
    res = hb("bench", "--engine", "hf", "--model", "tiny-llama", "--lora", str(tmp_path),
             "--results-dir", str(tmp_path / "r"))
    assert_one_line_error(res, "not a peft adapter folder")


@pytest.mark.llamacpp
@pytest.mark.slow  # ~50 s here (the adapter's GGUF conversion and two llama.cpp engines): beyond CI's fast budget
def test_llamacpp_gguf_lora_serves_what_the_merged_model_does(tiny_model, adapter_and_merged, tmp_path):
    """The peft folder converted by llama.cpp's convert_lora_to_gguf.py and applied at load, on two
    sequences at once (the batch context gets the adapter too), against the merged model's GGUF."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install 'hyperbench[llamacpp]'")
    adapter, merged = adapter_and_merged
    spec = f"llamacpp:f32:model={tiny_model}:parallel=2:lora={adapter}"
    s = agreement(merged, f"llamacpp:f32,{spec}", tmp_path)
    a = s["agreement"][spec]
    assert a["greedy"]["identical"] == a["greedy"]["prompts"] == 4
    assert a["prompt_logprobs"]["positions"] > 0 and a["prompt_logprobs"]["max_abs_diff"] < 1e-4
    lora = next(e for e in s["engines"] if e["label"] == spec)["engine_info"]["lora"]
    assert lora["merged"] is False and lora["path"].endswith(".gguf") and lora["source"] == str(adapter.resolve())


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_lora_module_serves_what_the_merged_model_does(tiny_model, adapter_and_merged, tmp_path):
    """vLLM's --enable-lora --lora-modules under the served name (CPU build here), against the
    merged folder on vLLM: the adapter was applied (the merged model is 1e-2 away from the base)."""
    from backends.vllm.spec import vllm_python

    if vllm_python() is None:
        pytest.skip("vLLM is not installed here")
    adapter, merged = adapter_and_merged
    spec = f"vllm:dtype=float32:enforce_eager=true:model={tiny_model}:lora={adapter}"
    s = agreement(merged, f"vllm:dtype=float32:enforce_eager=true,{spec}", tmp_path)
    a = s["agreement"][spec]
    assert a["greedy"]["identical"] == a["greedy"]["prompts"] == 4
    assert a["prompt_logprobs"]["positions"] > 0 and a["prompt_logprobs"]["max_abs_diff"] < 1e-4


def test_vllm_lora_arguments(adapter_and_merged):
    """The mapping, without a server: the adapter under the name the harness requests."""
    from backends.vllm.spec import VLLMConfig, vllm_args

    adapter, _ = adapter_and_merged
    args = vllm_args(VLLMConfig(model="m", lora=adapter), "/models/m", "127.0.0.1", 8000, device="cpu")
    assert args[args.index("--served-model-name") + 1] == "m-base"
    assert args[args.index("--lora-modules") + 1] == f"m={adapter.resolve()}"
    assert "--enable-lora" in args and args[args.index("--max-lora-rank") + 1] == "8"  # rank 4 -> vLLM's 8
