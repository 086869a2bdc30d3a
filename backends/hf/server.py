"""The transformers engine's OpenAI-compatible HTTP server (FastAPI).

Routes: GET /health, GET /v1/models, GET /v1/engine, POST /v1/completions,
POST /v1/chat/completions. Generation itself happens in the scheduler thread (`engine.py`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from backends.hf.engine import Scheduler
from backends.hf.graphs import StaticDecoder
from backends.hf.generation import ChatFormatter, CompletionFormatter, Generation
from backends.hf.loading import LoadedModel, LoadSettings, versions
from backends.hf.output import token_text
from backends.hf.protocol import HONOURS, sampling_params
from backends.hf.speculative import Speculator
from backends.openai_server import app as openai_app
from backends.openai_server.errors import ApiError
from backends.openai_server.logprobs import TokenNames
from backends.openai_server.prompts import NO_CHAT_TEMPLATE, check_token_ids, max_new_tokens, template_failed
from backends.openai_server.requests import ChatRequest, CompletionRequest
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


class Runtime(openai_app.ServedEngine):
    """The loaded model, its scheduler, and what the serving layer needs to know about them."""

    kind, honours = "hf", HONOURS

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
        self.token_text = token_text(loaded.tokenizer)
        self.device = loaded.device
        self.max_len = self.max_model_len = loaded.max_len
        self.served_model_name, self.aliases = serve.served_model_name, (load.model,)
        self.root = load.model
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

    def gauges(self) -> dict[str, float]:
        load = self.scheduler.load()
        return {"vllm:num_requests_running": load["running"], "vllm:num_requests_waiting": load["waiting"]}

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
            # what ran, in one shape for every engine; transformers' KV cache is in the compute dtype
            "precision": {"weights": self.loaded.dtype if self.load_settings.quant == "none"
                          else self.load_settings.quant,
                          "activations": self.loaded.dtype, "kv_cache": self.loaded.dtype},
            "attention": self.load_settings.attn,
            "device": self.device,
            "load_format": self.load_settings.load_format,
            "pruning": self.loaded.info.get("pruning"),  # measured sparsity, or None: dense as loaded
            "lora": self.loaded.info.get("lora"),  # an adapter served unmerged, or None
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

    # --- the two generation routes ----------------------------------------------------------------
    async def completions(self, req: CompletionRequest, request: Request):
        prompts, texts = _completion_prompts(self, req.prompts())
        max_tokens = min(max_new_tokens(len(ids), req.max_tokens, self.max_len, req.min_tokens) for ids in prompts)
        want_prompt_lp = req.echo and req.logprobs is not None
        params = sampling_params(req, max_tokens, req.logprobs, req.logprobs if want_prompt_lp else None)
        fmt = CompletionFormatter(self.served_model_name, texts if req.echo else None, req.logprobs is not None,
                                  self.names(req))  # fmt: skip
        gen = Generation(self, prompts, params, req.stops())
        return await _respond(gen, fmt, req, request)

    async def chat(self, req: ChatRequest, request: Request):
        ids = _chat_prompt(self, req)
        top = (req.top_logprobs or 0) if req.logprobs else None
        params = sampling_params(req, max_new_tokens(len(ids), req.limit(), self.max_len, req.min_tokens), top, None)
        gen = Generation(self, [ids], params, req.stops())
        return await _respond(gen, ChatFormatter(self.served_model_name, req.logprobs, self.names(req)), req, request)

    def names(self, req) -> TokenNames:
        return TokenNames(self.token_text, as_ids=req.return_tokens_as_token_ids)


def create_app(rt: Runtime) -> FastAPI:
    return openai_app.create_app(rt, rt.settings.api_key)


async def _respond(gen: Generation, fmt, req, request: Request):
    if req.stream:  # a client that goes away closes the stream, whose `finally` aborts
        return StreamingResponse(fmt.stream(gen, req.stream_options), media_type="text/event-stream")
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
        raise ApiError(gen.error(), 500)
    return fmt.response(gen)


def _completion_prompts(rt: Runtime, prompts) -> tuple[list[list[int]], list[str]]:
    """Token ids and echo text per prompt. Text gets the tokenizer's special tokens (BOS) as in
    vLLM; token-id prompts are used exactly as given."""
    tok, vocab = rt.tokenizer, rt.loaded.vocab_size
    ids, texts = [], []
    for p in prompts:
        if isinstance(p, str):
            ids.append(check_token_ids(tok(p).input_ids, vocab))
            texts.append(p)
        else:
            ids.append(check_token_ids(list(p), vocab))
            texts.append(tok.decode(p))
    return ids, texts


def _chat_prompt(rt: Runtime, req: ChatRequest) -> list[int]:
    tok = rt.tokenizer
    if not getattr(tok, "chat_template", None):
        raise NO_CHAT_TEMPLATE
    try:
        text = tok.apply_chat_template(
            req.template_messages(),
            add_generation_prompt=req.add_generation_prompt,
            tokenize=False,
            **(req.chat_template_kwargs or {}),
        )
    except Exception as exc:  # template errors (e.g. a role it refuses) are the caller's to fix
        raise template_failed(exc) from None
    return check_token_ids(tok(text, add_special_tokens=False).input_ids, rt.loaded.vocab_size)
