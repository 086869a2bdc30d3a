"""Engine registry. Adding an engine = one subpackage with a `spec.py` + one line here."""

from __future__ import annotations

import importlib

from harness.errors import HyperbenchError

ENGINES: dict[str, str] = {
    "hf": "backends.hf.spec:HFConfig",
    "llamacpp": "backends.llamacpp.spec:LlamaCppConfig",
    # llama.cpp's own C++ server (scripts/build_llama_server.sh), beside the llamacpp engine
    "llama-server": "backends.llama_server.spec:LlamaServerConfig",
    "vllm": "backends.vllm.spec:VLLMConfig",
    # a test engine with known timings (it says so in /v1/engine): client-overhead benchmarks
    "synthetic": "backends.synthetic.spec:SyntheticConfig",
}


def engine_class(kind: str):
    try:
        target = ENGINES[kind]
    except KeyError:
        raise HyperbenchError(
            f"unknown engine {kind!r}: choose one of {', '.join(sorted(ENGINES))}"
        ) from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def available_engines() -> dict[str, type]:
    """Engines whose spec module exists in this checkout (specs are light to import)."""
    out = {}
    for kind in ENGINES:
        try:
            out[kind] = engine_class(kind)
        except ModuleNotFoundError:
            continue
    return out
