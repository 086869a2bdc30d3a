"""`hf:prune=0.3`: L1-magnitude pruning at load, made permanent, its measured sparsity on
/v1/engine of a real hf server, and the refusal of a fraction outside [0, 1)."""

from __future__ import annotations

import httpx
import pytest
import torch

from backends.hf.pruning import prunable, prune_model
from tests.conftest import start_server
from tests.test_cli_errors import assert_one_line_error, hb


def load(tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)


def test_layer_scope_prunes_each_linear_by_the_same_fraction_permanently(tiny_model):
    model = load(tiny_model)
    head_before = model.lm_head.weight.clone()
    report = prune_model(model, 0.3, "layer")
    modules = prunable(model)
    assert len(modules) == report["modules"] == 2 * 7  # q k v o gate up down per layer
    for name, m in modules:
        zeros = int((m.weight == 0).sum())
        assert zeros == round(0.3 * m.weight.numel()), name
        assert not hasattr(m, "weight_orig") and not m._forward_pre_hooks, name  # made permanent
    assert torch.equal(model.lm_head.weight, head_before)  # the head stays dense
    assert report["sparsity_pruned_linear"] == pytest.approx(0.3, abs=1e-3)
    assert 0 < report["sparsity_all_parameters"] < report["sparsity_pruned_linear"]


def test_global_scope_keeps_the_largest_weights_overall(tiny_model):
    model = load(tiny_model)
    weights = torch.cat([m.weight.abs().flatten() for _, m in prunable(model)])
    threshold = weights.kthvalue(int(0.3 * weights.numel())).values
    report = prune_model(model, 0.3, "global")
    assert report["sparsity_pruned_linear"] == pytest.approx(0.3, abs=1e-3)
    for name, m in prunable(model):
        kept = m.weight[m.weight != 0].abs()
        assert kept.numel() == 0 or kept.min() >= threshold, name


def test_hf_server_reports_measured_sparsity(tiny_model, tmp_path):
    with start_server("hf", tiny_model, tmp_path, prune=0.3, prune_scope="layer") as server:
        info = httpx.get(f"{server.base_url}/engine", timeout=30).json()
        r = httpx.post(f"{server.base_url}/completions", timeout=60,
                       json={"model": server.model, "prompt": "hello", "max_tokens": 4, "temperature": 0})
    assert info["pruning"]["scope"] == "layer" and info["pruning"]["amount"] == 0.3
    assert info["pruning"]["sparsity_pruned_linear"] == pytest.approx(0.3, abs=1e-3)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("args, message", [
    (["--prune", "1.5"], "prune: Input should be less than 1"),
    (["--prune", "0.3", "--quant", "int8"], "prune=0.3 cannot be combined with --quant int8"),
], ids=["over-one", "with-bnb"])  # fmt: skip
def test_bad_prune_is_one_line(tiny_model, tmp_path, args, message):
    assert_one_line_error(hb("bench", "--engine", "hf", "--model", str(tiny_model), "--num-requests", "1",
                             "--results-dir", str(tmp_path), *args), "error: ", message)
    assert not any(tmp_path.iterdir())  # refused before a run folder was made
