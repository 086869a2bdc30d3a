"""Request bodies of the wire contract (OpenAI-compatible, with vLLM's extra sampling fields),
and how a raw body becomes one: JSON, valid Unicode, known fields, field types and ranges.

Nothing is ignored silently (a benchmark that thinks it set a parameter must not run without
it): an unknown field, a field of OpenAI's or vLLM's API that no engine here implements, and an
optional field the serving engine does not honour are each one 400 naming the field. A null
value passes (some clients send every field).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from backends.openai_server.errors import ApiError

MAX_LOGPROBS = 20

# fields of the models below that an engine may or may not honour (it lists those it does in
# ServedEngine.honours), with what to say when it does not; their defaults mean "off"
OPTIONAL = {
    "n": "it returns one choice per prompt",
    "presence_penalty": "use repetition_penalty",
    "frequency_penalty": "use repetition_penalty",
    "stop_token_ids": "use stop strings",
}

# what OpenAI's and vLLM's APIs have and no engine here does, with the value that means "off"
UNSUPPORTED = {
    "best_of": ("one sequence per choice", 1),
    "logit_bias": ("not implemented", {}),
    "suffix": ("infill is not implemented", ""),
    "use_beam_search": ("no beam search", False),
    "length_penalty": ("no beam search", 1.0),
    "tools": ("tool calling is not implemented", []),
    "tool_choice": ("tool calling is not implemented", "none"),
    "functions": ("tool calling is not implemented", []),
    "parallel_tool_calls": ("tool calling is not implemented", False),
    "response_format": ("structured output is not implemented", {"type": "text"}),
    "guided_json": ("structured output is not implemented", None),
    "guided_regex": ("structured output is not implemented", None),
    "guided_choice": ("structured output is not implemented", None),
    "guided_grammar": ("structured output is not implemented", None),
    "prompt_logprobs": ("use echo=true with logprobs on /v1/completions", None),
    "typical_p": ("not implemented", 1.0),
    "truncate_prompt_tokens": ("not implemented", None),
}

# what to say for fields whose type is a union (pydantic would list every branch's complaint)
UNION_HINTS = {
    "prompt": "must be a string, a list of strings, a list of token ids or a list of such lists",
    "stop": "must be a string or a list of strings",
    "messages": "each message needs a role and content: a string or a list of {type: text, text} parts",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's: usage on every chunk


class _Sampling(_Strict):
    """Fields shared by /v1/completions and /v1/chat/completions (None: the engine's default,
    which is vLLM's: every filter off)."""

    model: str | None = None
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, description="-1 or 0: off")
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=16)
    user: str | None = None  # bookkeeping only: no effect on generation
    return_tokens_as_token_ids: bool = False  # vLLM's: "token_id:123" instead of token text

    @model_validator(mode="after")
    def _stream_options(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options needs stream: true")
        return self

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False

    @model_validator(mode="after")
    def _prompt(self):
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be empty")
        return self

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: its text or its token ids."""
        p = self.prompt
        if isinstance(p, str) or isinstance(p[0], int):
            return [p]
        return list(p)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_only(self):
        if self.type != "text":
            raise ValueError(f"message content of type {self.type!r} is not supported")
        return self


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id...: passed to the template
    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text or "" for part in self.content)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _top_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def template_messages(self) -> list[dict[str, Any]]:
        """The messages as a chat template reads them: text content, extra fields kept."""
        out = []
        for m in self.messages:
            d = m.model_dump(exclude_none=True)
            d["content"] = m.text()
            out.append(d)
        return out


# ---------------------------------------------------------------------------- raw body -> request


def parse(raw: bytes, model_cls: type[_Sampling], honours: frozenset[str]):
    """A request of `model_cls` from a raw body, or an ApiError (400) that names the field."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    check_unicode(body, "")
    body = check_fields(body, model_cls, honours)
    try:
        return model_cls.model_validate(body)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise ApiError(message, param=param) from None


def check_unicode(value, where: str) -> None:
    """JSON may spell a lone UTF-16 surrogate ("\\ud800"), which no tokenizer can encode."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            code = ord(value[exc.start])
            raise ApiError(f"{where}: contains a lone UTF-16 surrogate (\\u{code:04x}), which is not valid "
                           "Unicode", param=where.split(".")[0] or None) from None  # fmt: skip
    elif isinstance(value, dict):
        for key, item in value.items():
            check_unicode(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_unicode(item, f"{where}.{i}")


def check_fields(body: dict, model_cls: type[_Sampling], honours: frozenset[str]) -> dict:
    """`body` without null unknown fields; a 400 for any other field that would be dropped."""
    fields = model_cls.model_fields
    out = {}
    for key, value in body.items():
        if key in fields:
            default = fields[key].default
            if key in OPTIONAL and key not in honours and value not in (None, default):
                raise ApiError(f"parameter '{key}' is not supported by this engine ({OPTIONAL[key]})", param=key)
            out[key] = value
        elif key in UNSUPPORTED:
            why, off = UNSUPPORTED[key]
            if value is not None and value != off:
                raise ApiError(f"parameter '{key}' is not supported ({why})", param=key)
        elif value is not None:
            raise ApiError(f"unknown parameter '{key}'", param=key)
    return out


def validation_message(exc: ValidationError) -> tuple[str, str | None]:
    parts, seen = [], set()
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else None
        if field in UNION_HINTS and err["type"] != "missing":
            if field not in seen:
                parts.append(f"{field}: {UNION_HINTS[field]}")
            seen.add(field)
            continue
        loc = ".".join(str(x) for x in err["loc"])
        msg = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    errors = exc.errors()
    param = str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else None
    return "; ".join(parts), param
