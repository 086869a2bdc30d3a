"""Workloads: synthetic prompts of exact token lengths, or prompts from a JSONL/ShareGPT file.

Synthetic prompts are sent as token ids (the wire contract accepts them), so every engine sees
exactly `input_len` prompt tokens, as vLLM's random dataset intends. Everything is seeded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from harness.adapter import GenRequest
from harness.config import Workload
from harness.errors import HyperbenchError, missing_extra


def load_tokenizer(path: str | Path):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise missing_extra("hf", "transformers (needed for synthetic prompts)") from None
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # transformers raises many types for a bad folder
        raise HyperbenchError(f"cannot load a tokenizer from {path}: {type(e).__name__}") from None


def synthetic_prompts(tokenizer, n: int, input_len: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    special = set(tokenizer.all_special_ids)
    # keep ordinary tokens only, so engines do not see stray BOS/EOS/control ids
    vocab = np.array([i for i in range(len(tokenizer)) if i not in special])
    prompts = []
    for _ in range(n):
        ids = rng.choice(vocab, size=input_len).tolist()
        prompts.append([int(i) for i in ids])
    return prompts


def file_prompts(path: Path, n: int, seed: int) -> list[str]:
    """`n` prompts drawn (seeded) from a JSONL file, one JSON object a line, or a JSON array of
    such objects (the ShareGPT dataset as published, e.g. ShareGPT_V3_unfiltered_cleaned_split.json)."""
    rows = [_prompt_of(row, where) for where, row in _read_rows(Path(path))]
    if not rows:
        raise HyperbenchError(f"dataset {path} has no prompts")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(rows), size=n, replace=n > len(rows))
    return [rows[i] for i in idx]


def _read_rows(path: Path):
    """(where, row) pairs: "FILE:LINE" for JSONL, "FILE: item I" for a JSON array."""
    if not path.is_file():
        raise HyperbenchError(f"dataset {path} does not exist")
    with open(path) as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise HyperbenchError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        return [(f"{path}: item {i}", row) for i, row in enumerate(items)]
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((f"{path}:{lineno}", json.loads(line)))
        except json.JSONDecodeError:
            raise HyperbenchError(f"{path}:{lineno}: not valid JSON") from None
    return rows


def _prompt_of(row, where: str) -> str:
    if isinstance(row, dict):
        if isinstance(row.get("prompt"), str):
            return row["prompt"]
        for key, role_key, text_key, user in (
            ("conversations", "from", "value", ("human", "user")),
            ("messages", "role", "content", ("user",)),
        ):
            turns = row.get(key)
            if isinstance(turns, list):
                for t in turns:
                    if isinstance(t, dict) and t.get(role_key) in user and isinstance(t.get(text_key), str):
                        return t[text_key]
    raise HyperbenchError(
        f"{where}: expected an object with a 'prompt' string, ShareGPT 'conversations' or chat "
        "'messages' with a user turn"
    )


def build_requests(w: Workload, tokenizer=None) -> list[GenRequest]:
    """The requests of one sweep point (the same list is replayed at every point)."""
    sampling = {"temperature": w.temperature, "seed": w.seed}
    if w.dataset is not None:
        prompts: list = file_prompts(w.dataset, w.num_requests, w.seed)
    else:
        if tokenizer is None:
            raise HyperbenchError(
                "synthetic prompts need the model's tokenizer: pass --tokenizer DIR or --dataset FILE"
            )
        prompts = synthetic_prompts(tokenizer, w.num_requests, w.input_len, w.seed)
        if w.chat:
            prompts = [tokenizer.decode(p) for p in prompts]
    reqs = []
    for p in prompts:
        if w.chat:
            reqs.append(GenRequest(messages=[{"role": "user", "content": p}], max_tokens=w.output_len,
                                   sampling=dict(sampling), fixed_output=w.fixed_output))
        else:
            reqs.append(GenRequest(prompt=p, max_tokens=w.output_len, sampling=dict(sampling),
                                   fixed_output=w.fixed_output))
    return reqs
