"""A peft LoRA adapter served unmerged: its low-rank layers wrap the base's Linear layers and run
beside them at every step (base(x) + B(A(x)) * scale), as vLLM's and llama.cpp's adapter serving
do, so the cost of serving an adapter unmerged can be measured against `hyperbench merge-lora`'s
folded copy of the same weights.

The model handed to the engine is the base model class itself with the LoRA modules injected
(peft's get_base_model), not the PeftModel wrapper: every code path of the engine (batching, CUDA
graphs, speculation) sees the model type it knows.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from harness.errors import HyperbenchError

log = logging.getLogger("hf.lora")


def check_lora(adapter: str) -> dict:
    """Cheap checks before the model loads: peft present, a LoRA adapter folder. Its config."""
    if importlib.util.find_spec("peft") is None:
        raise HyperbenchError("--lora needs peft: pip install 'hyperbench[lora]'")
    from harness.lora import read_adapter

    return read_adapter(Path(adapter))[0]


def apply_lora(model, adapter: str, base: str) -> tuple[object, dict]:
    """The model with the adapter injected (unmerged) and what /v1/engine reports of it."""
    from peft import PeftModel

    from harness.lora import check_adapter_fits, read_adapter

    cfg, shapes = read_adapter(Path(adapter))
    check_adapter_fits(model, cfg, shapes, base, Path(adapter))  # one line naming the mismatch
    wrapped = PeftModel.from_pretrained(model, adapter)
    wrapped.eval()
    served = wrapped.get_base_model()
    info = {"path": str(Path(adapter).resolve()), "merged": False, "rank": cfg.get("r"),
            "alpha": cfg.get("lora_alpha"), "target_modules": sorted(cfg.get("target_modules") or []),
            "modules": sum(1 for k in shapes if ".lora_A." in k),
            "trained_on": cfg.get("base_model_name_or_path")}  # fmt: skip
    log.info("LoRA adapter %s served unmerged: %d modules, rank %s", adapter, info["modules"], info["rank"])
    return served, info
