"""The llama.cpp engine behind the shared serving layer (backends/openai_server): `Engine`'s
generation shaped into completions, chats and their streams.

Why not the stock `llama_cpp.server` (0.3.36)? Against the wire contract it lacks token-id
prompts (`prompt: [1, 2, 3]` is a 422/500, so lm-eval's tokenized requests fail),
`stream_options.include_usage` (the harness takes token counts from usage, never by
re-tokenizing), `ignore_eos`, a working `min_tokens` (it rides on a custom sampler its own code
marks "probably broken"), `GET /v1/engine` and `/health`; its echo + logprobs needs the whole
model loaded with `logits_all=True` (slower prompt processing for every request) and shifts the
prompt logprobs by one token when the tokenizer adds no BOS; unknown parameters are ignored
silently; and its defaults (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat penalty
1.1) differ from every other engine's. So this app keeps llama-cpp-python's model, context,
tokenizer, chat template renderer and llama.cpp's sampler chain, and serves them through the
project's one serving layer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import numpy as np
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from jinja2 import TemplateError

from backends.llamacpp.engine import Engine, Result, Sampling, Step, Token
from backends.llamacpp.protocol import HONOURS, sampling
from backends.openai_server import app as openai_app
from backends.openai_server.logprobs import TokenNames, cached, chat_logprobs, completion_logprobs
from backends.openai_server.prompts import NO_CHAT_TEMPLATE, check_token_ids, max_new_tokens, template_failed
from backends.openai_server.requests import ChatRequest, CompletionRequest
from backends.openai_server.responses import (ROLE_DELTA, Envelope, StreamWriter, chat_choice, chat_delta,
                                              completion_choice, usage)  # fmt: skip


@dataclass
class Job:
    """One sequence to generate: a prompt (x n) of one request."""

    index: int
    ids: list[int]
    prompt_text: str
    sampling: Sampling
    result: Result = field(default_factory=lambda: Result(prompt=[]))
    steps: list[Step] = field(default_factory=list)


class LlamaServed(openai_app.ServedEngine):
    kind, honours = "llamacpp", HONOURS

    def __init__(self, engine: Engine, info: dict, served_name: str, aliases: tuple[str, ...] = ()):
        self.engine, self._info = engine, info
        self.served_model_name, self.aliases = served_name, aliases
        self.root, self.max_model_len = info["model_path"], engine.n_ctx
        self.counters = info.setdefault("counters", {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})
        self.chat_template = _chat_formatter(engine)
        self.token_text = cached(lambda t: engine.piece(t).decode("utf-8", errors="replace"))

    def info(self) -> dict:
        if self._info.get("speculative"):
            self._info["speculative"]["counters"] = self.engine.counters.as_dict()  # cumulative, live
        return self._info

    def gauges(self) -> dict[str, float]:
        batcher = self.engine.batcher  # --parallel N; one at a time (N = 1): requests in flight only
        if batcher is None:
            return {}
        return {"vllm:num_requests_running": len(batcher.running), "vllm:num_requests_waiting": len(batcher.waiting)}

    def names(self, req) -> TokenNames:
        return TokenNames(self.token_text, self.engine.piece, req.return_tokens_as_token_ids)

    async def completions(self, req: CompletionRequest, request):
        engine, jobs, name = self.engine, _completion_jobs(self.engine, req), self.names(req)
        envelope = Envelope(chat=False, model=self.served_model_name)
        if req.stream:
            return _stream(engine, jobs, _CompletionStream(engine, req, name, envelope, jobs), self.counters)
        await anyio.to_thread.run_sync(_run_all, engine, jobs, None, lambda: False)
        _count(self.counters, jobs)
        return envelope.body([_completion_choice(engine, req, job, name) for job in jobs], _usage(jobs))

    async def chat(self, req: ChatRequest, request):
        if self.chat_template is None:
            raise NO_CHAT_TEMPLATE
        engine, jobs, name = self.engine, _chat_jobs(self.engine, req, self.chat_template), self.names(req)
        envelope = Envelope(chat=True, model=self.served_model_name)
        if req.stream:
            return _stream(engine, jobs, _ChatStream(req, name, envelope, jobs), self.counters)
        await anyio.to_thread.run_sync(_run_all, engine, jobs, None, lambda: False)
        _count(self.counters, jobs)
        choices = []
        for job in jobs:
            lp = chat_logprobs(_entries(s.token for s in job.steps), name) if req.logprobs else None
            choices.append(chat_choice(job.index, job.result.text, lp, job.result.finish_reason))
        return envelope.body(choices, _usage(jobs))


def create_app(engine: Engine, info: dict, served_name: str, api_key: str | None = None,
               aliases: tuple[str, ...] = ()) -> FastAPI:
    return openai_app.create_app(LlamaServed(engine, info, served_name, aliases), api_key)


# ---------------------------------------------------------------------------- requests -> jobs


def _completion_jobs(engine: Engine, req: CompletionRequest) -> list[Job]:
    jobs = []
    for p in req.prompts():
        if isinstance(p, str):
            ids, text = check_token_ids(engine.tokenize(p, add_bos=True), engine.n_vocab), p
        else:
            ids = check_token_ids(list(p), engine.n_vocab)
            text = b"".join(engine.prompt_pieces(ids)).decode("utf-8", errors="replace")
        max_tokens = max_new_tokens(len(ids), req.max_tokens, engine.n_ctx, req.min_tokens)
        for _ in range(req.n):
            s = sampling(req, max_tokens, req.logprobs, req.echo, len(jobs) % req.n)
            jobs.append(Job(len(jobs), ids, text, s))
    return jobs


def _chat_formatter(engine: Engine):
    template = engine.llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def token_text(t: int) -> str:
        return engine.llm._model.token_get_text(t) if t != -1 else ""

    eos, bos = token_text(engine.llm.token_eos()), token_text(engine.bos_id)
    return lambda add_gen: Jinja2ChatFormatter(template, eos, bos, add_generation_prompt=add_gen)


def _chat_jobs(engine: Engine, req: ChatRequest, formatter) -> list[Job]:
    try:
        render = formatter(req.add_generation_prompt)
        rendered = render(messages=req.template_messages(), **(req.chat_template_kwargs or {})).prompt
    except (ValueError, TemplateError) as e:  # incl. the template's own raise_exception(...)
        raise template_failed(e) from None
    ids = engine.tokenize(rendered, add_bos=False)  # the template writes BOS itself if it wants one
    check_token_ids(ids, engine.n_vocab)
    max_tokens = max_new_tokens(len(ids), req.limit(), engine.n_ctx, req.min_tokens)
    top = (req.top_logprobs or 0) if req.logprobs else None
    return [Job(i, ids, rendered, sampling(req, max_tokens, top, False, i)) for i in range(req.n)]


# ---------------------------------------------------------------------------- running


def _run_all(engine: Engine, jobs: list[Job], emit: Callable | None, cancelled: Callable[[], bool]):
    """Generate every job in turn (in a worker thread). `emit(kind, job, step)` streams."""
    for job in jobs:
        started = False
        gen = engine.generate(job.ids, job.sampling, job.result, cancelled)
        try:
            for step in gen:
                if not started and emit:
                    emit("start", job, None)
                started = True
                job.steps.append(step)
                if emit:
                    emit("step", job, step)
        finally:
            gen.close()  # releases the engine even if the client went away
        if emit:
            if not started:
                emit("start", job, None)
            emit("end", job, None)
        if cancelled():
            return


def _usage(jobs: list[Job], completion_tokens: int | None = None) -> dict:
    """Usage of the jobs; `completion_tokens`: the tokens a stream has sent so far (the worker
    thread is ahead of the stream, so its live count is not what the client has seen)."""
    seen, prompt = set(), 0
    for job in jobs:  # n > 1 samples of one prompt: its tokens count once, as in vLLM
        key = id(job.ids)
        if key not in seen:
            seen.add(key)
            prompt += len(job.ids)
    if completion_tokens is None:
        completion_tokens = sum(j.result.completion_tokens for j in jobs)
    return usage(prompt, completion_tokens)


def _count(counters: dict, jobs: list[Job]) -> None:
    u = _usage(jobs)
    counters["requests"] += 1
    counters["prompt_tokens"] += u["prompt_tokens"]
    counters["completion_tokens"] += u["completion_tokens"]


def _entries(tokens) -> list:
    return [(t.id, t.logprob, t.top) for t in tokens]


def char_offsets(pieces: list[bytes], start: int = 0) -> list[int]:
    """Character offset at which each piece starts (UTF-8: count the bytes that begin a char)."""
    if not pieces:
        return []
    joined = np.frombuffer(b"".join(pieces), dtype=np.uint8)
    starts_char = np.concatenate([[0], np.cumsum((joined & 0xC0) != 0x80)])
    byte_pos = np.concatenate([[0], np.cumsum([len(p) for p in pieces])[:-1]])
    return [start + int(c) for c in starts_char[byte_pos]]


def n_chars(piece: bytes) -> int:
    return sum(1 for b in piece if b & 0xC0 != 0x80)


def _completion_choice(engine: Engine, req: CompletionRequest, job: Job, name: TokenNames) -> dict:
    text = (job.prompt_text if req.echo else "") + job.result.text
    lp = None
    if req.logprobs is not None:
        tokens: list[Token] = []
        offsets: list[int] = []
        if req.echo:
            tokens += job.result.prompt
            offsets += char_offsets(engine.prompt_pieces(job.ids))
        gen = [s.token for s in job.steps]
        tokens += gen
        offsets += char_offsets([t.piece for t in gen], len(job.prompt_text) if req.echo else 0)
        lp = completion_logprobs(_entries(tokens), offsets, name, req.logprobs)
    return completion_choice(job.index, text, lp, job.result.finish_reason)


# ---------------------------------------------------------------------------- streaming


def _stream(engine: Engine, jobs: list[Job], fmt, counters: dict) -> StreamingResponse:
    """Server-sent events: a worker thread generates, the event loop sends as tokens come."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()

    def emit(kind, job, step):
        loop.call_soon_threadsafe(queue.put_nowait, (kind, job, step))

    def work():
        try:
            _run_all(engine, jobs, emit, cancel.is_set)
            loop.call_soon_threadsafe(queue.put_nowait, ("done", None, None))
        except Exception as e:  # noqa: BLE001 - reported in-band, the stream is already open
            loop.call_soon_threadsafe(queue.put_nowait, ("error", None, e))

    async def events():
        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        error = None
        try:
            while True:
                kind, job, step = await queue.get()
                if kind == "done":
                    break
                if kind == "error":
                    error = str(step)
                    break
                for chunk in fmt.chunks(kind, job, step):
                    yield chunk
            _count(counters, jobs)
            for event in fmt.out.end(error):
                yield event
        finally:
            cancel.set()  # client gone (or finished): the worker stops at its next token

    return StreamingResponse(events(), media_type="text/event-stream")


class _Stream:
    """Chunks of one streamed request; counts the tokens it has sent, for usage chunks."""

    def __init__(self, req, name: TokenNames, envelope: Envelope, jobs: list[Job]):
        self.req, self.name, self.sent = req, name, 0
        self.out = StreamWriter(envelope, req.stream_options, lambda: _usage(jobs, self.sent))

    def chunks(self, kind, job, step):
        self.sent += kind == "step"
        return self.choice_chunks(kind, job, step)


class _CompletionStream(_Stream):
    def __init__(self, engine: Engine, req: CompletionRequest, name: TokenNames, envelope: Envelope, jobs):
        super().__init__(req, name, envelope, jobs)
        self.engine = engine
        self.offset: dict[int, int] = {}  # choice -> characters sent so far

    def choice_chunks(self, kind, job, step):
        k = self.req.logprobs
        if kind == "start":
            self.offset[job.index] = 0
            if self.req.echo:
                lp = None
                if k is not None:
                    offsets = char_offsets(self.engine.prompt_pieces(job.ids))
                    lp = completion_logprobs(_entries(job.result.prompt), offsets, self.name, k)
                self.offset[job.index] = len(job.prompt_text)
                yield self.out.chunk(completion_choice(job.index, job.prompt_text, lp))
        elif kind == "step":
            # one chunk per token, even when its text is held back: clients time token arrivals
            lp = None
            if k is not None:
                lp = completion_logprobs(_entries([step.token]), [self.offset[job.index]], self.name, k)
            self.offset[job.index] += n_chars(step.token.piece)
            yield self.out.chunk(completion_choice(job.index, step.text, lp))
        else:
            yield self.out.chunk(completion_choice(job.index, "", None, job.result.finish_reason))


class _ChatStream(_Stream):
    def choice_chunks(self, kind, job, step):
        if kind == "start":
            yield self.out.chunk(chat_delta(job.index, ROLE_DELTA))
        elif kind == "step":
            lp = chat_logprobs(_entries([step.token]), self.name) if self.req.logprobs else None
            yield self.out.chunk(chat_delta(job.index, {"content": step.text}, lp))
        else:
            yield self.out.chunk(chat_delta(job.index, {}, None, job.result.finish_reason))
