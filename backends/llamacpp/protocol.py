"""Request bodies of the wire contract, as this engine accepts them.

Every field here is honoured. Known OpenAI/vLLM fields this engine cannot honour, and unknown
fields, are refused with a 400 that names them (a null value is let through: some clients
send every field), so a benchmark never runs with a setting silently dropped.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backends.llamacpp.engine import Sampling

# what OpenAI's and vLLM's APIs have and this engine does not do, with the reason
UNSUPPORTED = {
    "best_of": "llama-cpp-python decodes one sequence at a time",
    "logit_bias": "not implemented by this engine",
    "suffix": "infill is not implemented by this engine",
    "use_beam_search": "llama.cpp has no beam search",
    "tools": "tool calling is not implemented by this engine",
    "tool_choice": "tool calling is not implemented by this engine",
    "functions": "tool calling is not implemented by this engine",
    "response_format": "structured output is not implemented by this engine",
    "guided_json": "structured output is not implemented by this engine",
    "guided_regex": "structured output is not implemented by this engine",
    "guided_choice": "structured output is not implemented by this engine",
    "guided_grammar": "structured output is not implemented by this engine",
    "prompt_logprobs": "use echo=true with logprobs on /v1/completions",
    "stop_token_ids": "not implemented by this engine",
    "length_penalty": "llama.cpp has no beam search",
    "typical_p": "not implemented by this engine",
    "truncate_prompt_tokens": "not implemented by this engine",
    "parallel_tool_calls": "tool calling is not implemented by this engine",
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1, description="-1 or 0: off")
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=16)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    user: str | None = None  # bookkeeping only: no effect on generation
    return_tokens_as_token_ids: bool = False  # vLLM's: "token_id:123" instead of token text

    @model_validator(mode="after")
    def _refuse_unknown(self):
        for key, value in (self.model_extra or {}).items():
            if value is None:
                continue
            why = UNSUPPORTED.get(key, "unknown parameter")
            raise ValueError(f"parameter '{key}' is not supported by the llamacpp engine ({why})")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def sampling(self, max_tokens: int, logprobs: int | None, echo: bool, index: int) -> Sampling:
        seed = self.seed
        if seed is not None and index:
            seed += index  # n > 1 with a seed: different but reproducible samples
        return Sampling(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k, min_p=self.min_p, repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            seed=seed, stop=self.stops(), min_tokens=self.min_tokens, ignore_eos=self.ignore_eos,
            logprobs=logprobs, prompt_logprobs=echo and logprobs is not None,
        )  # fmt: skip


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [p]  # one token-id prompt
        if not p:
            raise ValueError("prompt is empty")
        return list(p)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id...: passed to the template
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise ValueError(f"message content of type {part.get('type')!r} is not supported")
            parts.append(part.get("text", ""))
        return "".join(parts)


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None

    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def template_messages(self) -> list[dict[str, Any]]:
        out = []
        for m in self.messages:
            d = m.model_dump(exclude_none=True)
            d["content"] = m.text()
            out.append(d)
        return out

