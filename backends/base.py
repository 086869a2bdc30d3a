"""What every engine declares to the harness: its config (a pydantic model with a `kind`),
its capabilities, and how to start its OpenAI-compatible server.

This module is light on purpose (no torch, no engine imports): the harness imports it to build
the CLI and validate configs on machines where the engine itself is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
import time
from pathlib import Path
from collections.abc import Callable
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from backends.spec_cli import NOT_SETTINGS, spec_flags

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

    # the environment variable the server reads its API key from: the launchers pass the key
    # there, never on a command line (which `ps` shows to every user of the machine)
    api_key_env: ClassVar[str] = "HYPERBENCH_API_KEY"
    # False for an engine that loads no weights (the synthetic one): `model` is then only a name,
    # and bench builds its prompts with `prompt_tokenizer` (a built-in model) unless told otherwise
    needs_weights: ClassVar[bool] = True
    prompt_tokenizer: ClassVar[str | None] = None
    # name of the pip extra that installs this engine, and the module that proves it is there
    extra: ClassVar[str] = ""
    probe_module: ClassVar[str] = ""
    # fields that mean something only while speculating: reset to their defaults in the
    # speculation-off baseline (those of them an engine has; an engine with others extends it)
    speculative_fields: ClassVar[tuple[str, ...]] = (
        "num_speculative_tokens", "assistant_confidence_threshold", "ngram_min", "ngram_max",
    )  # fmt: skip

    # `python -m` module of an in-house server, whose parser is built from this spec
    # (backends/spec_cli.py); an engine that wraps another CLI (vLLM, llama-server) maps its
    # settings to that CLI in its own server_command instead
    server_module: ClassVar[str] = ""

    def capabilities(self) -> Capabilities:  # pragma: no cover - abstract
        raise NotImplementedError

    def server_command(self, host: str, port: int, model_path: str) -> list[str]:
        """argv that serves this engine on host:port for an already-resolved model path: the
        settings that differ from the spec's defaults (the server's parser has the same ones)."""
        if not self.server_module:
            raise NotImplementedError  # pragma: no cover
        defaults = {name: f.default for name, f in type(self).model_fields.items()}
        args = ["--model", model_path, "--served-model-name", self.display_name(), "--host", host,
                "--port", str(port), *spec_flags(self.server_values(), defaults)]  # fmt: skip
        if self.api_key:
            args += ["--api-key", self.api_key]
        return python_module_cmd(self.server_module, *args)

    def server_values(self) -> dict:
        """The engine settings as the server gets them: a draft model (speculative=draft:<model>)
        resolved to a local path here, where models are staged (the server stages none)."""
        values = {name: getattr(self, name) for name in type(self).model_fields if name not in NOT_SETTINGS}
        spec = values.get("speculative")
        if isinstance(spec, str) and spec.strip().startswith("draft:"):
            values["speculative"] = "draft:" + resolve_draft(spec.strip().partition(":")[2].strip())
        for name, value in values.items():  # a file or folder (a LoRA adapter): wherever the server runs from
            if isinstance(value, Path):
                values[name] = str(value.expanduser().resolve())
        return values

    def check(self) -> None:
        """Raise HyperbenchError for settings this engine cannot honour on this machine."""

    def server_env(self) -> dict[str, str]:
        """Environment variables the server needs on top of the harness's own."""
        return {}

    def speculates(self) -> bool:
        return str(getattr(self, "speculative", "none") or "none").strip() != "none"

    def spec_counters(self, base_url: str) -> dict | None:
        """Cumulative speculative-decoding counters of the running server ({drafts, draft_tokens,
        accepted_tokens, ...}); None when this config does not speculate. bench differences two
        snapshots around each sweep point with `speculative_delta`. Read from GET /v1/engine's
        `speculative.counters`, where the in-house servers keep them."""
        if not self.speculates():
            return None
        import httpx

        from harness.errors import EngineError

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        url = base_url.rstrip("/") + "/engine"
        try:
            r = httpx.get(url, timeout=10, headers=headers)
            r.raise_for_status()
            info = r.json()
        except (httpx.HTTPError, ValueError) as e:
            raise EngineError(f"cannot read speculative-decoding counters from {url}: {e}") from None
        spec = info.get("speculative") if isinstance(info, dict) else None
        if not spec or "counters" not in spec:
            raise EngineError(f"{url} reports no speculative decoding")
        return spec["counters"]

    def without_speculation(self) -> EngineConfig | None:
        """The same engine with speculative decoding off (what `bench` measures the speedup
        against); None when this config does not speculate."""
        if getattr(self, "speculative", "none") in ("none", None):
            return None
        fields = type(self).model_fields
        reset = {name: fields[name].default for name in self.speculative_fields if name in fields}
        return type(self)(**{**self.model_dump(), "speculative": "none", **reset})

    @classmethod
    def installed(cls) -> tuple[bool, str]:
        if importlib.util.find_spec(cls.probe_module) is None:
            return False, f"pip install 'hyperbench[{cls.extra}]'"
        return True, "installed"

    def display_name(self) -> str:
        return self.served_model_name or self.model


def parse_speculative(text: str, forms: list[str], refusal: Callable[[str], str]) -> tuple[str, str | None]:
    """'none' | 'ngram' | '<method>:<model>' -> (method, model or None), the one shape of every
    engine, for the forms an engine lists (its SPECULATIVE_FORMS, e.g. "ngram", "draft:<model>");
    anything else: a one-line error `speculative=TEXT: <refusal(method)>`."""
    text = text.strip()
    method, sep, model = text.partition(":")
    if not sep and (text == "none" or text in forms):
        return text, None
    if sep and model.strip() and f"{method}:<model>" in forms:
        return method, model.strip()
    from harness.errors import HyperbenchError

    raise HyperbenchError(f"speculative={text!r}: {refusal(method)}")
def exit_with_parent(poll_s: float = 1.0) -> None:
    """Stop this engine server (its whole process group) when the harness that started it is gone:
    the fallback to the launcher's parent-death signal. The launcher names itself in
    HYPERBENCH_PARENT_PID; a server started any other way has no such variable and is left alone."""
    try:
        parent = int(os.environ.get("HYPERBENCH_PARENT_PID", ""))
    except ValueError:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        group = os.getpgid(0)
        os.killpg(group, signal.SIGTERM)  # the server's own shutdown first (GPU memory, workers)
        time.sleep(10)
        os.killpg(group, signal.SIGKILL)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def api_key_arg_default() -> str | None:
    """argparse default of a server's --api-key: the key the launcher passed in the environment."""
    return os.environ.get(EngineConfig.api_key_env) or None


def python_module_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def looks_like_path(name: str) -> bool:
    """A model name meant as a local path (not a built-in name or hub id)."""
    return name[:1] in "./~" or name.endswith(".gguf")


def resolve_draft(name: str) -> str:
    """A draft model (built-in name, local folder or .gguf, hub id where the hub is reachable)
    -> a local path (its HF folder where it has one), staged like the target model."""
    from harness.models import resolve_model

    resolved = resolve_model(name)
    return str(resolved.path or resolved.gguf)


SPEC_COUNTERS = ("drafts", "draft_tokens", "accepted_tokens")


def speculative_delta(before: dict, after: dict) -> dict:
    """What happened between two `spec_counters` snapshots, for any engine: counts, acceptance
    rate (accepted / draft tokens), mean accepted length (1 + accepted / drafts: tokens emitted
    per target forward pass, the target's own next token included, as vLLM defines it) and the
    acceptance rate at each draft position where the engine reports it. Rates are None when
    nothing was drafted."""
    d = {key: after[key] - before[key] for key in SPEC_COUNTERS}
    drafts, drafted, accepted = d["drafts"], d["draft_tokens"], d["accepted_tokens"]
    pos_before = before.get("accepted_per_position") or []
    pos_after = after.get("accepted_per_position") or []
    per_pos = [a - (pos_before[i] if i < len(pos_before) else 0.0) for i, a in enumerate(pos_after)]
    return {
        "drafts": int(drafts),
        "draft_tokens": int(drafted),
        "accepted_tokens": int(accepted),
        "acceptance_rate": accepted / drafted if drafted > 0 else None,
        "mean_accepted_length": 1 + accepted / drafts if drafts > 0 else None,
        "acceptance_by_position": [n / drafts for n in per_pos] if drafts > 0 and per_pos else None,
    }
