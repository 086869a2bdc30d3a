"""Unstructured L1-magnitude pruning of a loaded model (the OptiBench study's variant), made
permanent with torch.nn.utils.prune.remove so the served weights are plain dense tensors with
zeros in them.

What is pruned: every nn.Linear weight except the output head (lm_head): the head maps straight
to logits and pruning it costs far more quality per weight (the usual choice of Wanda/SparseGPT).
Embeddings and norms are left dense. Scope `global` ranks all those weights together (some
layers end up sparser than others); `layer` prunes the same fraction from each.

Dense kernels do not skip zeros: unstructured sparsity saves no time or memory by itself. The
engine reports the measured sparsity so a bench run says what it served.
"""

from __future__ import annotations

SCOPES = ("global", "layer")


def prunable(model) -> list[tuple[str, object]]:
    import torch

    head = model.get_output_embeddings()
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head]


def prune_model(model, amount: float, scope: str = "global") -> dict:
    """Zero the `amount` fraction of smallest-|w| weights; return the measured sparsity."""
    import torch
    from torch.nn.utils import prune

    if not 0 <= amount < 1:
        raise ValueError(f"prune amount must be in [0, 1), got {amount}")
    if scope not in SCOPES:
        raise ValueError(f"prune scope must be one of {SCOPES}, got {scope!r}")
    modules = prunable(model)
    with torch.no_grad():
        if scope == "global":
            prune.global_unstructured([(m, "weight") for _, m in modules],
                                      pruning_method=prune.L1Unstructured, amount=amount)
        else:
            for _, m in modules:
                prune.l1_unstructured(m, "weight", amount=amount)
        for _, m in modules:
            prune.remove(m, "weight")  # weight = weight_orig * mask, the mask and hook dropped
    return sparsity(model, amount, scope)


def sparsity(model, amount: float, scope: str) -> dict:
    """Counted zeros, not the requested fraction: what /v1/engine reports."""
    modules = prunable(model)
    pruned_zero = sum(int((m.weight == 0).sum()) for _, m in modules)
    pruned_total = sum(m.weight.numel() for _, m in modules)
    all_zero = sum(int((p == 0).sum()) for p in model.parameters())
    all_total = sum(p.numel() for p in model.parameters())
    return {
        "method": "l1_unstructured", "scope": scope, "amount": amount, "modules": len(modules),
        "sparsity_pruned_linear": pruned_zero / pruned_total if pruned_total else 0.0,
        "sparsity_all_parameters": all_zero / all_total if all_total else 0.0,
    }  # fmt: skip
