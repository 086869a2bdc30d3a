"""Check the server's flags against this machine, then load the model and tokenizer.

`preflight` runs before anything heavy (and before the port is bound), so a wrong flag costs the
user a second, not a model load.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field

from harness.errors import HyperbenchError

log = logging.getLogger("hf.loading")

FLASH_ATTN_HINT = "flash_attention_2 needs a CUDA GPU and the flash-attn package; use --attn sdpa"
DEFAULT_MAX_LEN = 2048


@dataclass
class LoadSettings:
    model: str
    quant: str = "none"  # none | int8 | nf4
    attn: str = "sdpa"  # sdpa | flash_attention_2 | eager
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda
    load_format: str = "auto"  # auto | dummy (random weights of the config's shape, as vLLM's)
    draft: str | None = None  # speculative decoding: the draft model's folder (or .gguf)
    prune: float = 0.0  # fraction of Linear weights zeroed at load (backends/hf/pruning.py)
    prune_scope: str = "global"  # global | layer
    lora: str | None = None  # a peft LoRA adapter folder, served unmerged (backends/hf/lora.py)


def draft_settings(s: LoadSettings) -> LoadSettings:
    """How the draft model loads: like the target (device, dtype, attention, dummy weights), but
    never quantized; a bitsandbytes target computes in the same dtype as an unquantized draft."""
    return LoadSettings(s.draft, "none", s.attn, s.dtype, s.device, s.load_format)


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    device: str
    dtype: str  # compute dtype name
    weight_bytes: int
    max_len: int
    eos_ids: list[int]
    pad_id: int
    vocab_size: int
    info: dict = field(default_factory=dict)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if _cuda_available() else "cpu"
    return device


def model_location(path: str) -> tuple[str, str | None]:
    """(folder, gguf file name or None) for a model path; raises for anything else."""
    if not os.path.exists(path):
        raise HyperbenchError(f"model path {path} does not exist")
    if os.path.isfile(path):
        if path.endswith(".gguf"):
            return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
        raise HyperbenchError(f"model path {path} is a file but not a .gguf: give a model folder")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise HyperbenchError(f"model path {path} is not a transformers model folder (no config.json)")
    return path, None


def preflight(s: LoadSettings) -> None:
    """Raise HyperbenchError for settings that cannot work here (cheap checks only)."""
    model_location(s.model)
    if s.device == "cuda" and not _cuda_available():
        raise HyperbenchError("--device cuda but no CUDA GPU is visible; use --device cpu")
    if s.attn == "flash_attention_2":
        if resolve_device(s.device) != "cuda" or importlib.util.find_spec("flash_attn") is None:
            raise HyperbenchError(FLASH_ATTN_HINT)
        if s.dtype == "float32":
            raise HyperbenchError("flash_attention_2 runs in float16 or bfloat16, not float32: use --dtype bfloat16")
    if s.load_format == "dummy" and s.quant != "none":
        raise HyperbenchError("--load-format dummy cannot be combined with --quant")
    if s.quant != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise HyperbenchError(f"--quant {s.quant} needs bitsandbytes: pip install 'hyperbench[bnb]'")
    if s.dtype == "float16" and resolve_device(s.device) == "cpu":
        log.warning("float16 on CPU is slow and can overflow; float32 or bfloat16 are the usual choices")
    if s.draft is not None:
        check_draft(s.model, s.draft)
    if s.lora is not None:
        if s.prune:  # pruning ranks every Linear weight, the adapter's own A and B among them
            raise HyperbenchError("--lora cannot be combined with --prune")
        if s.load_format == "dummy":
            raise HyperbenchError("--lora cannot be combined with --load-format dummy")
        from backends.hf.lora import check_lora

        check_lora(s.lora)


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    folder, gguf_file = model_location(path)
    try:
        return AutoTokenizer.from_pretrained(folder, **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HyperbenchError(f"cannot load the tokenizer of {path}: {first}") from None


def check_draft(model: str, draft: str) -> None:
    """A draft model must tokenize exactly as the target: its tokens are the target's input."""
    try:
        model_location(draft)
    except HyperbenchError as exc:
        raise HyperbenchError(f"draft model: {exc}") from None
    target_vocab, draft_vocab = _tokenizer(model).get_vocab(), _tokenizer(draft).get_vocab()
    if target_vocab != draft_vocab:
        differ = sum(1 for tok, i in draft_vocab.items() if target_vocab.get(tok) != i)
        raise HyperbenchError(
            f"draft model {draft} has another tokenizer than {model} ({len(draft_vocab)} vs "
            f"{len(target_vocab)} tokens, {differ} with other ids): speculative decoding needs "
            "the same vocabulary"
        )


def _torch_dtype(s: LoadSettings, device: str):
    import torch

    if s.dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, s.dtype)


def _quant_config(s: LoadSettings, dtype):
    if s.quant == "none":
        return None
    from transformers import BitsAndBytesConfig

    if s.quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
    )


def cpu_threads() -> int:
    """Torch threads on CPU: all usable cores but one, which the event loop needs to stream
    tokens (with every core busy, OpenMP's spinning barriers slow each step by ~10x). An explicit
    OMP_NUM_THREADS wins."""
    if os.environ.get("OMP_NUM_THREADS"):
        return int(os.environ["OMP_NUM_THREADS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 2) - 1)


def _dummy_model(folder: str, dtype, attn: str, device: str):
    """Random weights of the folder's config, made on the device: speed runs of big shapes
    without their weights (only config.json and the tokenizer are read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    # seeded: the same config gives the same weights in every run (and a draft model of the
    # target's own config is the target, the upper bound of speculative decoding)
    devices = [torch.device(device).index or 0] if device != "cpu" else []
    with torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    log.warning("--load-format dummy: random weights, the text is meaningless")
    return model


def load(s: LoadSettings) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf_file = model_location(s.model)
    device = resolve_device(s.device)
    if device == "cpu":
        torch.set_num_threads(cpu_threads())
    else:
        # cuDNN attention plans a graph per new KV length (and per thread): serving meets a new
        # length every step, which made decode ~3x slower on an H100 (80 vs 27 ms/step, 7B bf16)
        torch.backends.cuda.enable_cudnn_sdp(False)
    dtype = _torch_dtype(s, device)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
        if s.load_format == "dummy":
            model = _dummy_model(folder, dtype, s.attn, device)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                folder,
                dtype=dtype,
                attn_implementation=s.attn,
                quantization_config=_quant_config(s, dtype),
                device_map=device,
                **extra,
            )
    except (OSError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HyperbenchError(f"cannot load {s.model}: {first}") from None
    model.eval()
    lora = None
    if s.lora is not None:
        from backends.hf.lora import apply_lora

        model, lora = apply_lora(model, s.lora, s.model)
    pruned = None
    if s.prune:
        from backends.hf.pruning import prune_model

        pruned = prune_model(model, s.prune, s.prune_scope)
        log.info("pruned %.0f%% of %d Linear weights (%s): measured sparsity %.4f", 100 * s.prune,
                 pruned["modules"], s.prune_scope, pruned["sparsity_pruned_linear"])

    weight_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    weight_bytes += sum(t.numel() * t.element_size() for t in model.buffers())
    config = model.config.get_text_config()
    max_len = getattr(config, "max_position_embeddings", None) or DEFAULT_MAX_LEN
    eos = model.generation_config.eos_token_id
    eos_ids = {tokenizer.eos_token_id} | set(eos if isinstance(eos, list) else [eos])
    eos_ids.discard(None)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    vocab = getattr(config, "vocab_size", None) or model.get_output_embeddings().weight.shape[0]
    log.info(
        "loaded %s on %s (%s, quant %s, attn %s): %.1f MB of weights, context %d",
        s.model, device, str(dtype).removeprefix("torch."), s.quant, s.attn,
        weight_bytes / 1e6, max_len,
    )  # fmt: skip
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=str(dtype).removeprefix("torch."),
        weight_bytes=weight_bytes,
        max_len=int(max_len),
        eos_ids=sorted(eos_ids),
        pad_id=int(pad_id),
        vocab_size=int(vocab),
        info={"model_type": config.model_type, "num_parameters": model.num_parameters(),
              "torch_threads": torch.get_num_threads(), "pruning": pruned, "lora": lora},  # fmt: skip
    )


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("transformers", "torch", "bitsandbytes", "accelerate", "flash-attn"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out
