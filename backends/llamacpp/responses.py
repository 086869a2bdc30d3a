"""OpenAI-shaped response pieces: completion/chat choices, logprobs, usage, errors.

Text offsets are character offsets into the `text` of the choice they belong to (with `echo`,
the prompt text followed by the completion), computed from each token's bytes; the first
prompt token has null logprobs, as in vLLM and OpenAI.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
from fastapi.responses import JSONResponse

from backends.llamacpp.engine import Engine, Token


def error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None):
    body = {"error": {"message": message, "type": type_, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def char_offsets(pieces: list[bytes], start: int = 0) -> list[int]:
    """Character offset at which each piece starts (UTF-8: count the bytes that begin a char)."""
    if not pieces:
        return []
    joined = np.frombuffer(b"".join(pieces), dtype=np.uint8)
    starts_char = np.concatenate([[0], np.cumsum((joined & 0xC0) != 0x80)])
    byte_pos = np.concatenate([[0], np.cumsum([len(p) for p in pieces])[:-1]])
    return [start + int(c) for c in starts_char[byte_pos]]


class TokenText:
    """How tokens are named in logprobs: their text, or vLLM's "token_id:N"."""

    def __init__(self, engine: Engine, as_ids: bool):
        self.engine = engine
        self.as_ids = as_ids

    def __call__(self, token_id: int) -> str:
        if self.as_ids:
            return f"token_id:{token_id}"
        return self.engine.piece(token_id).decode("utf-8", errors="replace")


def n_chars(piece: bytes) -> int:
    return sum(1 for b in piece if b & 0xC0 != 0x80)


def completion_logprobs(tokens: list[Token], offsets: list[int], name: TokenText, k: int) -> dict:
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": offsets}
    for tok in tokens:
        out["tokens"].append(name(tok.id))
        out["token_logprobs"].append(tok.logprob)
        if tok.logprob is None:
            out["top_logprobs"].append(None)
            continue
        top = {name(i): lp for i, lp in (tok.top or [])[:k]}
        top.setdefault(name(tok.id), tok.logprob)  # the chosen token is always listed
        out["top_logprobs"].append(top)
    return out


def chat_logprobs(tokens: list[Token], name: TokenText) -> dict:
    def entry(token_id: int, lp: float) -> dict:
        text = name(token_id)
        return {"token": text, "logprob": lp, "bytes": list(name.engine.piece(token_id))}

    return {
        "content": [
            {**entry(t.id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top or []]}
            for t in tokens
        ]
    }
