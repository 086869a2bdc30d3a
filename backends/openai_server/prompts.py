"""Checks of a tokenized prompt against the model, worded once for every engine."""

from __future__ import annotations

from backends.openai_server.errors import ApiError


def check_token_ids(ids: list[int], vocab_size: int) -> list[int]:
    if not ids:
        raise ApiError("the prompt is empty", param="prompt")
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise ApiError(f"token id {bad} is out of range (vocabulary size {vocab_size})", param="prompt")
    return ids


def max_new_tokens(n_prompt: int, requested: int | None, max_len: int, min_tokens: int = 0) -> int:
    """The tokens to generate at most: `requested`, or what the context leaves (None)."""
    room = max_len - n_prompt
    if requested is None:
        if room <= 0:
            raise ApiError(f"the prompt ({n_prompt} tokens) fills this model's context of {max_len}",
                           param="prompt")  # fmt: skip
        requested = room
    elif n_prompt + requested > max_len:
        raise ApiError(
            f"this model's maximum context length is {max_len} tokens, but {n_prompt} prompt"
            f" tokens + {requested} max_tokens were requested",
            param="max_tokens",
        )
    if min_tokens > requested:
        raise ApiError(f"min_tokens ({min_tokens}) must be <= max_tokens ({requested})", param="min_tokens")
    return requested


NO_CHAT_TEMPLATE = ApiError("this model has no chat template: use /v1/completions", param="messages")


def template_failed(exc: Exception) -> ApiError:
    """A chat template that refuses the messages (e.g. its own raise_exception) is the caller's."""
    return ApiError(f"the chat template failed: {exc}", param="messages")
