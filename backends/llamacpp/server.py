"""The OpenAI-compatible server of the llama.cpp engine: a thin FastAPI app over `Engine`.

Why not the stock `llama_cpp.server` (0.3.36)? Against the wire contract it lacks token-id
prompts (`prompt: [1, 2, 3]` is a 422/500, so lm-eval's tokenized requests fail),
`stream_options.include_usage` (the harness takes token counts from usage, never by
re-tokenizing), `ignore_eos`, a working `min_tokens` (it rides on a custom sampler its own code
marks "probably broken"), `GET /v1/engine` and `/health`; its echo + logprobs needs the whole
model loaded with `logits_all=True` (slower prompt processing for every request) and shifts the
prompt logprobs by one token when the tokenizer adds no BOS; unknown parameters are ignored
silently; and its defaults (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat penalty
1.1) differ from every other engine's. So this app keeps llama-cpp-python's model, context,
tokenizer, chat template renderer and llama.cpp's sampler chain, and replaces the serving layer.
"""

from __future__ import annotations

import asyncio
import json
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from fastapi import FastAPI, Request
from jinja2 import TemplateError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from backends.llamacpp import responses as R
from backends.llamacpp.engine import Engine, Result, Sampling, Step
from backends.llamacpp.protocol import ChatRequest, CompletionRequest


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.type = status, type_


@dataclass
class Job:
    """One sequence to generate: a prompt (x n) of one request."""

    index: int
    ids: list[int]
    prompt_text: str
    sampling: Sampling
    result: Result = field(default_factory=lambda: Result(prompt=[]))
    steps: list[Step] = field(default_factory=list)


def create_app(engine: Engine, info: dict, served_name: str, api_key: str | None = None,
               aliases: tuple[str, ...] = ()) -> FastAPI:
    app = FastAPI(title="hyperbench llama.cpp engine", docs_url=None, redoc_url=None)
    names = {served_name, *aliases}
    counters = info.setdefault("counters", {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})
    chat_template = _chat_formatter(engine)

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1"):
            if request.headers.get("authorization") != f"Bearer {api_key}":
                return R.error(401, "missing or wrong API key (Authorization: Bearer ...)",
                               "authentication_error")
        return await call_next(request)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        traceback.print_exception(exc)  # into the engine log; the client gets one JSON line
        return R.error(500, f"{type(exc).__name__}: {exc}", "server_error")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        card = {"id": served_name, "object": "model", "created": R.now(), "owned_by": "hyperbench",
                "root": info["model_path"], "max_model_len": engine.n_ctx}  # fmt: skip
        return {"object": "list", "data": [card]}

    @app.get("/v1/engine")
    async def engine_info():
        if info.get("speculative"):
            info["speculative"]["counters"] = engine.counters.as_dict()  # cumulative, live
        return info

    @app.post("/v1/completions")
    async def completions(request: Request):
        try:
            req = await _parse(request, CompletionRequest, names)
            jobs = _completion_jobs(engine, req)
        except BadRequest as e:
            return R.error(e.status, str(e), e.type)
        name = R.TokenText(engine, req.return_tokens_as_token_ids)
        if req.stream:
            return _stream(engine, jobs, _CompletionStream(engine, req, name, served_name), counters)
        await anyio.to_thread.run_sync(_run_all, engine, jobs, None, lambda: False)
        _count(counters, jobs)
        choices = [_completion_choice(engine, req, job, name) for job in jobs]
        return {"id": R.new_id("cmpl"), "object": "text_completion", "created": R.now(),
                "model": served_name, "choices": choices, "usage": _usage(jobs)}  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            req = await _parse(request, ChatRequest, names)
            if chat_template is None:
                raise BadRequest("this model has no chat template (use /v1/completions)")
            jobs = _chat_jobs(engine, req, chat_template)
        except BadRequest as e:
            return R.error(e.status, str(e), e.type)
        name = R.TokenText(engine, req.return_tokens_as_token_ids)
        if req.stream:
            return _stream(engine, jobs, _ChatStream(req, name, served_name), counters)
        await anyio.to_thread.run_sync(_run_all, engine, jobs, None, lambda: False)
        _count(counters, jobs)
        choices = []
        for job in jobs:
            lp = R.chat_logprobs([s.token for s in job.steps], name) if req.logprobs else None
            choices.append({"index": job.index, "message": {"role": "assistant", "content": job.result.text},
                            "logprobs": lp, "finish_reason": job.result.finish_reason})  # fmt: skip
        return {"id": R.new_id("chatcmpl"), "object": "chat.completion", "created": R.now(),
                "model": served_name, "choices": choices, "usage": _usage(jobs)}  # fmt: skip

    return app


# ---------------------------------------------------------------------------- requests -> jobs


async def _parse(request: Request, model, names: set[str]):
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        req = model.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise BadRequest(f"{where}: {msg}" if where else msg) from None
    if req.model is not None and req.model not in names:
        raise BadRequest(f"The model `{req.model}` does not exist.", 404, "NotFoundError")
    return req


def _check_length(engine: Engine, ids: list[int], max_tokens: int | None, min_tokens: int) -> int:
    if not ids:
        raise BadRequest("prompt is empty")
    if max_tokens is None:
        max_tokens = engine.n_ctx - len(ids)
    if len(ids) + max_tokens > engine.n_ctx:
        raise BadRequest(
            f"This model's maximum context length is {engine.n_ctx} tokens. However, you requested "
            f"{len(ids) + max_tokens} tokens ({len(ids)} in the prompt, {max_tokens} in the "
            "completion). Please reduce the length of the prompt or the completion."
        )
    if min_tokens > max_tokens:
        raise BadRequest(f"min_tokens ({min_tokens}) must not exceed max_tokens ({max_tokens})")
    return max_tokens


def _completion_jobs(engine: Engine, req: CompletionRequest) -> list[Job]:
    try:
        prompts = req.prompts()
    except ValueError as e:
        raise BadRequest(str(e)) from None
    jobs = []
    for p in prompts:
        if isinstance(p, str):
            ids, text = engine.tokenize(p, add_bos=True), p
        else:
            bad = next((t for t in p if not 0 <= t < engine.n_vocab), None)
            if bad is not None:
                raise BadRequest(f"token id {bad} is out of range (vocabulary size {engine.n_vocab})")
            ids = list(p)
            text = b"".join(engine.prompt_pieces(ids)).decode("utf-8", errors="replace")
        max_tokens = _check_length(engine, ids, req.max_tokens, req.min_tokens)
        for _ in range(req.n):
            s = req.sampling(max_tokens, req.logprobs, req.echo, len(jobs) % req.n)
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
        messages = req.template_messages()
    except ValueError as e:  # a content part that is not text
        raise BadRequest(str(e)) from None
    try:
        render = formatter(req.add_generation_prompt)
        rendered = render(messages=messages, **(req.chat_template_kwargs or {})).prompt
    except (ValueError, TemplateError) as e:  # incl. the template's own raise_exception(...)
        raise BadRequest(f"chat template: {e}") from None
    ids = engine.tokenize(rendered, add_bos=False)  # the template writes BOS itself if it wants one
    max_tokens = _check_length(engine, ids, req.limit(), req.min_tokens)
    top = (req.top_logprobs or 0) if req.logprobs else None
    return [Job(i, ids, rendered, req.sampling(max_tokens, top, False, i)) for i in range(req.n)]


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


def _usage(jobs: list[Job]) -> dict:
    seen, prompt = set(), 0
    for job in jobs:  # n > 1 samples of one prompt: its tokens count once, as in vLLM
        key = id(job.ids)
        if key not in seen:
            seen.add(key)
            prompt += len(job.ids)
    return R.usage(prompt, sum(j.result.completion_tokens for j in jobs))


def _count(counters: dict, jobs: list[Job]) -> None:
    u = _usage(jobs)
    counters["requests"] += 1
    counters["prompt_tokens"] += u["prompt_tokens"]
    counters["completion_tokens"] += u["completion_tokens"]


def _completion_choice(engine: Engine, req: CompletionRequest, job: Job, name) -> dict:
    text = (job.prompt_text if req.echo else "") + job.result.text
    lp = None
    if req.logprobs is not None:
        tokens, offsets = [], []
        if req.echo:
            tokens += job.result.prompt
            offsets += R.char_offsets(engine.prompt_pieces(job.ids))
        gen = [s.token for s in job.steps]
        tokens += gen
        offsets += R.char_offsets([t.piece for t in gen], len(job.prompt_text) if req.echo else 0)
        lp = R.completion_logprobs(tokens, offsets, name, req.logprobs)
    return {"index": job.index, "text": text, "logprobs": lp,
            "finish_reason": job.result.finish_reason, "stop_reason": None}  # fmt: skip


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
        try:
            while True:
                kind, job, step = await queue.get()
                if kind == "done":
                    break
                if kind == "error":
                    err = {"error": {"message": str(step), "type": "server_error", "code": 500}}
                    yield f"data: {json.dumps(err)}\n\n"
                    break
                for chunk in fmt.chunks(kind, job, step, jobs):
                    yield f"data: {json.dumps(chunk)}\n\n"
            _count(counters, jobs)
            if fmt.req.stream_options and fmt.req.stream_options.include_usage:
                yield f"data: {json.dumps(fmt.envelope([], _usage(jobs)))}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            cancel.set()  # client gone (or finished): the worker stops at its next token

    return StreamingResponse(events(), media_type="text/event-stream")


class _StreamBase:
    object = ""

    def __init__(self, req, name, served_name: str):
        self.req, self.name = req, name
        self.id, self.created, self.model = R.new_id(self.prefix), R.now(), served_name

    def envelope(self, choices: list, usage: dict | None = None) -> dict:
        out = {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
               "choices": choices}  # fmt: skip
        if usage is not None:
            out["usage"] = usage
        return out

    def running_usage(self, jobs) -> dict | None:
        so = self.req.stream_options
        return _usage(jobs) if so and so.continuous_usage_stats else None


class _CompletionStream(_StreamBase):
    object, prefix = "text_completion", "cmpl"

    def __init__(self, engine: Engine, req: CompletionRequest, name, served_name: str):
        super().__init__(req, name, served_name)
        self.engine = engine
        self.offset: dict[int, int] = {}  # choice -> characters sent so far

    def choice(self, job, text, lp=None, finish=None) -> dict:
        return {"index": job.index, "text": text, "logprobs": lp, "finish_reason": finish,
                "stop_reason": None}  # fmt: skip

    def chunks(self, kind, job, step, jobs):
        k = self.req.logprobs
        if kind == "start":
            self.offset[job.index] = 0
            if self.req.echo:
                lp = None
                if k is not None:
                    offsets = R.char_offsets(self.engine.prompt_pieces(job.ids))
                    lp = R.completion_logprobs(job.result.prompt, offsets, self.name, k)
                self.offset[job.index] = len(job.prompt_text)
                yield self.envelope([self.choice(job, job.prompt_text, lp)], self.running_usage(jobs))
        elif kind == "step":
            if not step.text and k is None:
                return
            lp = None
            if k is not None:
                lp = R.completion_logprobs([step.token], [self.offset[job.index]], self.name, k)
            self.offset[job.index] += R.n_chars(step.token.piece)
            yield self.envelope([self.choice(job, step.text, lp)], self.running_usage(jobs))
        else:
            yield self.envelope([self.choice(job, "", None, job.result.finish_reason)],
                                self.running_usage(jobs))


class _ChatStream(_StreamBase):
    object, prefix = "chat.completion.chunk", "chatcmpl"

    def choice(self, job, delta, lp=None, finish=None) -> dict:
        return {"index": job.index, "delta": delta, "logprobs": lp, "finish_reason": finish}

    def chunks(self, kind, job, step, jobs):
        if kind == "start":
            yield self.envelope([self.choice(job, {"role": "assistant", "content": ""})])
        elif kind == "step":
            if not step.text and not self.req.logprobs:
                return
            lp = R.chat_logprobs([step.token], self.name) if self.req.logprobs else None
            yield self.envelope([self.choice(job, {"content": step.text}, lp)], self.running_usage(jobs))
        else:
            yield self.envelope([self.choice(job, {}, None, job.result.finish_reason)],
                                self.running_usage(jobs))
