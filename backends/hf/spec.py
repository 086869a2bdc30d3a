"""Harness-side config of the transformers engine (no torch import here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from backends.base import ALL_SAMPLING_PARAMS, Capabilities, EngineConfig, python_module_cmd
from harness.errors import HyperbenchError


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

    extra = "hf"
    probe_module = "transformers"

    def capabilities(self) -> Capabilities:
        return Capabilities(
            sampling_params=list(ALL_SAMPLING_PARAMS),
            quantizations=["none", "int8", "nf4"],
            speculative=[],
        )

    def check(self) -> None:
        if self.quant != "none":
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                raise HyperbenchError(
                    f"--quant {self.quant} needs bitsandbytes: pip install 'hyperbench[bnb]'"
                )

    def server_command(self, host: str, port: int, model_path: str) -> list[str]:
        args = [
            "--model", model_path,
            "--served-model-name", self.display_name(),
            "--host", host,
            "--port", str(port),
            "--quant", self.quant,
            "--attn", self.attn,
            "--dtype", self.dtype,
            "--device", self.device,
            "--max-batch-size", str(self.max_batch_size),
        ]  # fmt: skip
        if self.api_key:
            args += ["--api-key", self.api_key]
        return python_module_cmd("backends.hf", *args)
