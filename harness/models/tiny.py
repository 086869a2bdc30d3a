"""tiny-llama: a random 2-layer Llama with a SentencePiece tokenizer trained here, built from
code in about a second (no hub, no download), byte-identical for a given seed.

torch / transformers are imported only inside the builders."""

from __future__ import annotations

import random
from pathlib import Path

from harness.models.cache import ResolvedModel, cache_dir, cached_build, finish_hf_folder


# Zephyr-style: plain-text role markers, eos closes each turn (so generation stops there).
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def ensure_tiny_llama(cache: Path | None = None, seed: int = 0) -> ResolvedModel:
    # v2: head_dim 32 (2 heads, 1 KV head), the smallest head size vLLM's CPU attention supports
    target = (cache or cache_dir()) / "models" / f"tiny-llama-v2-seed{seed}"
    cached_build(target, lambda tmp: build_tiny_llama(tmp, seed))
    return ResolvedModel(name="tiny-llama", path=target, gguf=None, builtin=True)


def _tiny_corpus() -> list[str]:
    """A few thousand short English sentences, the same on every call (fixed RNG)."""
    rng = random.Random(1234)
    nouns = (
        "time person year day thing world life hand child eye woman man place week case point "
        "company number group problem fact answer question model engine server token memory "
        "speed test river city house road tree book light water music story night morning "
        "friend teacher student doctor market garden window paper capital country language "
        "history science data system result bird cat dog ship train letter table kitchen"
    ).split()
    verbs = (
        "makes takes finds gives tells asks uses reads writes builds measures answers visits "
        "sees likes wants needs runs opens closes carries follows"
    ).split()
    adjs = (
        "good new first last long great little old right big high different small large next "
        "early young important bad fast slow bright quiet green red blue warm cold"
    ).split()
    facts = [
        "The capital of France is Paris.", "The capital of Italy is Rome.",
        "The capital of Germany is Berlin.", "The capital of England is London.",
        "Water boils at 100 degrees.", "There are 7 days in a week and 12 months in a year.",
        "Hello! How are you today? I am fine, thank you.",
    ]  # fmt: skip
    templates = [
        "The {a} {n} {v} the {n2}.",
        "A {n} {v} a {a} {n2} in the {n3}.",
        "What {v} the {n} of the {n2}?",
        "Every {n} {v} {a} {n2}s, and the {n3} {v2} it.",
        "Why does the {a} {n} need {d} {n2}s?",
        "In {y}, the {n} {v} {d} {a} {n2}s.",
    ]
    sentences = list(facts)
    for _ in range(2000):
        sentences.append(
            rng.choice(templates).format(
                a=rng.choice(adjs), n=rng.choice(nouns), n2=rng.choice(nouns),
                n3=rng.choice(nouns), v=rng.choice(verbs), v2=rng.choice(verbs),
                d=rng.randint(2, 99), y=rng.randint(1800, 2030),
            )
        )  # fmt: skip
    return sentences


def train_tiny_tokenizer(out_dir: Path, vocab_size: int = 1000):
    """Train a Llama-2-style SentencePiece BPE model and its exact tokenizers.json twin.

    tokenizer.model is what llama.cpp's converter reads (it rejects home-trained HF BPE
    pre-tokenizers); tokenizer.json is what transformers reads. The json is built from the
    model's pieces and scores directly, because transformers' own converter needs protobuf.
    """
    import io

    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import generate_merges

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_tiny_corpus()), model_writer=proto, vocab_size=vocab_size,
        model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True,
        split_digits=True, character_coverage=1.0, num_threads=1,  # 1 thread: deterministic
        normalization_rule_name="identity", remove_extra_whitespaces=False,  # as Llama-2
        minloglevel=2,
    )  # fmt: skip
    (out_dir / "tokenizer.model").write_bytes(proto.getvalue())

    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {p: i for i, p in enumerate(pieces)}
    scores = {p: sp.get_score(i) for i, p in enumerate(pieces)}
    specials = ["<unk>", "<s>", "</s>"]
    backend = Tokenizer(
        BPE(
            vocab=vocab, merges=generate_merges(vocab, scores, skip_tokens=set(specials)),
            unk_token="<unk>", fuse_unk=True, byte_fallback=True,
        )
    )  # fmt: skip
    # Llama-2's "legacy" pipeline: a space before every text segment (also after a special
    # token), which is what sentencepiece and llama.cpp's SPM tokenizer do.
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        pad_token="</s>", model_max_length=2048, clean_up_tokenization_spaces=False,
    )  # fmt: skip
    tok.chat_template = TINY_CHAT_TEMPLATE
    # save_jinja_files=False keeps the template in tokenizer_config.json, where 4.x and
    # llama.cpp's converter look for it
    tok.save_pretrained(out_dir, save_jinja_files=False)
    return tok


def build_tiny_llama(out_dir: Path, seed: int = 0) -> Path:
    """Write a random tiny Llama + tokenizer as an HF folder; byte-identical for a given seed."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = train_tiny_tokenizer(out_dir)
    rope_theta = 10000.0
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    # pad in generation_config only: pad_token_id in the config would zero the </s> embedding
    model.generation_config.pad_token_id = tok.eos_token_id
    model.save_pretrained(out_dir)
    # add_bos_token spelled out for llama.cpp's converter (it reads tokenizer_config.json)
    finish_hf_folder(out_dir, rope_theta, add_bos_token=True, add_eos_token=False)
    return out_dir
