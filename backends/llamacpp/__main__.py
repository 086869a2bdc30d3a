"""`python -m backends.llamacpp --model PATH ...`: what LlamaCppConfig.server_command runs; its
engine flags are built from LlamaCppConfig (backends/spec_cli.py), not listed again here.

Fails in one line on stderr with exit code 2 for a busy port, a missing or bad model, or a
model llama.cpp cannot load; the port is taken before the (possibly slow) conversion, so a busy
one fails at once.
"""

from __future__ import annotations

# llama.cpp's libraries first, before anything imports numpy: with a CUDA build (OpenMP), loading
# them after numpy's OpenBLAS made llama_model_load_from_file segfault on the H100 node
# (measured: the same call succeeds when llama_cpp is imported first).
try:
    import llama_cpp  # noqa: F401
except ImportError:  # reported, in one line, where the engine is loaded
    pass

import argparse
import logging
import sys
from pathlib import Path

from backends.base import api_key_arg_default, exit_with_parent
from backends.spec_cli import add_spec_arguments, spec_from_args
from backends.openai_server.listen import bind
from harness.errors import HyperbenchError

KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32,
            "q5_0": 22 / 32, "q4_1": 20 / 32, "q4_0": 18 / 32}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    from backends.llamacpp.spec import LlamaCppConfig

    p = argparse.ArgumentParser(prog="python -m backends.llamacpp", description=__doc__)
    p.add_argument("--model", required=True, help="HF folder or .gguf file")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=api_key_arg_default(), help="[default: $HYPERBENCH_API_KEY]")
    add_spec_arguments(p, LlamaCppConfig)  # the engine settings: names, choices, defaults from the spec
    return p.parse_args(argv)


def speculation(cfg):
    """--speculative & co. of a checked spec -> NgramSettings or DraftSettings (None: off). A
    draft model that is an HF folder is converted like the target (--quant); a .gguf is used as
    it is."""
    from backends.llamacpp.gguf import ensure_gguf
    from backends.llamacpp.speculative import DraftSettings, NgramSettings
    from backends.llamacpp.spec import draft_model, parse_speculative

    if parse_speculative(cfg.speculative)[0] == "none":
        return None
    if (draft := draft_model(cfg.speculative)) is not None:
        quant = "native" if draft.endswith(".gguf") else cfg.quant
        return DraftSettings(k=cfg.num_speculative_tokens, model=str(ensure_gguf(draft, quant)))
    lo, hi = cfg.ngram_range()
    return NgramSettings(k=cfg.num_speculative_tokens, ngram_min=lo, ngram_max=hi)


def load(args):
    from backends.llamacpp.engine import Engine, load_error
    from backends.llamacpp.gguf import ensure_gguf, gguf_info, log
    from backends.llamacpp.spec import LlamaCppConfig, kv_type_for

    cfg = spec_from_args(LlamaCppConfig, args)  # a value out of range: one line naming its flag
    cfg.check()  # as the harness checks it
    spec = speculation(cfg)
    args.parallel, args.n_ctx = cfg.slots(), cfg.cells()  # the defaults resolved (4 slots, 4096 cells each)
    gguf = ensure_gguf(args.model, args.quant)
    meta = gguf_info(gguf)
    if args.lora:
        from backends.llamacpp.gguf import ensure_lora_gguf

        args.lora_gguf = str(ensure_lora_gguf(args.lora, args.model))
    n_ctx = args.n_ctx
    trained = meta["context_length"]
    if trained and n_ctx > trained * args.parallel:  # (a sequence gets n_ctx / parallel)
        log(f"n_ctx {n_ctx} is beyond the model's trained context {trained} x {args.parallel} "
            f"sequences: using {trained * args.parallel}")
        n_ctx = int(trained) * args.parallel
    args.kv_cache_type_requested = args.kv_cache_type
    if args.kv_cache_type == "auto":
        args.kv_cache_type = kv_type_for(meta["file_type"])
    if args.cache_idle_slots is None:  # the spec's default: the cheaper way on this device
        args.cache_idle_slots = not offloads(args.n_gpu_layers)
    log(f"loading {gguf} ({meta['file_type']}, KV cache {args.kv_cache_type}, n_ctx {n_ctx}, "
        f"n_gpu_layers {args.n_gpu_layers})")
    try:
        engine = Engine(str(gguf), n_ctx=n_ctx, n_batch=args.n_batch, n_gpu_layers=args.n_gpu_layers,
                        n_threads=args.n_threads, flash_attn=args.flash_attn,
                        kv_cache_type=args.kv_cache_type, speculative=spec,
                        parallel=args.parallel, lora=getattr(args, "lora_gguf", None),
                        cache_idle_slots=args.cache_idle_slots)  # fmt: skip
    except ValueError as e:  # llama-cpp-python's "Failed to load model from file: ..." (target or draft)
        why = load_error()
        raise HyperbenchError(f"llama.cpp cannot load {gguf}: {e}" + (f" ({why})" if why else "")) from None
    return engine, gguf, meta


def offloads(n_gpu_layers: int) -> bool:
    """Whether this llama.cpp build puts layers on a GPU with these settings."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload()) and n_gpu_layers != 0


def engine_info(args, engine, gguf: Path, meta: dict) -> dict:
    import llama_cpp

    lib, model = llama_cpp, engine.llm._model.model
    kv_bytes = kv_cache_bytes(engine.llm, engine.n_ctx_total, args.kv_cache_type)
    on_gpu = offloads(args.n_gpu_layers)
    return {
        "engine": "llamacpp",
        "version": llama_cpp.__version__,
        "model": args.served_model_name or Path(args.model).name,
        "model_path": str(gguf),
        "source_path": str(Path(args.model).resolve()),
        "architecture": meta["architecture"],
        "dtype": meta["file_type"],
        "quantization": meta["file_type"],
        "quant_requested": args.quant,
        "n_params": int(lib.llama_model_n_params(model)),
        "weight_bytes": int(lib.llama_model_size(model)),  # GGUF tensor data
        "kv_cache_bytes": int(kv_bytes),  # allocated up front for n_ctx
        "kv_cache_type": args.kv_cache_type,
        "kv_cache_type_requested": getattr(args, "kv_cache_type_requested", args.kv_cache_type),
        # what ran, in one shape for every engine; llama.cpp's CPU kernels compute in f32, its
        # CUDA matmuls may run in f16
        "precision": {"weights": meta["file_type"], "activations": "f16/f32" if on_gpu else "f32",
                      "kv_cache": args.kv_cache_type},
        "n_ctx": engine.n_ctx_total,
        "n_ctx_per_sequence": engine.n_ctx,
        "n_ctx_train": meta["context_length"],
        "n_batch": args.n_batch,
        "n_threads": engine.llm.n_threads,  # decode; llama-cpp-python's default: half the CPUs
        "n_threads_batch": engine.llm.n_threads_batch,  # prompts; default: all CPUs
        "n_gpu_layers": args.n_gpu_layers if on_gpu else 0,
        "flash_attn": args.flash_attn,
        "parallel": engine.parallel,
        "cache_idle_slots": bool(engine.parallel > 1 and args.cache_idle_slots),
        # with one sequence, the KV of the previous request's common prefix is reused
        "prefix_cache": engine.parallel == 1,
        "device": "cuda" if on_gpu else "cpu",
        "system_info": lib.llama_print_system_info().decode(errors="replace").strip(),
        "speculative": speculative_info(engine, args.kv_cache_type),
        # an adapter applied at load (llama_adapter_lora), beside the base weights: unmerged
        "lora": {"path": args.lora_gguf, "source": str(Path(args.lora).resolve()), "merged": False,
                 "scale": 1.0} if getattr(args, "lora_gguf", None) else None,
    }


def kv_cache_bytes(llm, n_ctx: int, kv_cache_type: str) -> int:
    """The KV cache llama.cpp allocates up front for n_ctx tokens of `llm` (a llama_cpp.Llama)."""
    import llama_cpp as lib

    model = llm._model.model
    n_layer, n_head = lib.llama_model_n_layer(model), lib.llama_model_n_head(model)
    n_head_kv, n_embd = lib.llama_model_n_head_kv(model), lib.llama_model_n_embd(model)
    md = llm.metadata
    arch = md.get("general.architecture", "llama")
    k_dim = int(md.get(f"{arch}.attention.key_length", n_embd // max(n_head, 1)))
    v_dim = int(md.get(f"{arch}.attention.value_length", n_embd // max(n_head, 1)))
    return int(n_layer * n_ctx * n_head_kv * (k_dim + v_dim) * KV_BYTES[kv_cache_type])


def speculative_info(engine, kv_cache_type: str = "f16") -> dict | None:
    """What GET /v1/engine says of speculation; server.py refreshes `counters` per call."""
    spec = engine.spec
    if spec is None:
        return None
    if engine.drafter is not None:
        import llama_cpp

        model = engine.drafter.llm._model.model
        return {
            "method": "draft_model",
            "num_speculative_tokens": spec.k,
            "draft_model": spec.model,
            "draft_n_params": int(llama_cpp.llama_model_n_params(model)),
            "draft_weight_bytes": int(llama_cpp.llama_model_size(model)),
            "draft_kv_cache_bytes": kv_cache_bytes(engine.drafter.llm, engine.n_ctx, kv_cache_type),
            "counters": engine.counters.as_dict(),
        }
    return {
        "method": "ngram",
        "num_speculative_tokens": spec.k,
        "prompt_lookup_min": spec.ngram_min,
        "prompt_lookup_max": spec.ngram_max,
        "counters": engine.counters.as_dict(),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    exit_with_parent()
    try:
        sock = bind(args.host, args.port)
        engine, gguf, meta = load(args)
    except HyperbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    import uvicorn

    from backends.llamacpp.server import create_app

    name = args.served_model_name or Path(args.model).name
    app = create_app(engine, engine_info(args, engine, gguf, meta), name, args.api_key,
                     aliases=(args.model, str(gguf)))  # fmt: skip
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # one line per request is noise
    config = uvicorn.Config(app, log_level="info", timeout_keep_alive=30)
    print(f"[llamacpp] serving {name} on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
