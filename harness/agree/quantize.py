"""`hyperbench quantize`: GGUF variants of one model's weights, made ahead of a bench or agree run.

The conversion and quantization are llama.cpp's own (backends/llamacpp/gguf.py: the HF folder
goes through `convert_hf_to_gguf.py` at its checkpoint precision, then `llama_model_quantize`),
and land in the same cache the llama.cpp engine serves from, so a later
`--engine llamacpp --quant q8_0` (or `agree --engines llamacpp:q8_0`) starts without converting.

Bits per weight are counted over every tensor of the file (what llama.cpp prints as BPW): the
bytes the tensors take times 8 over their element count. k-quants keep some tensors (token
embeddings, output) at higher precision, so q4_k_m is ~5 bits, not 4.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.errors import HyperbenchError


@dataclass
class GGUFVariant:
    quant: str  # what was asked for
    file_type: str  # what the file says it is
    path: Path
    file_bytes: int
    tensor_bytes: int
    n_params: int

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.tensor_bytes / self.n_params if self.n_params else float("nan")

    def to_json(self) -> dict:
        return {**asdict(self), "path": str(self.path), "bits_per_weight": self.bits_per_weight}


def parse_types(text: str | list[str]) -> list[str]:
    """'q4_k_m,q8_0' -> ['q4_k_m', 'q8_0'], every name checked before anything is built."""
    from backends.llamacpp.gguf import FLOAT_TYPES, QUANT_TYPES

    items = text.split(",") if isinstance(text, str) else list(text)
    types = [t.strip().lower() for t in items if t.strip()]
    if not types:
        raise HyperbenchError("--to needs at least one GGUF type, e.g. --to q4_k_m,q8_0")
    for t in types:
        if t not in FLOAT_TYPES + QUANT_TYPES:
            raise HyperbenchError(
                f"unsupported quant type {t!r}: choose from {', '.join(FLOAT_TYPES + QUANT_TYPES)}"
            )
    if any(t in QUANT_TYPES for t in types) and importlib.util.find_spec("llama_cpp") is None:
        raise HyperbenchError("quantizing needs llama-cpp-python: pip install 'hyperbench[llamacpp]'")
    return list(dict.fromkeys(types))


def model_source(model: str) -> Path:
    """The HF folder or float GGUF the variants are made from."""
    from harness.models import resolve_model

    resolved = resolve_model(model)
    return Path(resolved.path or resolved.gguf)


def describe(path: Path, quant: str) -> GGUFVariant:
    from backends.llamacpp.gguf import check_gguf, gguf_file_type

    check_gguf(path)
    from gguf import GGUFReader

    reader = GGUFReader(path)
    tensor_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    return GGUFVariant(quant=quant, file_type=gguf_file_type(path), path=path,
                       file_bytes=path.stat().st_size, tensor_bytes=tensor_bytes, n_params=n_params)


def run(model: str, types: list[str]) -> list[GGUFVariant]:
    """Make (or find in the cache) each GGUF type of `model`; returns what each file holds."""
    from backends.llamacpp.gguf import ensure_gguf

    source = model_source(model)
    return [describe(ensure_gguf(source, quant), quant) for quant in types]
