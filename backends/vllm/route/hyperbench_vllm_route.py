"""GET /v1/engine for vLLM's OpenAI server: the contract's engine description.

Loaded INSIDE vLLM's API-server process through its own `--middleware` option (a plain ASGI
middleware: every other request passes straight through, no per-request cost beyond one path
comparison). It reads what the running engine really uses from the server's state
(`app.state.vllm_config`: dtype, quantization, device, KV-cache blocks, speculative config) and
its Prometheus registry (token, request and speculative-decoding counters), so the numbers are
vLLM's own, not the harness's request.

Self-contained on purpose (stdlib at import; vLLM, torch and prometheus_client inside
functions): the harness puts only this folder on the server's PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

ROUTE = "/v1/engine"

# our counter name -> vLLM metric (counters are summed over label sets, e.g. finish reasons)
COUNTERS = {
    "requests_finished": "vllm:request_success",
    "prompt_tokens": "vllm:prompt_tokens",
    "prompt_tokens_cached": "vllm:prompt_tokens_cached",
    "generated_tokens": "vllm:generation_tokens",
    "preemptions": "vllm:num_preemptions",
    "running": "vllm:num_requests_running",
    "waiting": "vllm:num_requests_waiting",
    "drafts": "vllm:spec_decode_num_drafts",
    "draft_tokens": "vllm:spec_decode_num_draft_tokens",
    "accepted_tokens": "vllm:spec_decode_num_accepted_tokens",
}
PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos"

_weight_bytes_cache: dict[str, int | None] = {}


class EngineRoute:
    """ASGI middleware answering GET /v1/engine; everything else goes to vLLM untouched."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != ROUTE:
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        if not _authorized(state, scope):
            await _send_json(send, 401, {"error": {"message": "Unauthorized", "type": "Unauthorized", "code": 401}})
            return
        try:
            body = engine_info(state)
            status = 200
        except Exception as e:  # a description must never take the server down
            body, status = {"error": {"message": f"{type(e).__name__}: {e}", "code": 500}}, 500
        await _send_json(send, status, body)


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _authorized(state, scope) -> bool:
    # the harness passes the key as VLLM_API_KEY (out of argv), which vLLM's own auth reads too
    keys = getattr(getattr(state, "args", None), "api_key", None) or os.environ.get("VLLM_API_KEY")
    if not keys:
        return True
    keys = [keys] if isinstance(keys, str) else keys
    auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode()
    return any(auth == f"Bearer {k}" for k in keys)


def engine_info(state) -> dict:
    import vllm

    vc = state.vllm_config
    mc, cc = vc.model_config, vc.cache_config
    names = mc.served_model_name
    served = names[0] if isinstance(names, (list, tuple)) else names
    return {
        "engine": "vllm",
        "version": vllm.__version__,
        "model": served,
        "model_path": str(mc.model),
        "dtype": str(mc.dtype).removeprefix("torch."),
        "quantization": mc.quantization or "none",
        "device": str(vc.device_config.device_type),
        "load_format": str(vc.load_config.load_format),
        "weight_bytes": weight_bytes(mc),
        "kv_cache_bytes": kv_cache_bytes(vc),
        "kv_cache_blocks": cc.num_gpu_blocks,
        "block_size": cc.block_size,
        "kv_cache_dtype": str(cc.cache_dtype),
        # what ran, in one shape for every engine (the harness writes it beside every score)
        "precision": {"weights": mc.quantization or str(mc.dtype).removeprefix("torch."),
                      "activations": str(mc.dtype).removeprefix("torch."),
                      "kv_cache": (str(mc.dtype).removeprefix("torch.") if str(cc.cache_dtype) == "auto"
                                   else str(cc.cache_dtype))},
        "max_model_len": mc.max_model_len,
        "max_num_seqs": vc.scheduler_config.max_num_seqs,
        "prefix_caching": bool(cc.enable_prefix_caching),
        "gpu_memory_utilization": cc.gpu_memory_utilization,
        "speculative": speculative_settings(vc.speculative_config),
        "counters": counters(),
    }


def speculative_settings(spec) -> dict | None:
    if spec is None:
        return None
    out = {"method": spec.method, "num_speculative_tokens": spec.num_speculative_tokens}
    if spec.method == "ngram":
        out.update(prompt_lookup_min=spec.prompt_lookup_min, prompt_lookup_max=spec.prompt_lookup_max)
    elif spec.model:
        out["model"] = spec.model
    return out


def kv_cache_bytes(vc) -> int | None:
    """Bytes of the KV cache vLLM allocated: blocks x block size x per-token K+V of every layer."""
    mc, cc, pc = vc.model_config, vc.cache_config, vc.parallel_config
    try:
        if cc.num_gpu_blocks:
            elem = 1 if str(cc.cache_dtype).startswith("fp8") else mc.dtype.itemsize
            per_token = 2 * mc.get_num_layers(pc) * mc.get_num_kv_heads(pc) * mc.get_head_size() * elem
            return int(cc.num_gpu_blocks * cc.block_size * per_token)
    except Exception:  # hybrid / MLA models: their layout is not K+V per head
        pass
    return cc.kv_cache_memory_bytes


def weight_bytes(mc) -> int | None:
    key = f"{mc.model}|{mc.dtype}|{mc.quantization}"
    if key not in _weight_bytes_cache:
        try:
            _weight_bytes_cache[key] = _weight_bytes(mc)
        except Exception:
            _weight_bytes_cache[key] = None
    return _weight_bytes_cache[key]


def _weight_bytes(mc) -> int | None:
    """Weights in memory: a plain checkpoint's parameters at the serving dtype, the decoder's
    linear weights at the quantized width where vLLM quantizes them on load (fp8 of a 16-bit
    checkpoint); a quantized checkpoint's stored bytes. Without weight files (--load-format dummy
    on a config-only folder) the parameters come from the architecture built on torch's meta
    device, its linear weights at the width the quantization config declares."""
    files = sorted(Path(mc.model).glob("*.safetensors")) if Path(mc.model).is_dir() else []
    itemsize = mc.dtype.itemsize
    linear_bytes = quantized_bytes_per_weight(mc)
    if files:
        total = 0
        for f in files:
            for name, t in _safetensors_header(f).items():
                if name == "__metadata__":
                    continue
                stored = t["data_offsets"][1] - t["data_offsets"][0]
                floating = t["dtype"] in ("F32", "F16", "BF16", "F64")
                if not floating or (mc.quantization and not (mc.quantization == "fp8" and floating)):
                    total += stored  # a quantized checkpoint: what is stored is what is loaded
                else:
                    numel = 1
                    for d in t["shape"]:
                        numel *= d
                    width = linear_bytes if linear_bytes and _quantized_linear(name) else itemsize
                    total += int(numel * width)
        return total
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(mc.model, trust_remote_code=mc.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return int(sum(p.numel() * (linear_bytes if linear_bytes and _quantized_linear(n) else itemsize)
                   for n, p in model.named_parameters()))


def _quantized_linear(name: str) -> bool:
    """A decoder layer's projection weight: what vLLM's quantization methods replace (embeddings,
    norms and the LM head stay 16-bit unless a config says otherwise)."""
    return ".layers." in name and name.endswith("proj.weight")


def quantized_bytes_per_weight(mc) -> float | None:
    """Bytes a quantized linear weight takes (scales and zeros included), None if not quantized."""
    q = (mc.quantization or "").lower()
    if not q:
        return None
    if q == "fp8":
        return 1.0
    qc = getattr(mc.hf_config, "quantization_config", None) or {}
    qc = qc if isinstance(qc, dict) else getattr(qc, "__dict__", {})
    bits = qc.get("bits")
    if bits is None and q == "compressed-tensors":
        groups = (qc.get("config_groups") or {}).values()
        bits = next((g.get("weights", {}).get("num_bits") for g in groups if g.get("weights")), None)
    if bits is None:
        return None
    group = qc.get("group_size") or 0
    return bits / 8 + (4 / group if group and group > 0 else 0)  # a 16-bit scale and zero a group


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def counters() -> dict:
    """vLLM's cumulative counters (and running/waiting gauges) from this process's registry."""
    from prometheus_client import REGISTRY

    wanted = {metric: key for key, metric in COUNTERS.items()}
    out: dict = {}
    per_pos: dict[int, float] = {}
    for metric in REGISTRY.collect():
        key = wanted.get(metric.name)
        for s in metric.samples:
            if s.name.endswith("_created"):
                continue
            if key is not None:
                out[key] = out.get(key, 0) + s.value
            elif metric.name == PER_POSITION and "position" in s.labels:
                pos = int(s.labels["position"])
                per_pos[pos] = per_pos.get(pos, 0) + s.value
    if per_pos:
        out["accepted_per_position"] = [per_pos[i] for i in sorted(per_pos)]
    return {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in out.items()}
