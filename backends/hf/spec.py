"""Harness-side config of the transformers engine (no torch import here)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from backends.base import (
    ALL_SAMPLING_PARAMS,
    Capabilities,
    EngineConfig,
    looks_like_path,
)
from backends.base import parse_speculative as base_parse_speculative
from harness.errors import HyperbenchError

SPECULATIVE_FORMS = ["draft:<model>"]
# fields that only mean something while speculating (set without it: an error, not ignored)
SPECULATIVE_SETTINGS = ("num_speculative_tokens", "assistant_confidence_threshold")


class HFConfig(EngineConfig):
    kind: Literal["hf"] = "hf"
    quant: Literal["none", "int8", "nf4"] = Field("none", description="bitsandbytes quantization.")
    attn: Literal["sdpa", "flash_attention_2", "eager"] = Field(
        "sdpa", description="Attention implementation."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype (auto: bfloat16 on GPU, float32 on CPU)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the model runs.")
    max_batch_size: int = Field(32, ge=1, description="Most sequences decoded together.")
    enforce_eager: bool = Field(
        False, description="Decode eagerly. Otherwise, on a GPU, a Llama/Mistral/Qwen2 model (16/32-bit "
        "or NF4; not INT8) decodes through CUDA graphs over a static KV cache (with speculation, the draft too).",
    )
    speculative: str = Field(
        "none",
        description="Speculative decoding: none, or draft:<model> (a smaller model with the "
        "same tokenizer: built-in name, local folder or hub id), run inside the batching loop.",
    )
    num_speculative_tokens: int = Field(
        4, ge=1, le=64,
        description="Most tokens the draft proposes per step (transformers' num_assistant_tokens, "
        "constant schedule).",
    )  # fmt: skip
    assistant_confidence_threshold: float = Field(
        0.4, ge=0, le=1,
        description="The draft stops proposing after a token it gives less probability than "
        "this (transformers' default 0.4; 0: always propose num_speculative_tokens).",
    )  # fmt: skip

    prune: float = Field(
        0.0, ge=0, lt=1,
        description="Unstructured L1-magnitude pruning: the fraction of Linear weights (lm_head "
        "excluded) zeroed at load, made permanent (0: off). Dense kernels get no speed from it.",
    )  # fmt: skip
    prune_scope: Literal["global", "layer"] = Field(
        "global", description="Pruning ranks all weights together (global) or each layer on its own (layer).",
    )

    lora: Path | None = Field(
        None,
        description="A peft LoRA adapter folder served unmerged on the model (compare: "
        "`hyperbench merge-lora`'s folded copy).",
    )

    extra = "hf"
    probe_module = "transformers"
    server_module = "backends.hf"  # its flags are built from this spec (backends/spec_cli.py)

    def capabilities(self) -> Capabilities:
        return Capabilities(
            sampling_params=list(ALL_SAMPLING_PARAMS),
            quantizations=["none", "int8", "nf4"],
            speculative=list(SPECULATIVE_FORMS),
        )

    def check(self) -> None:
        if self.quant != "none":
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                raise HyperbenchError(
                    f"--quant {self.quant} needs bitsandbytes: pip install 'hyperbench[bnb]'"
                )
        if self.prune and self.quant != "none":
            raise HyperbenchError(f"prune={self.prune} cannot be combined with --quant {self.quant} "
                                  "(bitsandbytes weights are not prunable tensors)")
        if self.lora is not None:
            from harness.lora import read_adapter

            if self.prune:
                raise HyperbenchError("--lora cannot be combined with --prune")
            read_adapter(self.lora)  # a missing or non-LoRA folder: one line before any start
        _, draft = parse_speculative(self.speculative)
        if draft is None:
            # (a default passed along, as the container launchers pass every field, is no request)
            fields = type(self).model_fields
            given = [n for n in SPECULATIVE_SETTINGS if getattr(self, n) != fields[n].default]
            if given:
                flag = "--" + given[0].replace("_", "-")
                raise HyperbenchError(f"{flag} needs speculative decoding (--speculative draft:<model>)")
        elif looks_like_path(draft) and not Path(draft).expanduser().exists():
            raise HyperbenchError(f"draft model path {draft} does not exist")


def parse_speculative(text: str) -> tuple[str, str | None]:
    """'none' -> ("none", None); 'draft:<model>' -> ("draft", model). Anything else: a one-line error."""

    def refusal(method: str) -> str:
        hint = " (n-gram and EAGLE speculation: --engine vllm)" if method in ("ngram", "eagle", "eagle3") else ""
        return f"the hf engine supports none or draft:<model>{hint}"

    return base_parse_speculative(text, SPECULATIVE_FORMS, refusal)
