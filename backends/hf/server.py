"""The transformers engine's OpenAI-compatible HTTP server (FastAPI).

Routes: GET /health, GET /v1/models, GET /v1/engine, POST /v1/completions,
POST /v1/chat/completions. Generation itself happens in the scheduler thread (`engine.py`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from backends.hf.engine import Scheduler
from backends.hf.graphs import StaticDecoder
from backends.hf.generation import ChatFormatter, CompletionFormatter, Generation
from backends.hf.loading import LoadedModel, LoadSettings, versions
from backends.hf.output import TokenText
from backends.hf.speculative import Speculator
from backends.hf.protocol import ApiError, ChatRequest, CompletionRequest, validation_message
from harness import __version__

log = logging.getLogger("hf.server")

DISCONNECT_POLL_S = 0.5  # how often a non-streaming request checks that its client is still there


@dataclass
class ServeSettings:
    served_model_name: str
    max_batch_size: int = 32
    api_key: str | None = None
    num_speculative_tokens: int = 4  # with a draft model (LoadSettings.draft)
    assistant_confidence_threshold: float = 0.4
    enforce_eager: bool = False  # no CUDA-graph decoding (graphs.py)


class Runtime:
    """The loaded model, its scheduler, and what the routes need to know about them."""

    def __init__(self, loaded: LoadedModel, load: LoadSettings, serve: ServeSettings,
                 draft: LoadedModel | None = None):  # fmt: skip
        self.loaded, self.load_settings, self.settings = loaded, load, serve
        self.draft = draft
        speculator = None
        if draft is not None:
            speculator = Speculator(
                draft.model,
                k=serve.num_speculative_tokens,
                confidence_threshold=serve.assistant_confidence_threshold,
                vocab_size=loaded.vocab_size,
                draft_vocab_size=draft.vocab_size,
                eos_ids=loaded.eos_ids,
                max_len=loaded.max_len,
            )
        self.tokenizer = loaded.tokenizer
        self.token_text = TokenText(loaded.tokenizer)
        self.device = loaded.device
        self.max_len = loaded.max_len
        self.started = int(time.time())
        self.graphs, self.graphs_off = None, "--enforce-eager"
        self.draft_graphs_off = None
        if not str(loaded.device).startswith("cuda"):
            self.graphs_off = f"device {loaded.device} (CUDA graphs need a GPU)"
        elif not serve.enforce_eager:
            def decoder(model, width):
                return StaticDecoder.for_model(model, max_batch=serve.max_batch_size, max_len=loaded.max_len,
                                               device="cuda", capture=True, max_width=width)  # fmt: skip

            # speculating, the target verifies k + 1 tokens a step and the draft reads 2 at most
            width = serve.num_speculative_tokens + 1 if speculator is not None else 1
            self.graphs, self.graphs_off = decoder(loaded.model, width)
            if speculator is not None:
                speculator.graphs, self.draft_graphs_off = decoder(draft.model, 2)
                if self.draft_graphs_off:
                    log.info("the draft decodes eagerly: %s", self.draft_graphs_off)
        if self.graphs_off:
            log.info("decoding eagerly: %s", self.graphs_off)
        self.scheduler = Scheduler(
            loaded.model,
            eos_ids=loaded.eos_ids,
            pad_id=loaded.pad_id,
            vocab_size=loaded.vocab_size,
            max_batch_size=serve.max_batch_size,
            max_len=loaded.max_len,
            device=loaded.device,
            speculator=speculator,
            graphs=self.graphs,
        )

    def info(self) -> dict:
        load = self.scheduler.load()
        return {
            "engine": "hf",
            # as every engine says it: the engine library's version, the served name, the folder
            "version": (vers := versions())["transformers"],
            "engine_version": __version__,
            "versions": vers,
            "model": self.settings.served_model_name,
            "model_path": self.load_settings.model,
            "served_model_name": self.settings.served_model_name,
            "dtype": self.loaded.dtype,
            "quantization": self.load_settings.quant,
            "attention": self.load_settings.attn,
            "device": self.device,
            "load_format": self.load_settings.load_format,
            "weight_bytes": self.loaded.weight_bytes,
            "kv_cache_bytes": load["kv_cache_bytes"],
            "max_batch_size": self.settings.max_batch_size,
            "max_model_len": self.max_len,
            "batching": "continuous",
            "decode_graphs": self.graphs.info() if self.graphs else {"enabled": False, "reason": self.graphs_off},
            "speculative": self.speculative_info(),
            "model_info": self.loaded.info,
            "counters": {**self.scheduler.counters.as_dict(), "running": load["running"],
                         "waiting": load["waiting"]},  # fmt: skip
        }

    def speculative_info(self) -> dict | None:
        spec = self.scheduler.spec
        if spec is None:
            return None
        return {
            "method": "draft",
            "draft_model": self.load_settings.draft,
            "num_speculative_tokens": spec.k,
            "assistant_confidence_threshold": spec.threshold,
            "draft_dtype": self.draft.dtype,
            "draft_weight_bytes": self.draft.weight_bytes,
            "draft_model_info": self.draft.info,
            "draft_decode_graphs": spec.graphs.info() if spec.graphs else {
                "enabled": False, "reason": self.draft_graphs_off or self.graphs_off},
            "counters": spec.counters.as_dict(),
        }

    # --- prompts ---------------------------------------------------------------------------------
    def check_ids(self, ids: list[int]) -> list[int]:
        if not ids:
            raise ApiError("the prompt is empty", param="prompt")
        vocab = self.loaded.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            raise ApiError(f"token ids must be in [0, {vocab})", param="prompt")
        return ids

    def max_tokens(self, ids: list[int], requested: int | None) -> int:
        room = self.max_len - len(ids)
        if requested is None:
            if room <= 0:
                raise ApiError(f"the prompt ({len(ids)} tokens) fills this model's context of {self.max_len}")
            return room
        if len(ids) + requested > self.max_len:
            raise ApiError(
                f"this model's maximum context length is {self.max_len} tokens, but {len(ids)} prompt"
                f" tokens + {requested} max_tokens were requested",
                param="max_tokens",
            )
        return requested


def _parse(model_cls, body):
    try:
        return model_cls.model_validate(body)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise ApiError(message, param=param) from None


async def _body(request: Request):
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(f"the request body is not valid JSON: {exc}") from None


def create_app(rt: Runtime) -> FastAPI:
    app = FastAPI(title="hyperbench hf engine", docs_url=None, redoc_url=None)
    served = rt.settings.served_model_name

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("request failed")
        err = ApiError(f"{type(exc).__name__}: {exc}", status=500, type_="server_error")
        return JSONResponse(err.body(), status_code=500)

    def check_model(name: str | None) -> None:
        if name is not None and name not in (served, rt.load_settings.model):
            raise ApiError(f"the model {name!r} does not exist (this server serves {served!r})",
                           status=404, param="model", type_="not_found_error")  # fmt: skip

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": served, "object": "model", "created": rt.started, "owned_by": "hyperbench",
            "root": rt.load_settings.model, "max_model_len": rt.max_len}]}  # fmt: skip

    @app.get("/v1/engine")
    async def engine():
        return rt.info()

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = _parse(CompletionRequest, await _body(request))
        check_model(req.model)
        prompts, texts = _completion_prompts(rt, req.prompt)
        max_tokens = min(rt.max_tokens(ids, req.max_tokens) for ids in prompts)
        want_prompt_lp = req.echo and req.logprobs is not None
        params = req.sampling(max_tokens, req.logprobs, req.logprobs if want_prompt_lp else None)
        fmt = CompletionFormatter(served, texts if req.echo else None, req.logprobs is not None)
        gen = Generation(rt, prompts, params, req.stops())
        return await _respond(gen, fmt, req, request)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = _parse(ChatRequest, await _body(request))
        check_model(req.model)
        ids = _chat_prompt(rt, req)
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        top = (req.top_logprobs or 0) if req.logprobs else None
        params = req.sampling(rt.max_tokens(ids, requested), top, None)
        gen = Generation(rt, [ids], params, req.stops())
        return await _respond(gen, ChatFormatter(served, req.logprobs), req, request)

    if rt.settings.api_key:
        app.add_middleware(BearerAuth, key=rt.settings.api_key)
    return app


class BearerAuth:
    """401 for /v1 requests without `Authorization: Bearer KEY` (/health stays open).

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware would hide client disconnects from
    the routes and add a hop to every streamed chunk."""

    def __init__(self, app, key: str):
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                err = ApiError("invalid or missing API key", status=401, type_="authentication_error")
                await JSONResponse(err.body(), status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _respond(gen: Generation, fmt, req, request: Request):
    if req.stream:  # a client that goes away closes the stream, whose `finally` aborts
        opts = req.stream_options
        include = bool(opts and opts.include_usage)
        continuous = bool(opts and opts.continuous_usage_stats)
        return StreamingResponse(fmt.stream(gen, include, continuous), media_type="text/event-stream")
    task = asyncio.ensure_future(gen.run())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if not task.done() and await request.is_disconnected():
                task.cancel()  # nobody will read the answer: free the batch rows now
                return JSONResponse({}, status_code=499)
        task.result()
    finally:
        gen.abort()
    if gen.error():
        raise ApiError(gen.error(), status=500, type_="server_error")
    return fmt.response(gen)


def _completion_prompts(rt: Runtime, prompt) -> tuple[list[list[int]], list[str]]:
    """Token ids and echo text per prompt. Text gets the tokenizer's special tokens (BOS) as in
    vLLM; token-id prompts are used exactly as given."""
    tok = rt.tokenizer
    if isinstance(prompt, str):
        prompt = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    ids, texts = [], []
    for p in prompt:
        if isinstance(p, str):
            ids.append(rt.check_ids(tok(p).input_ids))
            texts.append(p)
        else:
            ids.append(rt.check_ids(list(p)))
            texts.append(tok.decode(p))
    return ids, texts


def _chat_prompt(rt: Runtime, req: ChatRequest) -> list[int]:
    tok = rt.tokenizer
    if not getattr(tok, "chat_template", None):
        raise ApiError("this model has no chat template: use /v1/completions", param="messages")
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    try:
        text = tok.apply_chat_template(
            messages,
            add_generation_prompt=req.add_generation_prompt,
            tokenize=False,
            **(req.chat_template_kwargs or {}),
        )
    except Exception as exc:  # template errors (e.g. a role it refuses) are the caller's to fix
        raise ApiError(f"the chat template failed: {exc}", param="messages") from None
    return rt.check_ids(tok(text, add_special_tokens=False).input_ids)
