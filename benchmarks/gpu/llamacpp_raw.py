"""llama.cpp's own decode speed, without the server: the floor the llama.cpp engine's TPOT is
compared with (what is left is the engine's per-token overhead: HTTP, streaming, sampling).

    python benchmarks/gpu/llamacpp_raw.py A.gguf [B.gguf ...]

Prompt of 128 token ids, then 128 greedy decode steps through llama-cpp-python's `eval` (one
llama_decode per token) with an argmax on the last logits: the least Python per token.
"""

from __future__ import annotations

import sys
import time

import llama_cpp  # before numpy (see backends/llamacpp/__main__.py)
import numpy as np


def last_argmax(llm) -> int:
    """The greedy token from the last logits row (llama-cpp-python 0.3.36 leaves `scores` alone
    without logits_all: llama.cpp's own buffer is read)."""
    return int(np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),)).argmax())


def main() -> None:
    for path in sys.argv[1:]:
        llm = llama_cpp.Llama(path, n_gpu_layers=-1, n_ctx=4096, flash_attn=True, verbose=False)
        rng = np.random.default_rng(0)
        prompt = [llm.token_bos()] + rng.integers(100, 900, 127).tolist()
        for _ in range(2):  # the second pass is the one timed (CUDA graphs captured by then)
            llm.reset()
            llm.eval(prompt)
            tok = last_argmax(llm)
            t0 = time.perf_counter()
            for _ in range(128):
                llm.eval([tok])
                tok = last_argmax(llm)
            dt = (time.perf_counter() - t0) / 128
        size = llama_cpp.llama_model_size(llm._model.model)
        print(f"{path}: {dt * 1e3:.2f} ms/token ({1 / dt:.0f} tok/s), weights {size / 2**30:.2f} GiB", flush=True)
        del llm


if __name__ == "__main__":
    main()
