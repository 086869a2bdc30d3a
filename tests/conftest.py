"""Shared fixtures: the tiny model, and real engine servers started through the harness's own
process launcher (free port, health wait, early-death detection, log kept, always torn down)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# no hub in tests: without this a stray hub id fails only after ~50 s of retries
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# per-engine settings that make the tiny model's numerics comparable to a fp32 forward pass
ENGINE_TEST_OPTIONS: dict[str, dict] = {
    "hf": {"dtype": "float32", "device": "cpu"},
    "llamacpp": {"quant": "f32", "kv_cache_type": "f32"},
    "vllm": {"dtype": "float32", "enforce_eager": True},  # no compile: start-up 38 s, not 70
}


@dataclass
class Server:
    kind: str
    base_url: str  # ends in /v1
    model: str  # served model name
    model_path: Path  # local HF folder of the same weights
    log_path: Path


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from harness.models import resolve_model

    return Path(resolve_model("tiny-llama").path)


def start_server(kind: str, model_path: Path, log_dir: Path, **overrides):
    """Context manager yielding a Server for engine `kind` on `model_path`."""
    from contextlib import contextmanager

    from backends import engine_class
    from harness.launchers.process import ProcessLauncher

    cls = engine_class(kind)
    ok, why = cls.installed()
    if not ok:
        pytest.skip(f"engine {kind} is not installed here ({why})")
    opts = {**ENGINE_TEST_OPTIONS.get(kind, {}), **overrides}
    cfg = cls(model=str(model_path), served_model_name="tiny", **opts)
    log = log_dir / f"{kind}-engine.log"

    @contextmanager
    def cm():
        with ProcessLauncher(cfg, str(model_path), log_path=log, startup_timeout_s=600) as ep:
            yield Server(kind, ep.base_url, ep.model, model_path, log)

    return cm()


ENGINE_PARAMS = [
    pytest.param("hf", id="hf"),
    pytest.param("llamacpp", id="llamacpp", marks=pytest.mark.llamacpp),
    pytest.param("vllm", id="vllm", marks=[pytest.mark.vllm, pytest.mark.slow]),
]


# the wire contract also on the real model (slow tier): the same tests on smollm2-135m, fp32
# (hf: its bf16 weights upcast; llama.cpp: converted to an f32 GGUF), against transformers
SMOLLM2_CONTRACT_PARAMS = [
    pytest.param("hf:smollm2-135m", id="hf-smollm2", marks=pytest.mark.slow),
    pytest.param("llamacpp:smollm2-135m", id="llamacpp-smollm2", marks=[pytest.mark.llamacpp, pytest.mark.slow]),
]


def serve_param(param: str, tiny_model: Path, tmp_path_factory):
    """'kind' (the tiny model) or 'kind:model' (a built-in model) -> a running server."""
    kind, _, model = param.partition(":")
    if model:
        from harness.models import resolve_model

        model_path = Path(resolve_model(model).path)
    else:
        model_path = tiny_model
    return start_server(kind, model_path, tmp_path_factory.mktemp("engine"))


# every engine on the tiny model (tests of other areas that need a server); tests/contract
# overrides it with the smollm2-135m parameters added
@pytest.fixture(scope="module", params=ENGINE_PARAMS)
def engine_server(request, tiny_model, tmp_path_factory):
    with serve_param(request.param, tiny_model, tmp_path_factory) as server:
        yield server
