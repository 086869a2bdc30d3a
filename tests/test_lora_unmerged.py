"""The hf engine serving a real LoRA adapter unmerged (`--lora DIR`) against merge-lora's folded
copy of the same weights, through `hyperbench agree`: identical greedy tokens and prompt logprobs
within 1e-4, and /v1/engine saying what it served."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("peft", reason="peft is not installed: pip install 'hyperbench[lora]'")

import torch  # noqa: E402

from tests.test_cli_errors import assert_one_line_error, hb  # noqa: E402
from tests.test_lora import logits, train_adapter  # noqa: E402


def test_unmerged_adapter_serves_what_the_merged_model_does(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from harness.lora import merge

    adapter = train_adapter(tiny_model, tmp_path / "adapter")
    merged = merge(str(tiny_model), adapter, tmp_path / "merged").out
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    moved = (logits(AutoModelForCausalLM.from_pretrained(merged), ids)
             - logits(AutoModelForCausalLM.from_pretrained(tiny_model), ids)).abs().max()
    assert moved > 1e-2  # the adapter changes the output: equal answers below are no accident

    spec = f"hf:model={tiny_model}:lora={adapter}"
    res = hb("agree", "--model", str(merged), "--engines", f"hf,{spec}", "--prompts", "4", "--max-tokens", "8",
             "--results-dir", str(tmp_path), "--run-name", "ag")
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads((tmp_path / "ag" / "summary.json").read_text())
    a = s["agreement"][spec]
    assert a["greedy"]["identical"] == a["greedy"]["prompts"] == 4
    assert a["prompt_logprobs"]["positions"] > 0 and a["prompt_logprobs"]["max_abs_diff"] < 1e-4
    lora = next(e for e in s["engines"] if e["label"] == spec)["engine_info"]["lora"]
    assert lora["merged"] is False and lora["modules"] == 6 and lora["rank"] == 4


def test_lora_that_is_no_adapter_is_one_line(tmp_path):
    res = hb("bench", "--engine", "hf", "--model", "tiny-llama", "--lora", str(tmp_path),
             "--results-dir", str(tmp_path / "r"))
    assert_one_line_error(res, "not a peft adapter folder")
