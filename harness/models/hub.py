"""The Hugging Face hub: whether it is offline or reachable, and downloading a snapshot (one
clear line when it fails)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from harness.errors import HyperbenchError
from harness.models.cache import ResolvedModel


def hub_offline() -> bool:
    # read at call time: huggingface_hub reads it once at import
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any((f or "").upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


def hub_reachable() -> bool:
    """One quick request, because huggingface_hub retries for ~50 s before giving up."""
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        httpx.head(endpoint, timeout=5)  # any HTTP answer will do; honours proxy settings
    except httpx.HTTPError:
        return False
    return True


_HUB_SKIP = ["*.gguf", "*.onnx", "onnx/*", "*.h5", "*.msgpack", "*.ot", "original/*", "*.pth"]


def download_from_hub(repo_id: str, local_dir: Path | None = None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_dir=local_dir, ignore_patterns=_HUB_SKIP))
    except Exception as err:  # hub errors are many classes; the user needs one line either way
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        msg = f"could not download model '{repo_id}' from the hub: {first}"
        raise HyperbenchError(msg) from err


def from_hub(repo_id: str, builtins: Iterable[str]) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:  # staged earlier into the HF cache (`hf download` on a login node): works offline
        path = snapshot_download(repo_id, local_files_only=True)
        return ResolvedModel(name=repo_id, path=Path(path), gguf=None, builtin=False)
    except (LocalEntryNotFoundError, HFValidationError):
        pass
    if hub_offline() or not hub_reachable():
        raise HyperbenchError(
            f"model '{repo_id}' is not a built-in ({', '.join(builtins)}), "
            "not a local path, and the hub is offline"
        )
    return ResolvedModel(name=repo_id, path=download_from_hub(repo_id), gguf=None, builtin=False)
