"""Logprobs as OpenAI's legacy completions and chat formats write them (vLLM's conventions:
-inf clamped to LOGPROB_FLOOR so the JSON stays valid, the chosen token always among the top
ones, tokens named by text or, when asked, as "token_id:N")."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache

LOGPROB_FLOOR = -9999.0

# one token's logprobs: (token id, its logprob or None (a first prompt token), [(id, logprob)...]
# of the top ones, best first, or None)
Entry = tuple[int, float | None, list[tuple[int, float]] | None]


def clamp(lp: float) -> float:
    return max(lp, LOGPROB_FLOOR)


class TokenNames:
    """How tokens are named in logprobs: the engine's text of one token, or vLLM's
    "token_id:N" (`return_tokens_as_token_ids`); `bytes_of` gives the bytes chat logprobs list
    (default: the text's UTF-8)."""

    def __init__(self, text_of: Callable[[int], str], bytes_of: Callable[[int], bytes] | None = None,
                 as_ids: bool = False):  # fmt: skip
        self.text_of = text_of
        self.bytes_of = bytes_of or (lambda t: text_of(t).encode("utf-8", errors="replace"))
        self.as_ids = as_ids

    def __call__(self, token_id: int) -> str:
        return f"token_id:{token_id}" if self.as_ids else self.text_of(token_id)


def cached(text_of: Callable[[int], str]) -> Callable[[int], str]:
    return lru_cache(maxsize=65536)(text_of)


def completion_logprobs(entries: Iterable[Entry], offsets: list[int], name: TokenNames,
                        k: int | None = None) -> dict:  # fmt: skip
    """`logprobs` of a /v1/completions choice (or chunk); offsets are the engine's: character
    offsets of each token's text in the choice's text."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": list(offsets)}
    for token_id, lp, tops in entries:
        token = name(token_id)
        out["tokens"].append(token)
        if lp is None:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        out["token_logprobs"].append(clamp(lp))
        top = {name(i): clamp(v) for i, v in (tops or [])[:k]}
        top.setdefault(token, clamp(lp))
        out["top_logprobs"].append(top)
    return out


def chat_logprobs(entries: Iterable[Entry], name: TokenNames) -> dict:
    """`logprobs` of a /v1/chat/completions choice (or chunk)."""

    def item(token_id: int, lp: float) -> dict:
        return {"token": name(token_id), "logprob": clamp(lp), "bytes": list(name.bytes_of(token_id))}

    return {"content": [{**item(t, lp), "top_logprobs": [item(i, v) for i, v in tops or []]}
                        for t, lp, tops in entries]}  # fmt: skip
