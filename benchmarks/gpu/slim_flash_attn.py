"""Cut flash-attn's source tarball down to an inference build for head dim 128 that compiles in
minutes on one GPU node (the lent H100 has no wheel for its torch, and the full build compiles
73 CUDA files, forward and backward for six head dims: hours).

    python benchmarks/gpu/slim_flash_attn.py flash_attn-2.8.3.tar.gz OUT.tar.gz

What the slim build keeps and drops (flash-attn's own switches, each with its own input check):
- CUDA sources: only the head-dim-128 kernels (fp16 and bf16, causal or not, plain and split-KV;
  the backward files stay as empty shells: `FLASHATTENTION_DISABLE_BACKWARD`);
- the dispatch on head dim takes 97..128 only (Llama-2-7B, Mistral, Qwen2-7B have 128); any
  other head dim is refused with an error naming this build, not a missing-symbol crash;
- no dropout, ALiBi, softcap or sliding-window (local) attention (inference on Llama-shaped
  models needs none; each is refused with flash-attn's own message if asked for);
- the sdist's ROCm, Hopper (FA3), test and CUTLASS example/test/tool trees (55 MB -> 26 MB).

The Python package (`flash_attn.flash_attn_func`, `..._varlen_func`, `..._with_kvcache`) is
unchanged, so transformers' `attn_implementation="flash_attention_2"` uses it as it would a full
build. Build it on the GPU node with `benchmarks/gpu/run.sh fa2 CARRY`.
"""

from __future__ import annotations

import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

DROP = ["csrc/composable_kernel", "csrc/flash_attn_ck", "hopper", "tests", "csrc/cutlass/docs",
        "csrc/cutlass/examples", "csrc/cutlass/test", "csrc/cutlass/tools", "csrc/cutlass/python",
        "csrc/cutlass/media"]  # fmt: skip
FLAGS = ["BACKWARD", "DROPOUT", "ALIBI", "SOFTCAP", "LOCAL"]
HEADDIM = """#define HEADDIM_SWITCH(HEADDIM, ...)   \\
  [&] {                                    \\
    TORCH_CHECK(HEADDIM > 96 && HEADDIM <= 128, "this flash-attn build (hyperbench slim_flash_attn.py) has head dim 128 only, not ", HEADDIM); \\
    constexpr static int kHeadDim = 128;   \\
    return __VA_ARGS__();                  \\
  }()
"""


def slim(root: Path) -> None:
    for d in DROP:
        shutil.rmtree(root / d, ignore_errors=True)

    setup = root / "setup.py"
    text = setup.read_text()
    kept = dropped = 0

    def source(m: re.Match) -> str:
        nonlocal kept, dropped
        name = m.group(1)
        if name.endswith(".cu") and "hdim128_" not in name:
            dropped += 1
            return ""
        kept += 1
        return m.group(0)

    text = re.sub(r'[ \t]*"(csrc/flash_attn/[^"]+)",\n', source, text)
    for flag in FLAGS:
        # the first one is in the CUDA build's nvcc flags (a second BACKWARD is in the ROCm build's)
        text, n = re.subn(rf'# "-DFLASHATTENTION_DISABLE_{flag}",', f'"-DFLASHATTENTION_DISABLE_{flag}",', text, count=1)
        if n != 1:
            raise SystemExit(f"setup.py: no commented-out -DFLASHATTENTION_DISABLE_{flag} to switch on")
    if kept != 13 or dropped != 60:  # flash_api.cpp + 12 hdim128 files of 72
        raise SystemExit(f"setup.py: expected to keep 13 sources and drop 60, kept {kept}, dropped {dropped}")
    setup.write_text(text)

    switch = root / "csrc/flash_attn/src/static_switch.h"
    text = switch.read_text()
    new, n = re.subn(r"#define HEADDIM_SWITCH\(HEADDIM, \.\.\.\).*?\}\(\)\n", lambda _: HEADDIM, text, flags=re.S)
    if n != 1:
        raise SystemExit("static_switch.h: HEADDIM_SWITCH not found")
    switch.write_text(new)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: slim_flash_attn.py flash_attn-X.tar.gz OUT.tar.gz")
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(src) as t:
            t.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # Pythons since mid-2023
        (root,) = Path(tmp).iterdir()
        slim(root)
        with tarfile.open(out, "w:gz") as t:
            t.add(root, arcname=root.name)
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB (from {src.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
