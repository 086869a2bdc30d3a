"""`hyperbench merge-lora` on a real LoRA adapter (peft, trained a few steps on the tiny model), and
its one-line refusal of an adapter made for another base model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("peft", reason="peft is not installed: pip install 'hyperbench[lora]'")

import torch  # noqa: E402

from tests.test_cli_errors import assert_one_line_error, hb  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. " * 4


def train_adapter(base: Path, out: Path, steps: int = 20) -> Path:
    """A real LoRA adapter: a few AdamW steps on a fixed text, so the merged output moves."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                  target_modules=["q_proj", "v_proj", "down_proj"]))
    ids = tok(TEXT, return_tensors="pt").input_ids
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    peft_model.save_pretrained(out)
    return out


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_model_equals_base_plus_adapter(tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = train_adapter(tiny_model, tmp_path / "adapter")
    res = hb("merge-lora", "--base", str(tiny_model), "--adapter", str(adapter), "--out", str(tmp_path / "merged"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "merged 6 LoRA modules (rank 4)" in res.stdout, res.stdout
    merged_dir = tmp_path / "merged"
    # an ordinary HF folder: no adapter files, the base's tokenizer beside the weights
    assert not (merged_dir / "adapter_config.json").exists()
    assert (merged_dir / "tokenizer.json").read_bytes() == (tiny_model / "tokenizer.json").read_bytes()

    ids = AutoTokenizer.from_pretrained(merged_dir)("the lazy dog jumps over", return_tensors="pt").input_ids
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    base_logits = logits(base, ids)
    with_adapter = logits(PeftModel.from_pretrained(base, str(adapter)), ids)
    merged = logits(AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32), ids)
    assert (with_adapter - base_logits).abs().max() > 1e-2  # training moved the output
    assert torch.allclose(merged, with_adapter, atol=1e-4), (merged - with_adapter).abs().max()
    assert json.loads((merged_dir / "merged_from.json").read_text())["peft_config"]["r"] == 4


def test_adapter_for_another_base_is_one_line(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    other.config.name_or_path = "other-llama"
    get_peft_model(other, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    res = hb("merge-lora", "--base", str(tiny_model), "--adapter", str(tmp_path / "adapter"),
             "--out", str(tmp_path / "merged"))
    assert_one_line_error(res, "does not fit base", "q_proj has input size 64 there, the adapter expects 32")
    assert not (tmp_path / "merged").exists()


def test_not_an_adapter_folder_is_one_line(tiny_model, tmp_path):
    assert_one_line_error(hb("merge-lora", "--base", str(tiny_model), "--adapter", str(tmp_path),
                             "--out", str(tmp_path / "m")), "not a peft adapter folder")
