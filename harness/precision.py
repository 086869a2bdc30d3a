"""The precision a run really had: weights, activations and KV cache, as the engine reports them.

Every engine's `GET /v1/engine` answers `precision: {weights, activations, kv_cache}` (what it
loaded and computes in, after its own defaults: vLLM's `--dtype auto` runs an fp32 checkpoint in
16 bits; llama.cpp's KV cache follows its weights unless told). bench and score write it in the
summary and the report, beside every number, so a score is never read at a precision it did not
have."""

from __future__ import annotations

SIXTEEN_BIT = ("bfloat16", "float16", "bf16", "f16")


def effective_precision(info: dict | None, engine_cfg=None) -> dict:
    """{weights, activations, kv_cache[, note]} from an engine's /v1/engine answer."""
    got = (info or {}).get("precision")
    if not isinstance(got, dict):
        return {"weights": None, "activations": None, "kv_cache": None,
                "note": "the engine does not report its precision (no GET /v1/engine precision)"}
    out = {k: got.get(k) for k in ("weights", "activations", "kv_cache")}
    if getattr(engine_cfg, "dtype", None) == "auto" and out["activations"] in SIXTEEN_BIT:
        out["note"] = (f"16-bit: dtype auto ran {out['activations']} (give --dtype float32 for "
                       "full precision)")
    return out


def precision_line(p: dict | None) -> str:
    """'weights float32, activations float32, KV cache float32' (+ its note)."""
    if not p:
        return "unknown"
    line = ", ".join(f"{name} {p.get(key) or '?'}" for key, name in
                     (("weights", "weights"), ("activations", "activations"), ("kv_cache", "KV cache")))
    return line + (f" ({p['note']})" if p.get("note") else "")
