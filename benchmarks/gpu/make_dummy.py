"""Write an HF model folder of a real shape with random weights (std 0.02, as HF initialises),
for speed runs where the real weights cannot be had (a GPU node with no hub access).

    python benchmarks/gpu/make_dummy.py --shape llama2-7b --out DIR [--device cuda]
    python benchmarks/gpu/make_dummy.py --shape llama2-7b --out T --identity-after 2   # spec target
    python benchmarks/gpu/make_dummy.py --draft-of T --layers 2 --out D                 # its draft
    python benchmarks/gpu/make_dummy.py --shape llama2-7b --out C --config-only \
        --tokenizer SMOLLM2_DIR --vocab 49152     # vLLM --load-format dummy with a real tokenizer

The folder is an ordinary checkpoint (config.json, bf16 safetensors, tokenizer): every engine
loads it the normal way (HF from_pretrained, llama.cpp through the GGUF converter and quantizer),
so load paths and weight bytes are the real ones. The tokenizer is the built-in tiny-llama's
(1,000 pieces; ids up to the shape's vocabulary are valid, the rest decode to padding pieces).
The text generated is meaningless; speed does not depend on it (bench forces the output length).

Speculative decoding needs a draft that agrees with its target, which random weights never do.
`--identity-after N` zeroes the output projections (o_proj, down_proj) of every layer from N on,
so those layers add nothing to the residual stream while costing exactly the same bytes and
FLOPs; `--draft-of` that folder with `--layers N` keeps its first N layers, embeddings, final
norm and head. The draft then computes the target's logits exactly: acceptance ~100% by
construction, the upper bound of what speculation can buy for this target/draft size ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo, when run as a script

SHAPES = {
    # meta-llama/Llama-2-7b-hf config.json
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                      max_position_embeddings=4096, rms_norm_eps=1e-5),
    # TinyLlama-1.1B's shape, Llama-2's vocabulary: a draft model for speculative decoding
    "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                     num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                     max_position_embeddings=4096, rms_norm_eps=1e-5),
    # same structure, small: checks this script and the GGUF path on a CPU in seconds
    "test": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=32000,
                 max_position_embeddings=4096, rms_norm_eps=1e-5),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--identity-after", type=int, default=None, metavar="N",
                    help="zero o_proj and down_proj of layers N.. (they then add nothing, at full cost)")
    ap.add_argument("--draft-of", type=Path, default=None, metavar="DIR",
                    help="write a draft: the first --layers layers of the checkpoint in DIR")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--tokenizer", type=Path, default=None, metavar="DIR",
                    help="copy this folder's tokenizer instead of training the tiny one (a real "
                         "tokenizer: text deltas as real models stream them)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: the shape's)")
    ap.add_argument("--config-only", action="store_true",
                    help="config and tokenizer, no weights (for vLLM --load-format dummy)")
    args = ap.parse_args()
    if args.draft_of is not None:
        return write_draft(args.draft_of, args.layers, args.out)

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.models.cache import finish_hf_folder
    from harness.models.tiny import train_tiny_tokenizer

    if (args.out / "config.json").is_file() and (args.config_only or any(args.out.glob("*.safetensors"))):
        print(f"{args.out}: already there")
        return
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    tok = copy_tokenizer(args.tokenizer, args.out) if args.tokenizer else train_tiny_tokenizer(args.out)
    rope_theta = 10000.0
    shape = {**SHAPES[args.shape], **({"vocab_size": args.vocab} if args.vocab else {})}
    if len(tok) > shape["vocab_size"]:
        sys.exit(f"make_dummy.py: the tokenizer has {len(tok)} pieces, the vocabulary {shape['vocab_size']}: set --vocab")
    config = LlamaConfig(**shape, rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         tie_word_embeddings=False, initializer_range=0.02)  # fmt: skip
    if args.config_only:
        config.save_pretrained(args.out)
        finish_hf_folder(args.out, rope_theta)
        (args.out / "DUMMY_WEIGHTS.json").write_text(json.dumps({"shape": args.shape, "config_only": True}))
        print(f"{args.out}: {args.shape} config (vocab {shape['vocab_size']}), no weights")
        return
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    # Random logits would pick ids past the tokenizer's 1,000 pieces (or its byte pieces), which
    # decode to no text: a streaming client then sees no token arrivals. Zeroing those rows of the
    # output projection keeps the shape, bytes and compute, and makes every generated token a
    # printable piece.
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    keep = torch.zeros(config.vocab_size, dtype=torch.bool)
    keep[[i for i, p in enumerate(pieces) if i not in tok.all_special_ids and not p.startswith("<0x")]] = True
    with torch.no_grad():
        model.lm_head.weight[~keep.to(model.lm_head.weight.device)] = 0
        for layer in model.model.layers[args.identity_after or len(model.model.layers):]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    model.generation_config.pad_token_id = tok.eos_token_id
    model.save_pretrained(args.out, max_shard_size="5GB")
    finish_hf_folder(args.out, rope_theta, add_bos_token=True, add_eos_token=False)
    n = sum(p.numel() for p in model.parameters())
    (args.out / "DUMMY_WEIGHTS.json").write_text(json.dumps({"shape": args.shape, "parameters": n, "seed": args.seed,
                                                             "identity_after": args.identity_after}))  # fmt: skip
    print(f"{args.out}: {args.shape}, {n / 1e9:.2f} B parameters, bf16, {time.perf_counter() - t0:.0f} s")


def copy_tokenizer(src: Path, out: Path):
    """The tokenizer files of `src` into `out`; the loaded tokenizer."""
    import shutil

    from transformers import AutoTokenizer

    for f in src.iterdir():
        if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens")) or f.name == "chat_template.jinja"):
            shutil.copy(f, out / f.name)
    return AutoTokenizer.from_pretrained(out)


def write_draft(target: Path, layers: int, out: Path) -> None:
    """The first `layers` layers of `target` (plus embeddings, final norm, head) as a checkpoint."""
    import shutil

    from safetensors.torch import load_file, save_file

    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        print(f"{out}: already there")
        return
    out.mkdir(parents=True, exist_ok=True)
    for f in target.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".safetensors.index.json")) and f.name != "config.json":
            shutil.copy(f, out / f.name)
    config = json.loads((target / "config.json").read_text())
    config["num_hidden_layers"] = layers
    (out / "config.json").write_text(json.dumps(config, indent=2))
    keep = {}
    for shard in sorted(target.glob("*.safetensors")):
        for name, t in load_file(shard).items():
            if not name.startswith("model.layers.") or int(name.split(".")[2]) < layers:
                keep[name] = t
    save_file(keep, out / "model.safetensors", metadata={"format": "pt"})
    n = sum(t.numel() for t in keep.values())
    (out / "DUMMY_WEIGHTS.json").write_text(json.dumps({"draft_of": target.name, "layers": layers, "parameters": n}))
    print(f"{out}: draft of {target.name}, {layers} layers, {n / 1e9:.2f} B parameters")


if __name__ == "__main__":
    main()
