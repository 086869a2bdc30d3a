"""`hyperbench merge-lora`: fold a LoRA adapter into its base model's weights (peft's
`merge_and_unload`) and save an ordinary HF folder, with the base's tokenizer, that every engine
serves and `bench` / `score` read like any model: a merged adapter costs nothing per token.

An adapter trained on another base is refused before peft sees it, in one line naming the first
mismatch: peft would either raise a page of `size mismatch` errors or, where a target module is
simply absent, silently leave the adapter out.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HyperbenchError, missing_extra

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json")


@dataclass
class MergeResult:
    out: Path
    base: str
    adapter: Path
    modules: int  # LoRA-wrapped modules folded into the weights
    rank: int


def _adapter_files(adapter: Path) -> tuple[dict, Path]:
    if not adapter.is_dir():
        raise HyperbenchError(f"adapter folder {adapter} does not exist")
    cfg_file = adapter / "adapter_config.json"
    if not cfg_file.is_file():
        raise HyperbenchError(f"{adapter} is not a peft adapter folder (no adapter_config.json)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise HyperbenchError(f"{cfg_file} is not valid JSON: {e.msg}") from None
    if cfg.get("peft_type") != "LORA":
        raise HyperbenchError(f"{adapter} is a {cfg.get('peft_type')!r} adapter; merge-lora merges LoRA only")
    weights = next((adapter / f for f in ADAPTER_WEIGHTS if (adapter / f).is_file()), None)
    if weights is None:
        raise HyperbenchError(f"{adapter} has no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")
    return cfg, weights


def read_adapter(adapter: Path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """A LoRA adapter folder's config and tensor shapes (no weights read); one-line refusals."""
    cfg, weights = _adapter_files(Path(adapter).expanduser())
    return cfg, _adapter_shapes(weights)


def _adapter_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    import torch

    return {k: tuple(v.shape) for k, v in torch.load(weights, map_location="cpu", weights_only=True).items()}


def check_adapter_fits(model, adapter_cfg: dict, shapes: dict[str, tuple[int, ...]], base: str,
                       adapter: Path) -> None:
    """Every lora_A / lora_B tensor must sit on a module of the base with matching in/out sizes."""
    modules = dict(model.named_modules())
    trained_on = adapter_cfg.get("base_model_name_or_path") or "an unnamed model"
    for key, shape in sorted(shapes.items()):
        if ".lora_A." not in key and ".lora_B." not in key:
            continue  # modules_to_save and embeddings: peft checks those itself
        target = key.split(".lora_")[0].removeprefix("base_model.model.")
        module = modules.get(target)
        if module is None:
            raise HyperbenchError(f"adapter {adapter} (trained on {trained_on}) targets {target}, "
                                  f"which base {base} does not have")
        in_f, out_f = getattr(module, "in_features", None), getattr(module, "out_features", None)
        want = shape[1] if ".lora_A." in key else shape[0]
        have = in_f if ".lora_A." in key else out_f
        if have is not None and want != have:
            side = "input" if ".lora_A." in key else "output"
            raise HyperbenchError(f"adapter {adapter} (trained on {trained_on}) does not fit base {base}: "
                                  f"{target} has {side} size {have} there, the adapter expects {want}")


def merge(base: str, adapter: Path, out: Path) -> MergeResult:
    for module, extra in (("peft", "lora"), ("transformers", "hf")):
        if importlib.util.find_spec(module) is None:
            raise missing_extra(extra, module)
    from harness.models import resolve_model

    adapter = Path(adapter).expanduser()
    out = Path(out).expanduser()
    adapter_cfg, weights = _adapter_files(adapter)
    if out.exists() and any(out.iterdir()):
        raise HyperbenchError(f"--out {out} exists and is not empty: choose a new folder")
    resolved = resolve_model(base)
    if resolved.path is None:
        raise HyperbenchError(f"base {base} is a GGUF file: merge-lora needs the HF folder of the base")

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    # the base's shapes from its config alone (no weights read, nothing allocated), checked
    # before peft is even imported
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolved.path))
    check_adapter_fits(skeleton, adapter_cfg, _adapter_shapes(weights), base, adapter)
    from peft import PeftModel

    # the checkpoint's own dtype: merging in another precision would change every weight
    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype="auto")
    with torch.no_grad():
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    _copy_tokenizer(resolved.path, tmp)
    (tmp / "merged_from.json").write_text(json.dumps(
        {"base": str(resolved.path), "adapter": str(adapter.resolve()), "peft_config": adapter_cfg}, indent=2))
    if out.exists():
        out.rmdir()  # empty (checked above)
    tmp.rename(out)  # a cut merge never leaves a folder that looks like a model
    n = sum(1 for k in _adapter_shapes(weights) if ".lora_A." in k)
    return MergeResult(out=out, base=str(resolved.path), adapter=adapter, modules=n,
                       rank=int(adapter_cfg.get("r", 0)))


def _copy_tokenizer(src: Path, dst: Path) -> None:
    """The base's tokenizer files as they are (not re-saved: a round trip can change them)."""
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
