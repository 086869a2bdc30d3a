"""Harness-side config of the llama.cpp engine (llama-cpp-python); no llama_cpp import here."""

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

# GGUF weight types we make from an HF folder (llama_model_quantize's names, lower case)
QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m")

SPECULATIVE_FORMS = ["ngram", "draft:<model>"]
# n-gram sizes matched when ngram_min / ngram_max are not given
NGRAM_MIN, NGRAM_MAX = 1, 3
MIN_CTX_PER_SEQUENCE = 16  # n_ctx / parallel below this leaves a sequence no room for a prompt
AUTO_PARALLEL = 4  # llama-server's `--parallel -1` (its default): 4 slots in a unified KV cache
CTX_PER_SEQUENCE = 4096  # the default n_ctx is this per sequence: one request's room stays as with one slot


class LlamaCppConfig(EngineConfig):
    kind: Literal["llamacpp"] = "llamacpp"
    # "native" by default so that, unasked, llama.cpp serves the same weights as the other
    # engines (a .gguf as it is; an HF folder at its own precision): an engine comparison then
    # measures engines, not quantizations. q8_0 / q4_k_m are one flag away.
    quant: Literal["native", "f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m"] = Field(
        "native",
        description="GGUF weight type. native: a .gguf (or the one .gguf beside an HF folder) "
        "as it is, else the HF weights at their own precision (f32, or bf16 for 16-bit "
        "checkpoints); any other type converts/quantizes an HF folder (cached).",
    )
    n_gpu_layers: int = Field(-1, ge=-1, description="Layers offloaded to the GPU (-1: all).")
    n_ctx: int | None = Field(
        None,
        ge=16,
        description=f"KV cache cells in all, shared by the parallel sequences (n_ctx / parallel each: "
        f"a request's context window). Default: {CTX_PER_SEQUENCE} per sequence "
        f"({CTX_PER_SEQUENCE} x parallel), at most the model's trained context each.",
    )
    n_batch: int = Field(512, ge=1, description="Prompt tokens evaluated per decode call.")
    n_threads: int | None = Field(None, ge=1, description="CPU threads (default: llama.cpp's choice).")
    flash_attn: bool = Field(False, description="Use llama.cpp's flash attention.")
    # "auto" so that the precision asked for is the precision run: f32 weights with llama.cpp's
    # own f16 KV cache moved every loglikelihood by 0.02-0.03 nats from the f32 reference
    kv_cache_type: Literal["auto", "f16", "f32", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"] = Field(
        "auto",
        description="KV cache element type. auto: the weights' precision (f32 weights: f32, bf16: "
        "bf16, else f16, llama.cpp's default); quantized types need flash_attn.",
    )
    parallel: int | None = Field(
        None,
        ge=1,
        description="Sequences decoded at once (llama-server's --parallel): with N > 1 the "
        "requests share one batch per step (continuous batching) and one unified KV cache of "
        "n_ctx cells, n_ctx / N per sequence; with 1 they queue and the previous request's "
        f"prefix cache is reused. Default: {AUTO_PARALLEL}, as llama-server's; 1 with --speculative "
        "(speculation runs one sequence at a time here).",
    )

    cache_idle_slots: bool | None = Field(
        None,
        description="With parallel > 1: when a request starts, move the KV cells of sequences no "
        "request holds to a host-RAM prompt cache (llama-server's --cache-idle-slots), so running "
        "sequences attend over fewer cells; off: they stay in the KV cache. Default: on when llama.cpp "
        "runs on the CPU (idle cells there slowed a step 2.5x), off when layers are on a GPU (there the "
        "move, ~0.5 MB a token of a 7B model to RAM and back, cost more: 8 streams gave 2.1x one "
        "stream's tok/s with it, 3.6x without, on an H100).",
    )

    speculative: str = Field(
        "none",
        description="Speculative decoding: none; ngram (prompt lookup: the tokens that "
        "followed the context's last n-gram where it occurred before); or draft:<model> (a "
        "smaller GGUF or HF model with the target's vocabulary proposes greedily, in its own "
        "llama.cpp context). The drafts are verified in one batch; output identical to no "
        "speculation.",
    )
    num_speculative_tokens: int = Field(
        4, ge=1, le=64, description="Most tokens drafted per step."
    )
    ngram_min: int | None = Field(
        None, ge=1, description=f"ngram: shortest n-gram matched (default {NGRAM_MIN})."
    )
    ngram_max: int | None = Field(
        None, ge=1, description=f"ngram: longest n-gram matched (default {NGRAM_MAX})."
    )

    lora: Path | None = Field(
        None,
        description="A LoRA adapter served unmerged (llama.cpp applies it at load): a GGUF LoRA file, or "
        "a peft adapter folder, converted with llama.cpp's convert_lora_to_gguf.py (needs --model's HF folder).",
    )

    extra = "llamacpp"
    probe_module = "llama_cpp"
    server_module = "backends.llamacpp"  # its flags are built from this spec (backends/spec_cli.py)

    def capabilities(self) -> Capabilities:
        # All honoured for real by our server (backends/llamacpp/server.py): min_tokens and
        # ignore_eos mask end-of-generation tokens in the logits before llama.cpp's sampler runs
        # (the stock llama_cpp.server has no ignore_eos); repetition_penalty is llama.cpp's
        # penalty_repeat over prompt + output, as vLLM and transformers apply it.
        return Capabilities(
            sampling_params=list(ALL_SAMPLING_PARAMS),
            quantizations=["native", *QUANTS],
            speculative=list(SPECULATIVE_FORMS),
        )

    def check(self) -> None:
        spec, draft = parse_speculative(self.speculative)
        if draft is not None:
            path = Path(draft).expanduser()
            if looks_like_path(draft) and not path.exists():
                raise HyperbenchError(f"draft model path {draft} does not exist")
            if path.is_file():
                with path.open("rb") as f:
                    if f.read(4) != b"GGUF":
                        raise HyperbenchError(f"draft model {draft} is not a GGUF file")
            if path.is_dir() and not (path / "config.json").is_file():
                raise HyperbenchError(f"draft model {draft} is neither an HF model folder (no config.json) nor a .gguf")
            fields = type(self).model_fields
            for name in ("ngram_min", "ngram_max"):
                if getattr(self, name) != fields[name].default:
                    flag = "--" + name.replace("_", "-")
                    raise HyperbenchError(f"{flag} applies to --speculative ngram, not to a draft model")
        if spec == "none":
            # (a default passed along, as the container launchers pass every field, is no request)
            fields = type(self).model_fields
            for name in ("num_speculative_tokens", "ngram_min", "ngram_max"):
                if getattr(self, name) != fields[name].default:
                    flag = "--" + name.replace("_", "-")
                    raise HyperbenchError(
                        f"{flag} needs speculative decoding (--speculative ngram or draft:<model>)"
                    )
        lo, hi = self.ngram_range()
        if lo > hi:
            raise HyperbenchError(f"ngram_min={lo} must be <= ngram_max={hi}")
        if spec != "none" and self.num_speculative_tokens >= self.n_batch:
            raise HyperbenchError(
                f"num_speculative_tokens={self.num_speculative_tokens} needs n_batch > it "
                f"(n_batch={self.n_batch}: the drafts are verified in one batch)"
            )
        self.check_parallel(spec)
        if self.lora is not None:
            lora = Path(self.lora).expanduser()
            if lora.is_dir():
                from harness.lora import read_adapter

                read_adapter(lora)  # a peft LoRA folder (converted at start), or one line
            elif not lora.is_file():
                raise HyperbenchError(f"LoRA adapter {lora} does not exist")
        if self.kv_cache_type not in ("auto", "f16", "f32", "bf16") and not self.flash_attn:
            raise HyperbenchError(
                f"kv_cache_type={self.kv_cache_type} needs flash_attn=true "
                "(llama.cpp quantizes the V cache only with flash attention)"
            )

    def slots(self) -> int:
        """`parallel` as it runs: llama-server's default when unset, one with speculation."""
        if self.parallel is not None:
            return self.parallel
        return 1 if parse_speculative(self.speculative)[0] != "none" else AUTO_PARALLEL

    def cells(self) -> int:
        """`n_ctx` as it runs (the model's trained context may lower it at load)."""
        return self.n_ctx if self.n_ctx is not None else CTX_PER_SEQUENCE * self.slots()

    def check_parallel(self, spec: str) -> None:
        """parallel=N: every sequence needs room, and speculation runs one sequence at a time."""
        slots, cells = self.slots(), self.cells()
        if slots > 1 and spec != "none":
            raise HyperbenchError(
                f"parallel={slots}: speculative decoding runs one sequence at a time "
                "in this engine; use parallel=1 with --speculative"
            )
        if cells // slots < MIN_CTX_PER_SEQUENCE:
            raise HyperbenchError(
                f"n_ctx={cells} is too small for parallel={slots}: each sequence gets "
                f"n_ctx / parallel = {cells // slots} tokens (at least "
                f"{MIN_CTX_PER_SEQUENCE}); raise n_ctx or lower parallel"
            )

    def server_values(self) -> dict:
        """n-gram speculation: the n-gram range as it will run (the defaults resolved)."""
        values = super().server_values()
        if parse_speculative(self.speculative)[0] == "ngram":
            values["ngram_min"], values["ngram_max"] = self.ngram_range()
        return values

    def ngram_range(self) -> tuple[int, int]:
        lo, hi = self.ngram_min, self.ngram_max
        if lo is None and hi is None:
            return NGRAM_MIN, NGRAM_MAX
        if lo is None:
            return min(NGRAM_MIN, hi), hi
        if hi is None:
            return lo, max(NGRAM_MAX, lo)
        return lo, hi


def kv_type_for(weight_type: str) -> str:
    """The KV cache type that keeps the weights' precision (kv_cache_type=auto): f32 and bf16 as
    they are; f16 for f16 and for quantized weights (their activations are f32, and f16 is
    llama.cpp's default)."""
    return weight_type if weight_type in ("f32", "bf16") else "f16"


def parse_speculative(text: str) -> tuple[str, str | None]:
    """'none' | 'ngram' | 'draft:<model>' -> (method, model or None). Anything else: a one-line error."""

    def refusal(method: str) -> str:
        hint = " (EAGLE: --engine vllm)" if method in ("eagle", "eagle3") else ""
        return f"the llamacpp engine supports none, ngram or draft:<model>{hint}"

    return base_parse_speculative(text, SPECULATIVE_FORMS, refusal)


def draft_model(text: str) -> str | None:
    """The draft model of 'draft:<model>' (None for none / ngram); other text: a one-line error."""
    return parse_speculative(text)[1]
