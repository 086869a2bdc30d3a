"""Install FlashAttention-2 into a CUDA image from a prebuilt wheel, when one matches.

flash-attn is source-only on the package registry and compiling it takes hours of CPU; its
authors publish prebuilt wheels on GitHub for each (flash-attn version, CUDA major, torch
major.minor, C++11 ABI, Python) combination. This picks the one that matches the torch in the
image and installs it. When none matches (a torch newer than the last flash-attn release, a
network that cannot reach GitHub), the image is built without it and the hf engine uses SDPA:
`--attn flash_attention_2` then fails with an error that says so, and `--attn sdpa` works.

    python flash_attn.py [--version 2.8.3] [--wheel URL|PATH|none] [--dry-run]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys

RELEASES = "https://github.com/Dao-AILab/flash-attention/releases/download"


def wheel_name(version: str, torch_version: str, cuda_version: str, cxx11_abi: bool, python: str,
               platform_tag: str) -> str:
    """The file name flash-attn's own setup.py looks for (2.7 and later: CUDA major only)."""
    t_major, t_minor = torch_version.split("+")[0].split(".")[:2]
    cuda_major = cuda_version.split(".")[0]
    abi = "TRUE" if cxx11_abi else "FALSE"
    return (f"flash_attn-{version}+cu{cuda_major}torch{t_major}.{t_minor}cxx11abi{abi}"
            f"-{python}-{python}-{platform_tag}.whl")


def wheel_url(version: str, **kw) -> str:
    return f"{RELEASES}/v{version}/{wheel_name(version, **kw)}"


def matching_url(version: str) -> str | None:
    import torch

    if not torch.version.cuda:
        print("flash-attn: this torch has no CUDA: not installed (SDPA is used)")
        return None
    return wheel_url(version, torch_version=torch.__version__, cuda_version=torch.version.cuda,
                     cxx11_abi=bool(torch._C._GLIBCXX_USE_CXX11_ABI),
                     python=f"cp{sys.version_info.major}{sys.version_info.minor}",
                     platform_tag=f"linux_{platform.machine()}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--version", default=os.environ.get("FLASH_ATTN_VERSION", "2.8.3"))
    p.add_argument("--wheel", default=os.environ.get("FLASH_ATTN_WHEEL", ""),
                   help="a wheel URL or file to install instead; 'none' to skip")
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args()
    if args.wheel.lower() == "none":
        print("flash-attn: skipped (FLASH_ATTN_WHEEL=none)")
        return 0
    url = args.wheel or matching_url(args.version)
    if url is None:
        return 0
    print(f"flash-attn: {url}")
    if args.dry_run:
        return 0
    pip = os.environ.get("PIP_SH", "/opt/hyperbench/pip.sh")
    r = subprocess.run(["sh", pip, "install", url])
    if r.returncode != 0:
        if args.wheel:  # asked for by name: its failure is the build's
            return r.returncode
        # no wheel for this torch/CUDA/Python (HTTP 404), or GitHub unreachable: SDPA it is
        print(f"flash-attn: no prebuilt wheel installed (pip exit {r.returncode}); the hf engine uses SDPA")
        return 0
    # the CUDA extension must link against this torch: an ABI mismatch shows as an undefined
    # symbol at import. (A build machine has no GPU driver: other import errors are not judged.)
    check = subprocess.run([sys.executable, "-c", "import flash_attn_2_cuda"], capture_output=True, text=True)
    last = (check.stderr.strip().splitlines() or [""])[-1]
    if check.returncode != 0 and "undefined symbol" in last:
        print(f"flash-attn: the wheel does not match this torch ({last[:200]}); uninstalled, the hf engine uses SDPA")
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "flash-attn"], check=False)
        return 1 if args.wheel else 0
    print("flash-attn installed" + (f" (import here: {last[:200]})" if check.returncode else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
