"""Harness-side config of the vLLM engine: maps it to vLLM's OpenAI-server arguments.

No vllm import here. vLLM runs in its own interpreter: on CPU machines the `vllm-cpu` package
lives in a virtualenv of its own (scripts/install_vllm_cpu.sh), because it pins exact versions of
torch and transformers that the harness environment must not take; on GPU machines it is the
`vllm` package (`pip install 'hyperbench[vllm]'`), usually in the same environment.

Argument names were checked against vLLM 0.32's `vllm/engine/arg_utils.py`. `vllm_args` is a pure
function so that the mapping is tested without a server, which keeps the GPU-only options
(--quantization awq, EAGLE, --gpu-memory-utilization) covered on machines where vLLM cannot run.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from backends.base import ALL_SAMPLING_PARAMS, Capabilities, EngineConfig
from backends.base import parse_speculative as base_parse_speculative
from harness.errors import HyperbenchError

# `python -m` this module, not the `vllm` console script: vllm-cpu's script looks up metadata of
# a distribution named `vllm` and fails. The module is deprecated in 0.32 (in favour of
# vllm.entrypoints.launchers) but exists, with the same arguments, in every version since 0.4.
SERVER_MODULE = "vllm.entrypoints.openai.api_server"

# GET /v1/engine, the one route of the contract that vLLM lacks: an ASGI middleware loaded into
# vLLM's server with its own --middleware option, from a folder put on the server's PYTHONPATH
ROUTE_DIR = Path(__file__).resolve().parent / "route"
ROUTE_MIDDLEWARE = "hyperbench_vllm_route.EngineRoute"

# --quantization for each of our names. vLLM 0.32 has no bitsandbytes any more and quantizes
# nothing to INT8 on the fly (its one online INT8 mode covers MoE experts only), so int8 means a
# W8A8 INT8 checkpoint in the compressed-tensors format (what llm-compressor writes); for
# bitsandbytes INT8 of a plain checkpoint use the hf engine. fp8 is vLLM's online FP8 of a 16-bit
# checkpoint (or an FP8 checkpoint as it is).
QUANT_FLAGS: dict[str, str | None] = {
    "none": None,
    "int8": "compressed-tensors",
    "awq": "awq",
    "gptq": "gptq",
    "fp8": "fp8",
}
# quantizations that need a checkpoint already quantized that way (name -> what we look for)
CHECKPOINT_QUANTS = {"int8": "int8 (compressed-tensors)", "awq": "awq", "gptq": "gptq"}

# "<mode>:<model>" speculative modes -> vLLM's speculative_config method
DRAFT_METHODS = {"draft": "draft_model", "eagle": "eagle", "eagle3": "eagle3"}
SPECULATIVE_FORMS = ["ngram", "draft:<model>", "eagle:<model>", "eagle3:<model>"]

# vLLM 0.32's CPU attention kernel (v1/attention/backends/cpu_attn.py: get_supported_head_sizes)
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)

# On CPU, unless told, vLLM sizes the KV cache at gpu_memory_utilization x the node's RAM
# (~21 GiB of a 24 GiB machine): far too greedy for a shared box. 1 GiB holds ~23k tokens of
# SmolLM2-135M in float32.
CPU_DEFAULT_KV_CACHE_GB = 1.0


class VLLMConfig(EngineConfig):
    kind: Literal["vllm"] = "vllm"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights/activations dtype (auto: vLLM's rule, 16-bit for fp32 checkpoints)."
    )
    quant: Literal["none", "int8", "awq", "gptq", "fp8"] = Field(
        "none",
        description="vLLM --quantization. int8: a W8A8 INT8 compressed-tensors checkpoint "
        "(vLLM 0.32 has no bitsandbytes); awq/gptq: checkpoints quantized that way; fp8: online "
        "FP8. none refuses a quantized checkpoint, so results never mislabel one.",
    )
    speculative: str = Field(
        "none",
        description="Speculative decoding: none, ngram, draft:<model>, eagle:<model>, "
        "eagle3:<model> (model: built-in name, local folder or hub id).",
    )
    num_speculative_tokens: int = Field(4, ge=1, description="Tokens proposed per speculative step.")
    ngram_min: int | None = Field(None, ge=1, description="ngram: shortest prompt n-gram matched (vLLM's default: 5).")
    ngram_max: int | None = Field(None, ge=1, description="ngram: longest prompt n-gram matched (vLLM's default: 5).")
    max_model_len: int | None = Field(None, ge=16, description="Context length (default: the model's).")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1,
        description="Fraction of GPU memory vLLM preallocates for weights + KV cache (default: vLLM's, 0.92 in 0.32).",
    )
    max_num_seqs: int | None = Field(None, ge=1, description="Most sequences scheduled at once (default: vLLM's).")
    enable_prefix_caching: bool = Field(True, description="Reuse KV cache of shared prompt prefixes.")
    enforce_eager: bool = Field(
        False, description="No torch.compile / CUDA graphs: start-up without a minute of "
        "compiling (CPU too), slower decode on GPU."
    )
    load_format: Literal["auto", "dummy"] = Field(
        "auto", description="dummy: random weights of the checkpoint's shape (speed runs, no download)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: what the installed vLLM is built for (vllm-cpu: cpu)."
    )
    kv_cache_space_gb: float | None = Field(
        None,
        gt=0,
        description=f"KV cache size in GiB (--kv-cache-memory-bytes). Default: on GPU from "
        f"gpu_memory_utilization, on CPU {CPU_DEFAULT_KV_CACHE_GB:g}.",
    )

    lora: Path | None = Field(
        None,
        description="A peft LoRA adapter folder served unmerged (--enable-lora --lora-modules): requests "
        "for the served name get the adapter; the base answers as <name>-base.",
    )

    extra = "vllm"
    probe_module = "vllm"

    def capabilities(self) -> Capabilities:
        params = list(ALL_SAMPLING_PARAMS)
        if self.speculative != "none":
            params.remove("min_p")  # vLLM 0.32 rejects min_p while speculative decoding is on
        return Capabilities(
            sampling_params=params,
            quantizations=list(QUANT_FLAGS),
            speculative=list(SPECULATIVE_FORMS),
            prompt_logprobs=True,  # vLLM's own echo + logprobs on /v1/completions
        )

    def check(self) -> None:
        if self.lora is not None:
            from harness.lora import read_adapter

            read_adapter(self.lora)  # a peft LoRA folder, or one line saying what it is not
        mode, _ = parse_speculative(self.speculative)
        if mode != "ngram" and (self.ngram_min is not None or self.ngram_max is not None):
            raise HyperbenchError("ngram_min / ngram_max apply only to speculative=ngram")
        if self.ngram_min and self.ngram_max and self.ngram_min > self.ngram_max:
            raise HyperbenchError(f"ngram_min={self.ngram_min} must be <= ngram_max={self.ngram_max}")

    @classmethod
    def installed(cls) -> tuple[bool, str]:
        py = vllm_python()
        if py is None:
            return False, ("bash scripts/install_vllm_cpu.sh (CPU), pip install 'hyperbench[vllm]' "
                           "(GPU), or set HYPERBENCH_VLLM_PYTHON")  # fmt: skip
        return True, f"installed ({py})"

    # ------------------------------------------------------------------ launching (impure)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        py = vllm_python()
        return vllm_build(py) if py else "cuda"

    def server_command(self, host: str, port: int, model_path: str) -> list[str]:
        self.check()
        ok, why = self.installed()
        if not ok:
            raise HyperbenchError(f"vLLM is not installed here: {why}")
        py = vllm_python()
        build = vllm_build(py)
        if self.device != "auto" and build != self.device:
            raise HyperbenchError(
                f"device={self.device}, but the vLLM at {py} is the {build} build "
                "(vllm-cpu runs on CPU only; the vllm package needs a GPU)"
            )
        check_checkpoint_quant(self.quant, model_path)
        if build == "cpu":
            check_cpu_head_size(model_path)
        mode, draft = parse_speculative(self.speculative)
        draft_path = resolve_draft(draft) if draft else None
        if build == "cpu" and draft_path:
            check_cpu_head_size(draft_path)
        args = vllm_args(self, model_path, host, port, device=build, draft_path=draft_path)
        return [py, "-m", SERVER_MODULE, *args]

    api_key_env: ClassVar[str] = "VLLM_API_KEY"  # vLLM's own: its server reads it when --api-key is absent

    def server_env(self) -> dict[str, str]:
        path = [str(ROUTE_DIR)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        env = {
            "PYTHONPATH": os.pathsep.join(path),  # for ROUTE_MIDDLEWARE
            "VLLM_NO_USAGE_STATS": "1",  # offline machines: never phone home
        }
        if self.resolved_device() == "cpu":
            env["VLLM_TARGET_DEVICE"] = "cpu"
        return env

    def spec_counters(self, base_url: str) -> dict | None:
        """Speculative-decoding counters now (None when speculation is off)."""
        if self.speculative == "none":
            return None
        from backends.vllm.metrics import fetch_spec_counters

        return fetch_spec_counters(base_url, self.api_key)


# ---------------------------------------------------------------------- pure mapping


def parse_speculative(text: str) -> tuple[str, str | None]:
    """'none' | 'ngram' | '<draft|eagle|eagle3>:<model>' -> (mode, model or None)."""
    return base_parse_speculative(text, SPECULATIVE_FORMS, lambda _: f"use none, {', '.join(SPECULATIVE_FORMS)}")


def speculative_config(cfg: VLLMConfig, draft_path: str | None = None) -> dict | None:
    mode, draft = parse_speculative(cfg.speculative)
    if mode == "none":
        return None
    out: dict = {"num_speculative_tokens": cfg.num_speculative_tokens}
    if mode == "ngram":
        out["method"] = "ngram"
        if cfg.ngram_min is not None:
            out["prompt_lookup_min"] = cfg.ngram_min
        if cfg.ngram_max is not None:
            out["prompt_lookup_max"] = cfg.ngram_max
    else:
        out["method"] = DRAFT_METHODS[mode]
        out["model"] = draft_path or draft
    return out


def vllm_args(cfg: VLLMConfig, model_path: str, host: str, port: int, device: str = "cuda",
              draft_path: str | None = None) -> list[str]:
    """vLLM OpenAI-server arguments for `cfg` (device: the resolved one, cpu or cuda)."""
    args = [
        "--model", model_path,
        "--served-model-name", cfg.display_name(),
        "--host", host,
        "--port", str(port),
        "--dtype", cfg.dtype,
        "--load-format", cfg.load_format,
        # sampling defaults are the request's and vLLM's, never the checkpoint's
        # generation_config.json: a tuned or benched setting means what it says
        "--generation-config", "vllm",
        "--middleware", ROUTE_MIDDLEWARE,
    ]  # fmt: skip
    args.append("--enable-prefix-caching" if cfg.enable_prefix_caching else "--no-enable-prefix-caching")
    if (flag := QUANT_FLAGS[cfg.quant]) is not None:
        args += ["--quantization", flag]
    if cfg.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    if cfg.max_model_len is not None:
        args += ["--max-model-len", str(cfg.max_model_len)]
    if cfg.max_num_seqs is not None:
        args += ["--max-num-seqs", str(cfg.max_num_seqs)]
    kv_gb = cfg.kv_cache_space_gb
    if kv_gb is None and device == "cpu":
        kv_gb = CPU_DEFAULT_KV_CACHE_GB
    if kv_gb is not None:
        args += ["--kv-cache-memory-bytes", str(int(kv_gb * 2**30))]
    if cfg.enforce_eager:
        args.append("--enforce-eager")
    if (spec := speculative_config(cfg, draft_path)) is not None:
        args += ["--speculative-config", json.dumps(spec, separators=(",", ":"))]
    if cfg.lora is not None:
        args = _lora_args(cfg, args)
    if cfg.api_key:
        args += ["--api-key", cfg.api_key]
    return args


LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM's --max-lora-rank accepts


def _lora_args(cfg: VLLMConfig, args: list[str]) -> list[str]:
    """The adapter under the served name (what the harness asks for), the base beside it."""
    from harness.lora import read_adapter

    rank = int(read_adapter(cfg.lora)[0].get("r") or 16)
    name = cfg.display_name()
    args = [f"{name}-base" if a == name and i and args[i - 1] == "--served-model-name" else a
            for i, a in enumerate(args)]
    return args + ["--enable-lora", "--lora-modules", f"{name}={Path(cfg.lora).expanduser().resolve()}",
                   "--max-lora-rank", str(next((r for r in LORA_RANKS if r >= rank), rank))]


def checkpoint_quant(model_path: str) -> str | None:
    """The quantization a checkpoint declares in config.json, in our names (None: plain)."""
    try:
        qcfg = json.loads((Path(model_path) / "config.json").read_text()).get("quantization_config")
    except (OSError, ValueError):
        return None
    if not qcfg:
        return None
    method = str(qcfg.get("quant_method", "")).lower()
    if method == "compressed-tensors":
        weights = [g.get("weights") or {} for g in (qcfg.get("config_groups") or {}).values()]
        if any(w.get("type") == "int" and w.get("num_bits") == 8 for w in weights):
            return "int8"
        return "compressed-tensors"  # FP8, W4A16...: formats this config does not name
    return method or "unknown"


def check_checkpoint_quant(quant: str, model_path: str) -> None:
    """One-line errors where vLLM would fail deep in loading, or quietly run another quant."""
    if not (Path(model_path) / "config.json").is_file():
        return  # a hub id: vLLM reads it, we cannot
    have = checkpoint_quant(model_path)
    if quant in CHECKPOINT_QUANTS and have != quant:
        raise HyperbenchError(
            f"quant={quant} needs a checkpoint quantized as {CHECKPOINT_QUANTS[quant]}; "
            f"{model_path} is {have or 'not quantized'} (for INT8 of a plain checkpoint use the "
            "hf engine's bitsandbytes quant=int8, or fp8 here)"
        )
    if quant == "none" and have is not None:
        hint = f"say so with quant={have}" if have in QUANT_FLAGS else "this engine config names no such quant"
        raise HyperbenchError(f"{model_path} is a {have} checkpoint: {hint}")
    if quant == "fp8" and have not in (None, "fp8"):
        raise HyperbenchError(f"quant=fp8 needs a 16-bit or FP8 checkpoint; {model_path} is {have}")


def check_cpu_head_size(model_path: str) -> None:
    """vLLM's CPU attention kernel has fixed head sizes; another one starts fine and then fails
    every request ("Unsupported CPU attention configuration"), so refuse it up front."""
    try:
        cfg = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return
    cfg = cfg.get("text_config") or cfg
    heads, hidden = cfg.get("num_attention_heads"), cfg.get("hidden_size")
    head_dim = cfg.get("head_dim") or (hidden // heads if heads and hidden else None)
    if head_dim is not None and head_dim not in CPU_HEAD_SIZES:
        raise HyperbenchError(
            f"vLLM's CPU attention supports head sizes {', '.join(map(str, CPU_HEAD_SIZES))}; "
            f"{model_path} has head_dim {head_dim}"
        )


def resolve_draft(name: str) -> str:
    """A draft/EAGLE model (built-in name, local folder, or hub id where the hub is reachable)
    -> its local folder, staged like the target model."""
    from harness.models import resolve_model

    resolved = resolve_model(name)
    if resolved.path is None:
        raise HyperbenchError(f"draft model {name}: vLLM needs an HF folder, not only a GGUF")
    return str(resolved.path)


# ---------------------------------------------------------------------- finding vLLM


def default_venv() -> Path:
    from harness.models import cache_dir

    return Path(os.environ.get("HYPERBENCH_VLLM_VENV") or cache_dir() / "venv-vllm")


def vllm_python() -> str | None:
    """Interpreter that has vLLM: $HYPERBENCH_VLLM_PYTHON, else the vllm-cpu venv made by
    scripts/install_vllm_cpu.sh, else this one if it imports vllm; None if none does."""
    if env := os.environ.get("HYPERBENCH_VLLM_PYTHON"):
        return env if Path(env).is_file() else None
    venv = default_venv()
    py = venv / "bin" / "python"
    if py.is_file() and any(venv.glob("lib/python*/site-packages/vllm*.dist-info")):
        return str(py)
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    return None


_BUILD_PROBE = """
from importlib import metadata
try:
    v = metadata.version("vllm")
except metadata.PackageNotFoundError:
    v = metadata.version("vllm-cpu") + "+cpu"
print("cpu" if "cpu" in v else "cuda")
"""


@functools.lru_cache(maxsize=8)
def vllm_build(python: str) -> str:
    """'cpu' or 'cuda': what the vLLM of `python` is built for (vLLM's own rule: a CPU build's
    version carries 'cpu'). Reads package metadata only, in ~50 ms."""
    try:
        out = subprocess.run([python, "-c", _BUILD_PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HyperbenchError(f"cannot run the vLLM interpreter {python}: {e}") from None
    if out.returncode != 0:
        raise HyperbenchError(f"no vLLM in {python} (set HYPERBENCH_VLLM_PYTHON or run scripts/install_vllm_cpu.sh)")
    return out.stdout.strip()
