"""The synthetic engine's config: its timing knobs, and how the process launcher starts it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from backends.base import ALL_SAMPLING_PARAMS, Capabilities, EngineConfig, python_module_cmd


class SyntheticConfig(EngineConfig):
    """The synthetic engine as an engine config, so the process launcher can start it."""

    kind: Literal["synthetic"] = "synthetic"
    model: str = Field("synthetic", description="Name served in /v1/models.")
    ttft_ms: float = Field(50.0, ge=0, description="Delay before the first token (ms).")
    itl_ms: float = Field(10.0, ge=0, description="Delay between tokens (ms).")
    jitter_ms: float = Field(0.0, ge=0, description="Add uniform [0, jitter] ms to each deadline.")
    fail_rate: float = Field(0.0, ge=0, le=1, description="Fraction of requests answered HTTP 500.")
    jitter_seed: int = Field(0, description="Seed of the synthetic jitter and failures.")
    capacity_rps: float = Field(0.0, ge=0, description=(
        "Requests it starts per second at most, one every 1/capacity s in arrival order (a queue "
        "that grows without bound above it: a known capacity for --find-max-rate); 0: no limit."))
    tokens_per_chunk: int = Field(1, ge=1, description=(
        "Tokens sent together in one chunk, when the last of them is due (a multi-token chunk)."))
    empty_text_every: int = Field(0, ge=0, description=(
        "Every Nth token (0, N, 2N, ...) decodes to empty text, as split multi-byte characters "
        "do; 0: none."))
    empty_chunks: Literal["send", "skip"] = Field("send", description=(
        "A chunk whose tokens all have empty text: send it with empty text, or skip it so its "
        "tokens ride in the next chunk (the last chunk is always sent)."))

    probe_module = "harness"
    needs_weights = False
    prompt_tokenizer = "tiny-llama"  # built offline in a second: exact prompt lengths, no download

    def capabilities(self) -> Capabilities:
        return Capabilities(sampling_params=list(ALL_SAMPLING_PARAMS), quantizations=["none"],
                            prompt_logprobs=False)

    def server_command(self, host: str, port: int, model_path: str = "") -> list[str]:
        args = ["--host", host, "--port", str(port)]
        for name in KNOBS:
            args += ["--" + name.replace("_", "-"), str(getattr(self, name))]
        if self.api_key:
            args += ["--api-key", self.api_key]
        return python_module_cmd("backends.synthetic", *args)


KNOBS = ("model", "ttft_ms", "itl_ms", "jitter_ms", "fail_rate", "jitter_seed", "capacity_rps", "tokens_per_chunk",
        "empty_text_every", "empty_chunks")
