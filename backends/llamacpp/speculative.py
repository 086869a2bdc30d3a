"""Drafting for the llama.cpp engine: prompt lookup (n-gram) or a draft model, and the counters.

The drafts are verified in `Engine._generate`: the target samples each position of one batch
with the request's own sampler chain, in order, and a draft token is kept while it equals what
the target sampled. Every emitted token is thus the target's own draw from the same logits and
the same sampler state as without speculation (one draw per emitted token), so the output is the
same, greedy or seeded, up to the float differences of a batched forward pass.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NgramSettings:
    k: int  # most tokens drafted per step
    ngram_min: int
    ngram_max: int


def propose(context: np.ndarray, k: int, ngram_min: int, ngram_max: int) -> np.ndarray:
    """Up to k tokens that followed an earlier occurrence of the context's last n tokens, for the
    longest n in [ngram_min, ngram_max] that occurs earlier. Of its occurrences, the latest one
    with k tokens after it (recent text predicts best), else the earliest (longest continuation,
    e.g. in text that repeats with a period shorter than k). Empty: no match."""
    length = len(context)
    for n in range(min(ngram_max, length - 1), ngram_min - 1, -1):
        windows = np.lib.stride_tricks.sliding_window_view(context[:-1], n)  # ends before the suffix
        starts = np.flatnonzero((windows == context[length - n :]).all(axis=1))
        if len(starts) == 0:
            continue
        ends = starts + n  # where each continuation begins
        full = ends[ends + k <= length]
        end = int(full[-1]) if len(full) else int(ends[0])
        return context[end : end + k]
    return context[:0]


@dataclass(frozen=True)
class DraftSettings:
    k: int  # tokens drafted per step
    model: str  # the draft's GGUF


class DraftModel:
    """A smaller model with the target's vocabulary in its own llama.cpp context, proposing
    greedily (llama.cpp's speculative example and llama-server do the same: argmax drafts, then
    the target's own sampler decides). Its context follows the target's text: each call keeps
    the common prefix of what it has evaluated (its own rejected drafts go), evaluates the rest
    in one batch, then one token per draft."""

    def __init__(self, llm, stop_ids=(), target_vocab: int | None = None) -> None:
        self.llm = llm  # a llama_cpp.Llama (logits_all=False: the last row is all it reads)
        self.n_vocab = llm.n_vocab()
        self.stop_ids = frozenset(int(t) for t in stop_ids)  # nothing is drafted past these
        # ids the target does not have end a draft before them (sizes may differ a little)
        self.target_vocab = target_vocab or self.n_vocab

    def propose(self, context: np.ndarray, k: int) -> list[int]:
        llm = self.llm
        have = llm.input_ids[: llm.n_tokens]
        n = min(len(have), len(context))
        diff = np.flatnonzero(have[:n] != context[:n])
        same = int(diff[0]) if len(diff) else n
        llm.n_tokens = min(same, len(context) - 1)  # re-evaluate >= 1 token: it makes the logits
        llm.eval(context[llm.n_tokens :].tolist())  # (eval drops the cache past n_tokens first)
        out: list[int] = []
        while True:
            row = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(self.n_vocab,))
            tok = int(row.argmax())
            if tok >= self.target_vocab:
                return out
            out.append(tok)
            if len(out) == k or out[-1] in self.stop_ids:
                return out
            llm.eval(out[-1:])


VOCAB_SIZE_SLACK = 128  # llama.cpp's common/speculative.cpp: sizes may differ by this much


def vocab_mismatch(lib, target_vocab, draft_vocab) -> str | None:
    """Why the draft's tokens are not the target's (None: they are), with the checks of
    llama.cpp's own speculative decoding: tokenizer type, BOS/EOS ids and whether BOS is added,
    sizes within VOCAB_SIZE_SLACK, and the same text for every token id from 5 on that both have."""
    t_n, d_n = lib.llama_vocab_n_tokens(target_vocab), lib.llama_vocab_n_tokens(draft_vocab)
    if lib.llama_vocab_type(target_vocab) != lib.llama_vocab_type(draft_vocab):
        return "its tokenizer is of another type"
    for what, fn in (("BOS", lib.llama_vocab_bos), ("EOS", lib.llama_vocab_eos),
                     ("add-BOS", lib.llama_vocab_get_add_bos)):  # fmt: skip
        if fn(target_vocab) != fn(draft_vocab):
            return f"its {what} differs ({fn(draft_vocab)} vs {fn(target_vocab)})"
    if abs(t_n - d_n) > VOCAB_SIZE_SLACK:
        return f"its vocabulary has {d_n} tokens, the target's {t_n}"
    for i in range(5, min(t_n, d_n)):
        if lib.llama_vocab_get_text(target_vocab, i) != lib.llama_vocab_get_text(draft_vocab, i):
            return f"token {i} is {lib.llama_vocab_get_text(draft_vocab, i)!r}, the target's " \
                f"{lib.llama_vocab_get_text(target_vocab, i)!r}"  # fmt: skip
    return None


class SpecCounters:
    """Cumulative since start-up, with vLLM's definitions: a draft is one step's proposal (steps
    that propose nothing are not counted), accepted tokens exclude the target's own token, and
    accepted_per_position[j] counts drafts whose token j+1 was accepted."""

    def __init__(self, k: int) -> None:
        self._lock = threading.Lock()
        self.drafts = 0
        self.draft_tokens = 0
        self.accepted_tokens = 0
        self.accepted_per_position = [0] * k
        self.verify_forward_passes = 0  # batches of [token, drafts...] evaluated

    def drafted(self, n: int) -> None:
        with self._lock:
            self.drafts += 1
            self.draft_tokens += n
            self.verify_forward_passes += 1

    def accepted(self, position: int) -> None:
        with self._lock:
            self.accepted_tokens += 1
            self.accepted_per_position[position] += 1

    def as_dict(self) -> dict:
        with self._lock:
            return {
                "drafts": self.drafts,
                "draft_tokens": self.draft_tokens,
                "accepted_tokens": self.accepted_tokens,
                "accepted_per_position": list(self.accepted_per_position),
                "verify_forward_passes": self.verify_forward_passes,
            }
