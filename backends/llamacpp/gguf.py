"""Turn what the harness resolved (an HF folder or a .gguf) into the GGUF llama.cpp will serve.

HF folder -> GGUF uses llama.cpp's own `convert_hf_to_gguf.py` (with its `conversion/` and
`gguf-py/` folders, matching the llama.cpp inside llama-cpp-python 0.3.36), taken from the
llama-cpp-python source tarball: it knows every architecture's tensor names and every tokenizer
flavour (SentencePiece, and the BPE pre-tokenizers by hash) and a hand-written gguf-py writer
would not. The extracted converter (~2 MB) is cached; the tarball comes from the wheel cache
(scripts/build_llamacpp_wheel.sh keeps it) or, failing that, `pip download` (the package
registry is reachable where the hub is not). The converter needs torch and transformers: a .gguf
given as is needs neither.

Quantized types are then made by `llama_cpp.llama_model_quantize` from the checkpoint's own
precision. Every product is cached under `<cache>/gguf/<model-hash>/<type>.gguf`, written to a
temp name and renamed, under a file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from harness.errors import HyperbenchError

LLAMACPP_VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{LLAMACPP_VERSION}.tar.gz"
GGUF_MAGIC = b"GGUF"
FLOAT_TYPES = ("f32", "f16", "bf16")  # what the converter writes without quantizing
QUANT_TYPES = ("q8_0", "q4_0", "q4_k_m", "q5_k_m")  # what llama_model_quantize makes
# our names -> llama.cpp's LLAMA_FTYPE_* / gguf LlamaFileType names
FTYPE_NAMES = {
    "f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0",
    "q4_0": "MOSTLY_Q4_0", "q4_k_m": "MOSTLY_Q4_K_M", "q5_k_m": "MOSTLY_Q5_K_M",
}  # fmt: skip
CHECKPOINT_DTYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def log(msg: str) -> None:
    print(f"[llamacpp] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    from harness.models import cache_dir

    return cache_dir()


# ---------------------------------------------------------------------------- reading GGUFs


def check_gguf(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise HyperbenchError(f"cannot read {path}: {e.strerror}") from None
    if magic != GGUF_MAGIC:
        raise HyperbenchError(f"{path} is not a GGUF file (bad magic)")


def gguf_info(path: Path) -> dict:
    """What a GGUF declares about itself: weight type (our lower-case names: 'q4_1'...),
    architecture and trained context length."""
    check_gguf(path)
    from gguf import GGUFReader, LlamaFileType

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as e:
        raise HyperbenchError(f"{path} is a damaged GGUF file: {e}") from None

    def get(key):
        field = reader.get_field(key)
        return None if field is None else field.contents()

    ftype = get("general.file_type")
    name = "unknown" if ftype is None else LlamaFileType(int(ftype)).name
    arch = get("general.architecture") or "unknown"
    return {
        "file_type": name.removeprefix("MOSTLY_").removeprefix("ALL_").lower(),
        "architecture": arch,
        "context_length": get(f"{arch}.context_length"),
    }


def gguf_file_type(path: Path) -> str:
    return gguf_info(path)["file_type"]


# ---------------------------------------------------------------------------- the entry point


def ensure_gguf(model_path: str | Path, quant: str = "native", cache: Path | None = None) -> Path:
    """The GGUF to serve for `model_path` (HF folder or .gguf) at weight type `quant`."""
    if quant != "native" and quant not in FLOAT_TYPES + QUANT_TYPES:
        raise HyperbenchError(
            f"unsupported quant type {quant!r}: choose one of native, "
            + ", ".join(FLOAT_TYPES + QUANT_TYPES)
        )
    path = Path(model_path).expanduser()
    if not path.exists():
        raise HyperbenchError(f"model path {path} does not exist")
    cache = cache or cache_root()
    if path.is_file():
        return _from_gguf(path, quant, cache)
    if not (path / "config.json").is_file():
        raise HyperbenchError(f"{path} is neither an HF model folder (no config.json) nor a .gguf")
    beside = sorted(path.glob("*.gguf"))
    if quant == "native" and len(beside) == 1:
        check_gguf(beside[0])  # the harness treats one GGUF beside the weights as the same model
        return beside[0]
    return _from_hf(path, quant, cache)


def _from_gguf(path: Path, quant: str, cache: Path) -> Path:
    have = gguf_file_type(path)
    if quant in ("native", have):
        return path
    if have not in FLOAT_TYPES:
        raise HyperbenchError(
            f"{path.name} is already quantized ({have}); requantizing it to {quant} would stack "
            "two losses: use quant=native, or give an HF folder or an f32/f16/bf16 GGUF"
        )
    out = cache / "gguf" / content_hash(path) / f"{quant}.gguf"
    return _cached(out, lambda tmp: quantize(path, tmp, quant))


def _from_hf(folder: Path, quant: str, cache: Path) -> Path:
    base = checkpoint_type(folder)
    target = base if quant == "native" else quant
    out_dir = cache / "gguf" / content_hash(folder)
    if target in FLOAT_TYPES:
        return _cached(out_dir / f"{target}.gguf", lambda tmp: convert_hf(folder, tmp, target))
    src = _cached(out_dir / f"{base}.gguf", lambda tmp: convert_hf(folder, tmp, base))
    return _cached(out_dir / f"{target}.gguf", lambda tmp: quantize(src, tmp, target))


def checkpoint_type(folder: Path) -> str:
    """The precision the weights are stored in (config.json's dtype), as a GGUF float type."""
    cfg = json.loads((folder / "config.json").read_text())
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return CHECKPOINT_DTYPES.get(str(dtype).removeprefix("torch."), "f16")


# ---------------------------------------------------------------------------- cache plumbing


def content_hash(path: Path) -> str:
    """A cheap identity of a model: every file's name and size, small files' full bytes, and the
    first and last MiB of large ones (hashing 15 GB of weights would take a minute)."""
    h = hashlib.sha256(f"llama-cpp-python {LLAMACPP_VERSION}\n".encode())
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f.suffix == ".gguf" and f.parent == path:
            continue  # a GGUF beside the weights is not part of the HF checkpoint
        size = f.stat().st_size
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{size}\n".encode())
        with open(f, "rb") as fh:
            if size <= 4 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def _cached(target: Path, build: Callable[[Path], None]) -> Path:
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, or when the process dies
        if target.is_file():  # built by another process while we waited
            return target
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            build(Path(tmp))
            check_gguf(Path(tmp))
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return target


# ---------------------------------------------------------------------------- converting


def convert_hf(folder: Path, out: Path, outtype: str) -> None:
    missing = [m for m in ("torch", "transformers", "sentencepiece") if not importlib.util.find_spec(m)]
    if missing:
        raise HyperbenchError(
            f"converting the HF folder {folder} to GGUF needs {', '.join(missing)} "
            "(pip install 'hyperbench[hf]'), or serve a .gguf file instead"
        )
    script = converter_dir() / "convert_hf_to_gguf.py"
    log(f"converting {folder} to a {outtype} GGUF with llama.cpp's convert_hf_to_gguf.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # use the converter's own gguf-py, not the installed one
    proc = subprocess.run(
        [sys.executable, str(script), str(folder), "--outfile", str(out), "--outtype", outtype],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        sys.stderr.write("\n".join(lines[-30:]) + "\n")
        raise HyperbenchError(
            f"convert_hf_to_gguf.py failed on {folder}: {(lines or ['no output'])[-1].strip()}"
        )


def ensure_lora_gguf(adapter: str | Path, base: str | Path, cache: Path | None = None) -> Path:
    """A GGUF LoRA file llama.cpp applies at load: a .gguf as it is; a peft adapter folder
    converted (f32, cached by content) with llama.cpp's convert_lora_to_gguf.py, which reads
    the base model's HF folder for its architecture."""
    adapter = Path(adapter).expanduser()
    if adapter.is_file():
        check_gguf(adapter)
        return adapter
    from harness.lora import read_adapter

    read_adapter(adapter)  # a LoRA adapter folder, or one line saying what it is not
    base = Path(base)
    if not (base.is_dir() and (base / "config.json").is_file()):
        raise HyperbenchError(f"converting the peft adapter {adapter} to a GGUF LoRA needs the base model's HF "
                              f"folder (--model is {base}): give the HF folder, or a GGUF LoRA file")
    digest = hashlib.sha256(b"".join(
        (adapter / f).read_bytes() for f in sorted(os.listdir(adapter)) if f.startswith("adapter_"))).hexdigest()[:16]
    out = (cache or cache_root()) / "gguf" / f"lora-{digest}" / "adapter-f32.gguf"
    return _cached(out, lambda tmp: convert_lora(adapter, base, tmp))


def convert_lora(adapter: Path, base: Path, out: Path) -> None:
    script = converter_dir() / "convert_lora_to_gguf.py"
    log(f"converting the LoRA adapter {adapter} to GGUF with llama.cpp's convert_lora_to_gguf.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("NO_LOCAL_GGUF", None)
    proc = subprocess.run([sys.executable, str(script), "--base", str(base), "--outtype", "f32",
                           "--outfile", str(out), str(adapter)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        sys.stderr.write("\n".join(lines[-30:]) + "\n")
        raise HyperbenchError(f"convert_lora_to_gguf.py failed on {adapter}: {(lines or ['no output'])[-1].strip()}")


def quantize(src: Path, out: Path, quant: str) -> None:
    import llama_cpp

    log(f"quantizing {src.name} to {quant}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_" + FTYPE_NAMES[quant])
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params)
    if rc != 0:
        raise HyperbenchError(f"llama_model_quantize failed ({rc}) making {quant} from {src}")


def converter_dir(cache: Path | None = None) -> Path:
    """llama.cpp's HF->GGUF converter, extracted once from the llama-cpp-python sdist."""
    target = (cache or cache_root()) / "llamacpp" / f"converter-{LLAMACPP_VERSION}"
    # (a folder extracted before the LoRA converter was kept lacks it: extracted again)
    scripts = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py")
    if all((target / f).is_file() for f in scripts):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".converter.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all((target / f).is_file() for f in scripts):
            return target
        sdist = _sdist(cache or cache_root())
        tmp = Path(tempfile.mkdtemp(prefix=".converter.", dir=target.parent))
        try:
            root = f"llama_cpp_python-{LLAMACPP_VERSION}/vendor/llama.cpp/"
            keep = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
            with tarfile.open(sdist) as tar:
                members = [
                    m for m in tar.getmembers()
                    if m.name.startswith(root) and m.name[len(root):].startswith(keep)
                ]  # fmt: skip
                for m in members:
                    m.name = m.name[len(root):]
                tar.extractall(tmp, members=members, filter="data")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _sdist(cache: Path) -> Path:
    wheels = Path(os.environ.get("WHEEL_DIR") or cache / "wheels")
    found = wheels / SDIST
    if found.is_file():
        return found
    wheels.mkdir(parents=True, exist_ok=True)
    log(f"fetching the llama-cpp-python {LLAMACPP_VERSION} source tarball for its converter")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
         f"llama-cpp-python=={LLAMACPP_VERSION}", "-d", str(wheels)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0 or not found.is_file():
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise HyperbenchError(
            f"cannot get llama.cpp's converter: `pip download llama-cpp-python=={LLAMACPP_VERSION}"
            f"` failed ({why}); put {SDIST} in {wheels} (or give a .gguf)"
        )
    return found
