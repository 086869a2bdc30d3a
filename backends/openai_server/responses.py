"""Response bodies and server-sent events of /v1/completions and /v1/chat/completions.

A streamed response is `data: {chunk}` events and a final `data: [DONE]`. With
`stream_options.include_usage` the last chunk before [DONE] has no choices and the request's
usage; with vLLM's `continuous_usage_stats` every chunk carries the usage so far, so a client
can count tokens per chunk. An error after the stream opened is one in-band error event.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator

from backends.openai_server.errors import ApiError
from backends.openai_server.requests import StreamOptions

DONE = "data: [DONE]\n\n"


def sse(payload) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def completion_choice(index: int, text: str, logprobs=None, finish=None, stop_reason=None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish,
            "stop_reason": stop_reason}  # fmt: skip


def chat_choice(index: int, text: str, logprobs=None, finish=None, stop_reason=None) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
            "finish_reason": finish, "stop_reason": stop_reason}  # fmt: skip


def chat_delta(index: int, delta: dict, logprobs=None, finish=None) -> dict:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


ROLE_DELTA = {"role": "assistant", "content": ""}  # what a chat stream's first chunk says


class Envelope:
    """The id, object names, creation time and model of one response, and its bodies."""

    def __init__(self, chat: bool, model: str):
        prefix = "chatcmpl" if chat else "cmpl"
        self.id, self.created, self.model = f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model
        self.object = "chat.completion" if chat else "text_completion"
        self.chunk_object = "chat.completion.chunk" if chat else "text_completion"

    def body(self, choices: list[dict], usage_: dict) -> dict:
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": choices, "usage": usage_}  # fmt: skip

    def chunk(self, choices: list[dict], usage_: dict | None = None) -> dict:
        return {"id": self.id, "object": self.chunk_object, "created": self.created, "model": self.model,
                "choices": choices, "usage": usage_}  # fmt: skip


class StreamWriter:
    """The SSE events of one streamed response; `usage()` is the request's usage so far."""

    def __init__(self, envelope: Envelope, options: StreamOptions | None, usage_: Callable[[], dict]):
        self.envelope, self.usage = envelope, usage_
        self.include = bool(options and options.include_usage)
        self.continuous = bool(options and options.continuous_usage_stats)

    def chunk(self, *choices: dict) -> str:
        return sse(self.envelope.chunk(list(choices), self.usage() if self.continuous else None))

    def end(self, error: str | None = None) -> Iterator[str]:
        """The closing events: the error (the stream is open: in-band), or the usage chunk."""
        if error is not None:
            yield sse(ApiError(error, 500).body())
        elif self.include:
            yield sse(self.envelope.chunk([], self.usage()))
        yield DONE
