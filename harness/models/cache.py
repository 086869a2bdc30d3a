"""The model cache: where built models land, built once, atomically and under a file lock, so
parallel test workers or two CLI runs never see a half-written model; and the finishing
touches that make a saved HF folder load alike in transformers 4.x and 5.x."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ResolvedModel:
    name: str
    path: Path | None  # HF folder (config.json, weights, tokenizer); None when only a GGUF exists
    gguf: Path | None  # a GGUF of the same weights, where we have one
    builtin: bool


def cache_dir() -> Path:
    return Path(os.environ.get("HYPERBENCH_CACHE") or Path.home() / ".cache" / "hyperbench")


def cached_build(target: Path, build: Callable[[Path], None]) -> Path:
    """Return `target`, building it first (into a temp dir, renamed at the end) if missing."""
    if (target / "config.json").is_file():  # fast path: a finished build, no lock needed
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if (target / "config.json").is_file():  # another process built it while we waited
            return target
        # next to the target, so os.replace is a rename on one filesystem
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            build(tmp)
            _share(tmp)
            if target.exists():  # leftover of an older layout: it has no config.json
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _share(folder: Path) -> None:
    """mkdtemp (and transformers' own temp files) are private (0700/0600), but a cache is also
    read by containers running as other users: make the tree world-readable."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def edit_json(file: Path, drop: tuple[str, ...] = (), **updates: object) -> None:
    data = json.loads(file.read_text())
    for key in drop:
        data.pop(key, None)
    data.update(updates)
    file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def finish_hf_folder(folder: Path, rope_theta: float, **tokenizer_updates: object) -> None:
    """Make a saved folder load the same way in transformers 4.x and 5.x, and in other engines.

    - transformers 5 nests rope_theta in rope_parameters; 4.x (and 4.x-based engines) read it
      top-level and silently default to 10000 when it is missing.
    - tokenizer_class: the generic fast tokenizer loads tokenizer.json verbatim in 4.x and 5.x;
      5.x would rebuild e.g. LlamaTokenizer's pipeline from its own defaults, and 4.x does not
      know 5.x's "TokenizersBackend".
    """
    edit_json(folder / "config.json", drop=("_model_name_or_path",), rope_theta=rope_theta)
    edit_json(
        folder / "tokenizer_config.json",
        drop=("backend", "is_local", "local_files_only"),  # load-time state, not config
        tokenizer_class="PreTrainedTokenizerFast",
        **tokenizer_updates,
    )
