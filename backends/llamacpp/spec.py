"""Harness-side config of the llama.cpp engine (llama-cpp-python); no llama_cpp import here."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from backends.base import ALL_SAMPLING_PARAMS, Capabilities, EngineConfig, python_module_cmd
from harness.errors import HyperbenchError

# GGUF weight types we make from an HF folder (llama_model_quantize's names, lower case)
QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m")


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
    n_ctx: int = Field(4096, ge=16, description="Context window (KV cache) in tokens.")
    n_batch: int = Field(512, ge=1, description="Prompt tokens evaluated per decode call.")
    n_threads: int | None = Field(None, ge=1, description="CPU threads (default: llama.cpp's choice).")
    flash_attn: bool = Field(False, description="Use llama.cpp's flash attention.")
    kv_cache_type: Literal["f16", "f32", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"] = Field(
        "f16", description="KV cache element type (quantized types need flash_attn)."
    )
    parallel: int = Field(
        1,
        ge=1,
        description="Sequences decoded at once. llama-cpp-python's Llama holds one sequence, so "
        "only 1 is possible: concurrent requests queue (llama.cpp's C++ llama-server has slots; "
        "this engine is not it).",
    )

    extra = "llamacpp"
    probe_module = "llama_cpp"

    def capabilities(self) -> Capabilities:
        # All honoured for real by our server (backends/llamacpp/server.py): min_tokens and
        # ignore_eos mask end-of-generation tokens in the logits before llama.cpp's sampler runs
        # (the stock llama_cpp.server has no ignore_eos); repetition_penalty is llama.cpp's
        # penalty_repeat over prompt + output, as vLLM and transformers apply it.
        return Capabilities(
            sampling_params=list(ALL_SAMPLING_PARAMS),
            quantizations=["native", *QUANTS],
            speculative=[],
        )

    def check(self) -> None:
        if self.parallel != 1:
            raise HyperbenchError(
                f"parallel={self.parallel}: llama-cpp-python decodes one sequence at a time "
                "(requests queue); use parallel=1"
            )
        if self.kv_cache_type not in ("f16", "f32", "bf16") and not self.flash_attn:
            raise HyperbenchError(
                f"kv_cache_type={self.kv_cache_type} needs flash_attn=true "
                "(llama.cpp quantizes the V cache only with flash attention)"
            )

    def server_command(self, host: str, port: int, model_path: str) -> list[str]:
        args = [
            "--model", model_path,
            "--served-model-name", self.display_name(),
            "--host", host,
            "--port", str(port),
            "--quant", self.quant,
            "--n-gpu-layers", str(self.n_gpu_layers),
            "--n-ctx", str(self.n_ctx),
            "--n-batch", str(self.n_batch),
            "--kv-cache-type", self.kv_cache_type,
        ]  # fmt: skip
        if self.n_threads is not None:
            args += ["--n-threads", str(self.n_threads)]
        if self.flash_attn:
            args.append("--flash-attn")
        if self.api_key:
            args += ["--api-key", self.api_key]
        return python_module_cmd("backends.llamacpp", *args)
