"""What the container launchers (docker, apptainer) share.

An engine image serves through `hyperbench serve ENGINE` (containers/serve.sh), so the engine's
own `server_command` is built *inside* the image, where the engine is installed: the harness
only turns the typed engine config back into the flags that `serve` derives from the same config
(harness/cli/options.py), with no per-engine knowledge here.
"""

from __future__ import annotations

import os
from pathlib import Path

def serve_args(engine, model_path: str) -> list[str]:
    """`hyperbench serve` flags reproducing `engine` for the already-resolved `model_path`.

    Every set value is passed, defaults included: an image of another hyperbench version then
    serves exactly this config (or refuses an option it does not know) instead of its own defaults.
    The API key is left out: it travels in the environment (HYPERBENCH_API_KEY), not in argv.
    """
    from backends.spec_cli import NOT_SETTINGS, spec_flags

    values = {name: getattr(engine, name) for name in type(engine).model_fields if name not in NOT_SETTINGS}
    return ["--model", model_path, "--served-model-name", engine.display_name(), *spec_flags(values)]


def image_name(kind: str, env_prefix: str = "HYPERBENCH") -> str:
    """The image of engine `kind`: $HYPERBENCH_IMAGE_<KIND>, else hyperbench/<kind>:$HYPERBENCH_TAG
    (the names and tag compose/docker-compose.yml builds)."""
    override = os.environ.get(f"{env_prefix}_IMAGE_{kind.upper()}")
    if override:
        return override
    return f"hyperbench/{kind}:{os.environ.get('HYPERBENCH_TAG') or 'latest'}"


def model_root(model_path: str) -> Path:
    """The folder to make visible for `model_path`: the path itself, except in a Hugging Face hub
    cache, whose snapshot folders hold symlinks into ../../blobs: there, the whole models--* repo."""
    path = Path(model_path)
    for parent in [path, *path.parents]:
        if parent.name.startswith("models--") and (parent / "snapshots").is_dir():
            return parent
    return path


def offline_env() -> dict[str, str]:
    """Environment every engine container gets: hub flags as the harness has them, never phone home."""
    env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env
