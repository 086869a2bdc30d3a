"""The HTTP app every in-house engine serves: /health, /metrics, /v1/models, /v1/engine,
/v1/completions and /v1/chat/completions, over a `ServedEngine`."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from backends.openai_server.auth import BearerAuth
from backends.openai_server.errors import ApiError, install_handlers
from backends.openai_server.metrics import MetricsMiddleware, ServerStats
from backends.openai_server.requests import ChatRequest, CompletionRequest, parse


class ServedEngine:
    """What an engine tells the serving layer. Subclasses set the attributes and implement the
    two generation routes (each gets a validated request and returns a JSON-able dict or a
    streaming response)."""

    kind: str = ""  # "hf", "llamacpp": the engine's name in /v1/engine
    honours: frozenset[str] = frozenset()  # fields of requests.OPTIONAL this engine implements
    served_model_name: str = ""
    aliases: tuple[str, ...] = ()  # other names a request's "model" may use (the path given)
    root: str = ""  # what /v1/models says the served model is (its path)
    max_model_len: int = 0

    def gauges(self) -> dict[str, float]:
        """Prometheus gauges under vLLM's names for what the engine knows (e.g.
        vllm:num_requests_running / _waiting from its scheduler); /metrics adds the rest."""
        return {}

    def info(self) -> dict:
        """GET /v1/engine: engine, version, model, dtype, quantization, device, bytes, counters."""
        raise NotImplementedError

    async def completions(self, req: CompletionRequest, request: Request):
        raise NotImplementedError

    async def chat(self, req: ChatRequest, request: Request):
        raise NotImplementedError


def create_app(engine: ServedEngine, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title=f"hyperbench {engine.kind} engine", docs_url=None, redoc_url=None)
    install_handlers(app)
    started = int(time.time())
    served = engine.served_model_name
    names = {served, *engine.aliases}

    async def request_of(model_cls, request: Request):
        req = parse(await request.body(), model_cls, engine.honours)
        if req.model is not None and req.model not in names:
            raise ApiError(f"the model {req.model!r} does not exist (this server serves {served!r})",
                           404, param="model")  # fmt: skip
        return req

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    stats = ServerStats()

    @app.get("/metrics")  # open, as vLLM's is: Prometheus scrapers carry no key
    async def metrics():
        return PlainTextResponse(stats.render(served, engine.gauges()), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": served, "object": "model", "created": started, "owned_by": "hyperbench",
            "root": engine.root, "max_model_len": engine.max_model_len}]}  # fmt: skip

    @app.get("/v1/engine")
    async def engine_info():
        return engine.info()

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await engine.completions(await request_of(CompletionRequest, request), request)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await engine.chat(await request_of(ChatRequest, request), request)

    app.add_middleware(MetricsMiddleware, stats=stats)
    if api_key:  # added last: outermost, so an unauthorized request is not counted
        app.add_middleware(BearerAuth, key=api_key)
    return app
