"""Host-RAM prompt cache of the batched llama.cpp engine, as llama-server keeps one
(`--cache-ram`, with `--cache-idle-slots`): an idle sequence's KV cells leave the unified KV
cache (every step attends over the span of all cells in use, so idle caches would slow the
running sequences) and are kept here as llama.cpp's own per-sequence state; a later request
whose prompt starts with a kept one gets those cells back instead of evaluating them again.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

MAX_BYTES = 2 << 30  # llama-server's default --cache-ram is 8 GiB; this engine keeps 2


def common_prefix(a, b) -> int:
    n, limit = 0, min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


class PromptCache:
    def __init__(self, lib, ctx, max_bytes: int = MAX_BYTES):
        self.lib, self.ctx, self.max_bytes = lib, ctx, max_bytes  # ctx: a llama_context pointer
        # least recently used first; each state in an uninitialised numpy buffer that llama.cpp
        # writes and reads in place: a 7B sequence of 256 tokens is 128 MB, and a zero-filled
        # ctypes buffer copied to bytes (and back into one to load) cost three more passes over
        # it than llama-server's one (TTFT 163 against its 86 ms at one stream on the H100)
        self.entries: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self.bytes = 0

    def save(self, seq: int, tokens: list[int]) -> None:
        """Keep sequence `seq`'s cells (they hold `tokens`), before they leave the KV cache."""
        key = tuple(tokens)
        if not key or key in self.entries:
            return
        size = self.lib.llama_state_seq_get_size(self.ctx, seq)
        if size <= 0 or size > self.max_bytes:
            return
        buf = np.empty(size, dtype=np.uint8)
        if self.lib.llama_state_seq_get_data(self.ctx, _ptr(buf), size, seq) != size:
            return
        self.entries[key] = buf
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.nbytes

    def best(self, ids: list[int]) -> tuple[tuple[int, ...] | None, int]:
        """The kept prompt sharing the longest prefix with `ids`, and that length."""
        best, n = None, 0
        for key in self.entries:
            m = common_prefix(key, ids)
            if m > n:
                best, n = key, m
        return best, n

    def load(self, key: tuple[int, ...], seq: int) -> bool:
        """Put a kept prompt's cells into the (empty) sequence `seq`; False if llama.cpp has no
        room for them (the caller then evaluates the prompt)."""
        data = self.entries.pop(key)
        self.bytes -= data.nbytes
        return self.lib.llama_state_seq_set_data(self.ctx, _ptr(data), data.nbytes, seq) == data.nbytes


def _ptr(buf: np.ndarray):
    """The buffer as llama.cpp's `uint8_t *` argument (no copy)."""
    import ctypes

    return buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
