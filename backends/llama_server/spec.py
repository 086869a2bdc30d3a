"""Harness-side config of the `llama-server` engine: llama.cpp's own C++ server, built by
scripts/build_llama_server.sh from the llama.cpp that llama-cpp-python vendors, started with the
same GGUF and the same settings as the `llamacpp` engine (whose fields it shares), so the two
compare like for like: `--parallel N` slots in one unified KV cache (`--kv-unified`, as
llama-server sets it for its default slot count), `-ngl`, `-fa`, `-c`, `-b`, `-ctk/-ctv`, `-t`.

Sampling defaults are set to vLLM's (every filter off) with llama-server's own flags, so an
unasked parameter means the same on every engine. What it cannot do is declared:
- prompt logprobs with `echo` are wrong in llama-server (llama.cpp #27174): `score` refuses
  loglikelihood tasks on it and runs generative ones;
- `repetition_penalty` is not a field it reads (it has `repeat_penalty`), nor is `min_tokens`
  (fixed lengths come from `ignore_eos`, which it honours).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal

from backends.base import Capabilities
from backends.llamacpp.spec import (AUTO_PARALLEL, MIN_CTX_PER_SEQUENCE, LlamaCppConfig, draft_model,
                                     kv_type_for, parse_speculative)
from harness.errors import HyperbenchError

BUILD_HINT = "build it once with: bash scripts/build_llama_server.sh (or set HYPERBENCH_LLAMA_SERVER)"
SAMPLING_PARAMS = ["temperature", "top_p", "top_k", "min_p", "seed", "stop", "ignore_eos"]


def binary() -> Path | None:
    """The llama-server to run: $HYPERBENCH_LLAMA_SERVER, else the newest one that
    scripts/build_llama_server.sh cached (None: not built)."""
    if env := os.environ.get("HYPERBENCH_LLAMA_SERVER"):
        return Path(env).expanduser()
    from harness.models import cache_dir

    built = sorted((cache_dir() / "llama-server").glob("*/llama-server"), key=lambda p: p.stat().st_mtime)
    return built[-1] if built else None


def offloads(server: Path, n_gpu_layers: int) -> bool:
    """Whether this llama-server puts layers on a GPU: `--list-devices` names the devices other
    than the CPU that its build finds here ("(none)" on a CPU build or without a driver). BLAS
    runs on the CPU though it is listed."""
    import subprocess

    if n_gpu_layers == 0:
        return False
    try:
        out = subprocess.run([str(server), "--list-devices"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return False  # check() has said whether it runs; the flag then falls back to llama-server's default
    names = [line.strip().split(":")[0] for line in out.splitlines()[1:] if ":" in line]
    return any(not n.startswith("BLAS") for n in names)


class LlamaServerConfig(LlamaCppConfig):
    kind: Literal["llama-server"] = "llama-server"  # type: ignore[assignment]

    extra: ClassVar[str] = "llamacpp"  # the GGUF conversion is the llamacpp engine's

    @classmethod
    def installed(cls) -> tuple[bool, str]:
        path = binary()
        if path is None or not os.access(path, os.X_OK):
            return False, f"no llama-server binary{f' at {path}' if path else ''}: {BUILD_HINT}"
        return True, str(path)

    def capabilities(self) -> Capabilities:
        return Capabilities(
            sampling_params=SAMPLING_PARAMS,
            quantizations=super().capabilities().quantizations,
            speculative=["draft:<model>"],
            prompt_logprobs=False,  # llama.cpp #27174: its echo logprobs are wrong
        )

    def check(self) -> None:
        if parse_speculative(self.speculative)[0] == "ngram":
            raise HyperbenchError("speculative=ngram: the llama-server engine here maps draft:<model> "
                                  "only (use --engine llamacpp for prompt lookup)")
        ok, why = self.installed()
        if not ok:
            raise HyperbenchError(why)
        super().check()

    def check_parallel(self, spec: str) -> None:
        # llama-server speculates in every slot: only the room per sequence is checked
        if self.cells() // self.slots() < MIN_CTX_PER_SEQUENCE:
            super().check_parallel("none")

    def slots(self) -> int:
        return self.parallel if self.parallel is not None else AUTO_PARALLEL  # with a draft too

    def server_command(self, host: str, port: int, model_path: str) -> list[str]:
        from backends.llamacpp.gguf import ensure_gguf, gguf_file_type  # converts an HF folder once (cached)

        gguf = ensure_gguf(model_path, self.quant)
        kv = self.kv_cache_type if self.kv_cache_type != "auto" else kv_type_for(gguf_file_type(gguf))
        args = [
            str(binary()), "-m", str(gguf), "--alias", self.display_name(),
            "--host", host, "--port", str(port),
            "-c", str(self.cells()), "-b", str(self.n_batch), "-ub", str(min(self.n_batch, 512)),
            "-np", str(self.slots()), "--kv-unified",
            "-ngl", str(self.n_gpu_layers if self.n_gpu_layers >= 0 else 999),
            "-fa", "on" if self.flash_attn else "off",
            "-ctk", kv, "-ctv", kv,
            # vLLM's sampling defaults: every filter off unless a request asks
            "--temp", "1.0", "--top-k", "0", "--top-p", "1.0", "--min-p", "0.0", "--repeat-penalty", "1.0",
            "--no-webui", "--metrics", "--no-warmup",
        ]  # fmt: skip
        idle = self.cache_idle_slots  # unset: as the llamacpp engine decides it (off on a GPU)
        if idle is None:
            idle = not offloads(binary(), self.n_gpu_layers)
        args.append("--cache-idle-slots" if idle else "--no-cache-idle-slots")
        if self.n_threads is not None:
            args += ["-t", str(self.n_threads), "-tb", str(self.n_threads)]
        if (draft := draft_model(self.speculative)) is not None:
            from backends.base import resolve_draft

            draft_gguf = ensure_gguf(resolve_draft(draft), "native" if draft.endswith(".gguf") else self.quant)
            args += ["-md", str(draft_gguf), "--spec-draft-n-max", str(self.num_speculative_tokens),
                     "-ngld", str(self.n_gpu_layers if self.n_gpu_layers >= 0 else 999)]  # fmt: skip
        if self.api_key:
            args += ["--api-key", self.api_key]
        return args

    def spec_counters(self, base_url: str) -> dict | None:
        return None  # llama-server reports no per-draft counters on an endpoint we read
