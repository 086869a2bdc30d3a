"""The engine session every job shares: the model to serve and its tokenizer, the engine brought
up through the config's launcher (it waits for the engine's health and brings it down however the
job ends), and what the engine says about itself on /v1/engine.

bench, score, tune, agree and study (through its cells) all serve an engine this way; it lives
outside any one job so that none imports another's internals to get an engine.
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from pathlib import Path

from harness.launchers import make_launcher


def resolve_model_path(cfg, engine) -> str | None:
    """Local path of the model to serve (staged if built-in); None for an external engine, and for
    an engine that loads no weights unless its model names one (then its tokenizer is used)."""
    if not cfg.target.launcher_class.starts_engine:
        return None
    from harness.models import BUILTIN_MODELS, resolve_model

    if not engine.needs_weights and engine.model not in BUILTIN_MODELS and not Path(engine.model).expanduser().exists():
        return None

    resolved = resolve_model(engine.model)
    return str(resolved.path or resolved.gguf)


def resolve_tokenizer_source(cfg, model_path: str | None) -> str | None:
    """The served model's tokenizer (bench's synthetic prompts, score's context windows):
    --tokenizer, the served folder, or (for an external engine) a built-in or local model of the
    same name."""
    if cfg.target.tokenizer:
        return cfg.target.tokenizer
    if model_path and Path(model_path).is_dir():
        return model_path
    name = cfg.engine.get("model") or cfg.engine_config().model
    if model_path is None and name:
        from harness.models import BUILTIN_MODELS, resolve_model

        if name in BUILTIN_MODELS or Path(name).expanduser().is_dir():
            return str(resolve_model(name).path)
        if cfg.target.launcher_class.starts_engine and (fallback := cfg.engine_config().prompt_tokenizer):
            return str(resolve_model(fallback).path)  # an engine without weights (synthetic)
    return None


@contextmanager
def engine_up(cfg, engine, model_path: str | None, log_path: Path | None):
    """Bring the engine up with the config's launcher (an external one is only checked for
    health); yields (endpoint, launcher), and the engine is down again when the block ends."""
    if not cfg.target.launcher_class.starts_engine:
        launcher = make_launcher(cfg.target.launcher, url=cfg.target.url,
                                 model=cfg.engine.get("served_model_name") or cfg.engine.get("model"),
                                 api_key=engine.api_key,
                                 startup_timeout_s=min(cfg.target.startup_timeout_s, 30))
    else:
        launcher = make_launcher(
            cfg.target.launcher, engine=engine, model_path=model_path, log_path=log_path,
            port=cfg.target.port, startup_timeout_s=cfg.target.startup_timeout_s,
        )  # fmt: skip
    with launcher as endpoint:
        yield endpoint, launcher


def engine_info(endpoint) -> dict | None:
    """The engine's own account of itself (GET /v1/engine: kind, version, dtype, weight bytes);
    None where the engine has no such route (an external engine may not)."""
    from harness.adapter import EngineClient

    async def get():
        async with EngineClient(endpoint.base_url, endpoint.model, endpoint.api_key) as c:
            try:
                return await c.get("/engine")
            except Exception:  # optional route: an external engine may not have it
                return None

    return asyncio.run(get())


def describe_engine(summary: dict, endpoint, launcher, engine) -> None:
    """What a bench or score summary records of the engine it ran on: the served model name (and,
    for an engine someone else runs, the model it says it serves), its /v1/engine info and the
    precision the numbers were measured at."""
    from harness.precision import effective_precision

    summary["served_model"] = endpoint.model
    if not launcher.starts_engine:  # the engine someone runs says what it serves
        summary["model"] = endpoint.model
    summary["engine_info"] = engine_info(endpoint)
    summary["precision"] = effective_precision(summary["engine_info"], engine)
