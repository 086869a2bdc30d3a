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
from harness.bench.conversation import as_conversations
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


def synthetic_prompts(tokenizer, n: int, input_len: int, seed: int, prefix_len: int = 0) -> list[list[int]]:
    """`n` prompts of `input_len` ids; the first `prefix_len` the same in all (drawn from a
    stream of their own, so the rest of each prompt is what it is without a prefix)."""
    rng = np.random.default_rng(seed)
    special = set(tokenizer.all_special_ids)
    # keep ordinary tokens only, so engines do not see stray BOS/EOS/control ids
    vocab = np.array([i for i in range(len(tokenizer)) if i not in special])
    prefix = np.random.default_rng([seed, 4]).choice(vocab, size=min(prefix_len, input_len)).tolist()
    prompts = []
    for _ in range(n):
        ids = rng.choice(vocab, size=input_len).tolist()
        ids[:len(prefix)] = prefix
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
    """The requests of one sweep point (the same list is replayed at every point); with
    `turns` > 1, the turns of `num_requests` conversations (harness/bench/conversation.py)."""
    sampling = {"temperature": w.temperature, "seed": w.seed}
    n = w.total_requests()  # multi-turn: every turn's new user content is one prompt
    if w.dataset is not None:
        prompts: list = file_prompts(w.dataset, n, w.seed)
    else:
        if tokenizer is None:
            raise HyperbenchError(
                "synthetic prompts need the model's tokenizer: pass --tokenizer DIR or --dataset FILE"
            )
        prompts = synthetic_prompts(tokenizer, n, w.input_len, w.seed, w.prefix_len)
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
    return as_conversations(reqs, w.turns)


WARMUP_MAX_TOKENS = 4
# first characters for a warm-up text prompt, tried in turn: one no measured prompt starts with
_WARMUP_LEADS = "~#|^@%Zzq§Qx"
_WARMUP_WORDS = "warm up request not measured".split()


def warmup_requests(measured: list[GenRequest], n: int, seed: int) -> list[GenRequest]:
    """`n` warm-up requests shaped like the measured ones (same kind of prompt, about the same
    length) whose prompts share no prefix with any measured prompt: a token-id prompt starts with
    an id that starts none of them, a text prompt with a character that starts none of them. A
    warm-up with request 0's prompt filled the prefix cache that request 0 then hit (TTFT 46 ms
    against ~435 ms for the others on llama.cpp). What the engine adds in front of every prompt
    (BOS, a chat template) is shared whatever the client sends."""
    if n <= 0 or not measured:
        return []
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the measured draws stay as they were
    first = measured[0]
    out = []
    for i in range(n):
        if first.messages is not None:
            texts = [str(r.messages[-1].get("content") or "") for r in measured if r.messages]
            text = _warmup_text(i, texts, len(texts[0]))
            out.append(GenRequest(messages=[{"role": "user", "content": text}],
                                  max_tokens=WARMUP_MAX_TOKENS))
        elif isinstance(first.prompt, list):
            out.append(GenRequest(prompt=_warmup_ids(measured, rng), max_tokens=WARMUP_MAX_TOKENS))
        else:
            texts = [str(r.prompt or "") for r in measured]
            out.append(GenRequest(prompt=_warmup_text(i, texts, len(texts[0])),
                                  max_tokens=WARMUP_MAX_TOKENS))
    return out


def _warmup_ids(measured: list[GenRequest], rng) -> list[int]:
    """Ids drawn from those the measured prompts use (so every one is an ordinary token of the
    model), starting with the shortest run of ids that starts no measured prompt: one id where
    some id starts none of them; where every id does (thousands of prompts over a small
    vocabulary), two ids no prompt starts with, and so on. A one-token overlap saves at most one
    token of prefill (vLLM caches whole blocks of 16; llama.cpp reuses what matches)."""
    pool = sorted({t for r in measured for t in r.prompt})
    length = max(len(measured[0].prompt), 1)
    ids = rng.choice(pool, size=length).tolist()
    starts = {r.prompt[0] for r in measured if r.prompt}
    leads = [t for t in pool if t not in starts]
    if leads:
        ids[0] = leads[int(rng.integers(len(leads)))]
        return [int(t) for t in ids]
    for k in range(2, length + 1):
        taken = {tuple(r.prompt[:k]) for r in measured if len(r.prompt) >= k}
        for _ in range(64):  # a free k-prefix is nearly certain while len(pool)**k >> prompts
            lead = rng.choice(pool, size=k).tolist()
            if tuple(lead) not in taken:
                ids[:k] = lead
                return [int(t) for t in ids]
    raise HyperbenchError("cannot make a warm-up prompt that shares no prefix with the measured "
                          "prompts (they start with every run of tokens they use); use --warmup 0")


def _warmup_text(i: int, texts: list[str], length: int) -> str:
    starts = {t[:1] for t in texts} | {t.lstrip()[:1] for t in texts}
    lead = next((c for c in _WARMUP_LEADS if c not in starts), None)
    if lead is None:
        raise HyperbenchError("cannot make a warm-up prompt that shares no prefix with the "
                              "measured prompts; use --warmup 0")
    words = [f"{lead}{i}"]
    while len(" ".join(words)) < length:
        words.append(_WARMUP_WORDS[len(words) % len(_WARMUP_WORDS)])
    return " ".join(words)
