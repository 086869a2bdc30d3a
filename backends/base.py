"""What every engine declares to the harness: its config (a pydantic model with a `kind`),
its capabilities, and how to start its OpenAI-compatible server.

This module is light on purpose (no torch, no engine imports): the harness imports it to build
the CLI and validate configs on machines where the engine itself is not installed.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

# Every sampling parameter of the wire contract that an engine may or may not honour.
ALL_SAMPLING_PARAMS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "seed",
    "stop",
    "min_tokens",
    "ignore_eos",
)


class Capabilities(BaseModel):
    sampling_params: list[str]
    quantizations: list[str]
    speculative: list[str] = []
    prompt_logprobs: bool = True  # `echo` + `logprobs` on /v1/completions
    chat: bool = True


class EngineConfig(BaseModel):
    """Fields shared by every engine. Subclasses add their own and set `kind`."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    model: str = Field(
        "smollm2-135m",
        description="Built-in model name (smollm2-135m, tiny-llama), HF id, or local folder/file.",
    )
    served_model_name: str | None = Field(
        None, description="Name the server reports in /v1/models (default: the model name)."
    )
    api_key: str | None = Field(None, description="Require this bearer key on every request.")

    # name of the pip extra that installs this engine, and the module that proves it is there
    extra: ClassVar[str] = ""
    probe_module: ClassVar[str] = ""

    def capabilities(self) -> Capabilities:  # pragma: no cover - abstract
        raise NotImplementedError

    def server_command(self, host: str, port: int, model_path: str) -> list[str]:
        """argv that serves this engine on host:port for an already-resolved model path."""
        raise NotImplementedError  # pragma: no cover

    def check(self) -> None:
        """Raise HyperbenchError for settings this engine cannot honour on this machine."""

    @classmethod
    def installed(cls) -> tuple[bool, str]:
        if importlib.util.find_spec(cls.probe_module) is None:
            return False, f"pip install 'hyperbench[{cls.extra}]'"
        return True, "installed"

    def display_name(self) -> str:
        return self.served_model_name or self.model


def python_module_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
