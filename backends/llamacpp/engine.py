"""Generation over `llama_cpp.Llama`, with what the wire contract needs and
`Llama.create_completion` lacks or gets wrong. With parallel=1 one sequence at a time (below);
with parallel > 1 the requests are batched together by backends/llamacpp/batch.py, which uses
this module's sampling and per-token steps (`Engine.draw`, `Engine.step`).

- prompt logprobs (`echo` + `logprobs`) without `logits_all=True`: only an echo request asks
  for logits at every prompt position, so ordinary requests keep llama.cpp's fast path (and no
  n_ctx x vocab float array). The first prompt token (BOS where the tokenizer adds one) is kept
  with a null logprob, as vLLM returns it; `Llama` drops BOS and then nulls the first real token.
- `min_tokens` / `ignore_eos`: end-of-generation logits are set to -inf in llama.cpp's own
  logits buffer before its sampler runs (logprobs are taken before that, from the raw logits).
- vLLM/OpenAI sampling semantics where llama.cpp's defaults differ: every filter off unless
  asked, repetition_penalty over prompt + output, presence/frequency over the output only.
- token-id prompts, text stops that never leak into the stream, and an EOS that counts as a
  generated token (vLLM's usage counts it too).
- speculative decoding in the same loop (backends/llamacpp/speculative.py), drafts from prompt
  lookup (n-gram) or from a draft model in a second llama.cpp context: [token, drafts...] are
  evaluated in one batch with a logits row each, the sampler chain draws at each row in turn
  while the draws equal the drafts, and the rejected drafts leave the cache.

Private `Llama` attributes (`_ctx`, `_batch`, `_model`) are used on purpose: they are the
documented-by-source handles of llama-cpp-python 0.3.36, pinned in pyproject.toml.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from backends.llamacpp.speculative import (
    DraftModel,
    DraftSettings,
    NgramSettings,
    SpecCounters,
    propose,
    vocab_mismatch,
)
from backends.llamacpp.release import TextRelease


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # <= 0: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None  # top-k count per token; None: no logprobs at all
    prompt_logprobs: bool = False  # logprobs for every prompt token too (echo)


@dataclass
class Token:
    id: int
    piece: bytes  # its bytes in the text (b"" for a BOS the tokenizer added)
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None  # (id, logprob), best first


@dataclass
class Step:
    """One generated token and the text it releases (held back while it may start a stop)."""

    text: str
    token: Token


@dataclass
class Result:
    prompt: list[Token]
    finish_reason: str = "length"
    completion_tokens: int = 0
    text: str = ""


# llama.cpp's warnings and errors, kept because llama-cpp-python (verbose=False) sends them to
# /dev/null while loading and then raises only "Failed to create llama_context"
LLAMA_LOG: deque[str] = deque(maxlen=50)
_log_callback = None  # referenced here so ctypes never frees it


def capture_llama_log(lib) -> None:
    global _log_callback
    if _log_callback is not None:
        return

    @lib.llama_log_callback
    def callback(level: int, text: bytes, user_data) -> None:
        if level in (3, 4):  # GGML_LOG_LEVEL_WARN, _ERROR (ggml.h; _logger.py has an older enum)
            line = text.decode("utf-8", errors="replace").rstrip()
            LLAMA_LOG.append(line)
            print(line, file=sys.stderr, flush=True)  # the engine log

    _log_callback = callback
    lib.llama_log_set(callback, ctypes.c_void_p(0))


def load_error() -> str:
    """llama.cpp's last error, e.g. 'quantized V cache requires flash_attn to be enabled'."""
    return LLAMA_LOG[-1].split(": ", 1)[-1] if LLAMA_LOG else ""


SMALLEST_CTX = 256  # the Llama that only holds the model, with parallel > 1


class Engine:
    def __init__(self, model_path: str, *, n_ctx: int, n_batch: int, n_gpu_layers: int,
                 n_threads: int | None, flash_attn: bool, kv_cache_type: str,
                 speculative: NgramSettings | DraftSettings | None = None, parallel: int = 1,
                 lora: str | None = None, cache_idle_slots: bool = True):
        import llama_cpp

        self.lib = llama_cpp
        capture_llama_log(llama_cpp)
        kv_type = getattr(llama_cpp, f"GGML_TYPE_{kv_cache_type.upper()}")

        def open_model(path: str, n_ctx: int, n_batch: int = n_batch, lora_path: str | None = None):
            # the target, and a draft placed and sized alike (the adapter: the target's only)
            return llama_cpp.Llama(
                path, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=min(n_batch, 512),
                # one thread count for prompt and decode, as llama.cpp's -t (left alone, llama-cpp-python
                # takes half the CPUs for decode and all of them for prompts)
                n_gpu_layers=n_gpu_layers, n_threads=n_threads, n_threads_batch=n_threads,
                flash_attn=flash_attn,
                type_k=kv_type, type_v=kv_type, logits_all=False, verbose=False, lora_path=lora_path,
            )  # fmt: skip

        self.parallel = parallel
        self.batcher = None
        if parallel == 1:
            self.llm = open_model(model_path, n_ctx, lora_path=lora)
            self.n_ctx_total = self.n_ctx = self.llm.n_ctx()
        else:
            # Llama holds the model, tokenizer and metadata (its own context is kept minimal);
            # the sequences share a context of their own with n_seq_max slots
            self.llm = open_model(model_path, SMALLEST_CTX, min(n_batch, SMALLEST_CTX), lora_path=lora)
            self.ctx = self._batch_context(n_ctx, n_batch, parallel)
            if lora:  # Llama set its adapter on its own context: the sequences' context needs it too
                adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.llm._lora_adapter)
                if llama_cpp.llama_set_adapters_lora(self.ctx.ctx, adapters, 1, (ctypes.c_float * 1)(1.0)):
                    raise ValueError(f"Failed to set LoRA adapter {lora} on the batch context")
            self.n_ctx_total = self.ctx.n_ctx()
            self.n_ctx = self.n_ctx_total // parallel  # a sequence's share: it never runs out
        self.n_vocab = self.llm.n_vocab()
        vocab = self.llm._model.vocab
        self.eog_ids = np.array(
            [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)], dtype=np.intp
        )
        self.bos_id = self.llm.token_bos()
        meta = self.llm.metadata
        # SentencePiece tokenizers put a space before the first word; it is not in the text
        self.space_prefix = meta.get("tokenizer.ggml.add_space_prefix", "true") == "true" and (
            meta.get("tokenizer.ggml.model") == "llama"
        )
        self.spec = speculative
        self.counters = SpecCounters(speculative.k if speculative else 0)
        self.drafter = None
        if isinstance(speculative, DraftSettings):
            # the draft in a context of its own, placed and sized as the target's
            from harness.errors import HyperbenchError

            try:
                draft = open_model(speculative.model, self.n_ctx)
            except ValueError as e:
                why = load_error()
                raise HyperbenchError(
                    f"llama.cpp cannot load the draft model {speculative.model}: {e}" + (f" ({why})" if why else "")
                ) from None
            why = vocab_mismatch(llama_cpp, vocab, draft._model.vocab)
            if why:
                raise HyperbenchError(f"the draft model {speculative.model} cannot draft for this target: {why}")
            self.drafter = DraftModel(draft, stop_ids=self.eog_ids, target_vocab=self.n_vocab)
        self.lock = FifoLock()  # one llama context: one sequence at a time, first come first served
        # the last echo prompt's ids and per-token logprobs (with top k): _eval_with_logprobs
        # keeps the part a new echo prompt shares with it
        self._echo: tuple[list[int], int, list[Token]] = ([], 0, [])
        if parallel > 1:
            from backends.llamacpp.batch import BatchScheduler

            self.batcher = BatchScheduler(self, self.ctx, parallel, n_batch, cache_idle_slots=cache_idle_slots)

    def _batch_context(self, n_ctx: int, n_batch: int, parallel: int):
        """A llama context for `parallel` sequences in one unified KV cache of n_ctx cells, with
        the Llama's own settings otherwise (threads, offload, flash attention, KV type)."""
        from llama_cpp import _internals, llama_context_params

        params = llama_context_params.from_buffer_copy(self.llm.context_params)
        params.n_ctx, params.n_seq_max, params.kv_unified = n_ctx, parallel, True
        params.n_batch, params.n_ubatch = n_batch, min(n_batch, 512)
        try:
            return _internals.LlamaContext(model=self.llm._model, params=params, verbose=False)
        except ValueError as e:  # "Failed to create llama_context"
            raise ValueError(f"{e} for {parallel} sequences") from None

    # ------------------------------------------------------------------------ tokens <-> text

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=add_bos, special=True)

    def piece(self, token: int, special: bool = True) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self.lib.llama_token_to_piece(self.llm._model.vocab, token, buf, 256, 0, special)
        return buf.raw[: max(n, 0)]

    def prompt_pieces(self, ids: list[int]) -> list[bytes]:
        """Each prompt token's bytes in the prompt text: a leading BOS has none (it is added by
        the tokenizer, or stands for it), and SentencePiece's space before the first word goes,
        as transformers' decode drops it."""
        pieces = [self.piece(t) for t in ids]
        first = 1 if ids and ids[0] == self.bos_id else 0
        if first:
            pieces[0] = b""
        if self.space_prefix and first < len(pieces) and pieces[first][:1] == b" ":
            pieces[first] = pieces[first][1:]
        return pieces

    # ------------------------------------------------------------------------ generation

    def generate(self, ids: list[int], s: Sampling, result: Result,
                 cancelled: Callable[[], bool] = lambda: False) -> Iterator[Step]:
        """Yield one Step per generated token; fills `result` (prompt logprobs, finish). Safe to
        call from several threads at once: with parallel > 1 the requests decode together in
        one batch per step, else they queue for the one sequence in arrival order."""
        if self.batcher is not None:
            yield from self.batcher.generate(ids, s, result, cancelled)
            return
        with self.lock:
            yield from self._generate(ids, s, result, cancelled)

    def _generate(self, ids, s: Sampling, result: Result, cancelled) -> Iterator[Step]:
        llm = self.llm
        if s.prompt_logprobs:
            self._eval_with_logprobs(ids, s.logprobs or 0, result.prompt)
        else:
            self._eval_reusing_prefix(ids)
        if s.max_tokens == 0:
            result.finish_reason = "length"
            return
        chain = _SamplerChain(self.lib, s, self.n_ctx, self.n_vocab, ids)
        release = TextRelease(s.stop)
        # speculation: the logits row of the last batch to sample next (-1: its last one), and
        # the drafted tokens evaluated after that row's token (their rows follow it)
        row_at, drafts, n_drafted = -1, [], 0
        try:
            for n in range(s.max_tokens):
                if cancelled():
                    result.finish_reason = "abort"
                    return
                tok, token_lp, top = self.draw(llm._ctx.ctx, row_at, chain, s, n)
                hit = bool(drafts) and tok == drafts[0]
                if hit:
                    self.counters.accepted(n_drafted - len(drafts))  # its position in the draft
                result.completion_tokens += 1
                # (drafts past the sampled row are in the cache but not part of the text)
                last = n + 1 == s.max_tokens or llm.n_tokens - len(drafts) >= self.n_ctx
                step, finish = self.step(tok, token_lp, top, release, last)
                result.text += step.text
                yield step
                if finish:
                    result.finish_reason = finish
                    return
                if hit:  # the draft's token is in the cache already, and so is its logits row
                    drafts.pop(0)
                    row_at += 1
                    continue
                llm.n_tokens -= len(drafts)  # rejected drafts leave the cache (eval drops them)
                drafts = []
                proposed = self._draft(tok, s.max_tokens - n - 1) if self.spec else []
                if proposed:
                    self._eval_drafts([tok, *proposed])
                    drafts, n_drafted, row_at = proposed, len(proposed), 0
                else:
                    llm.eval([tok])
                    row_at = -1
        finally:
            # the cache holds prompt + output up to the last token sampled (not evaluated)
            llm.n_tokens -= len(drafts)
            chain.free()

    def draw(self, ctx, row: int, chain: "_SamplerChain", s: Sampling, n: int):
        """Sample the next token of a sequence from logits row `row` of the last batch (`n`
        tokens generated so far): (token, its logprob, top logprobs), logprobs from the raw
        logits, before end-of-generation is masked for min_tokens / ignore_eos."""
        logits = np.ctypeslib.as_array(self.lib.llama_get_logits_ith(ctx, row), shape=(self.n_vocab,))
        lps = _log_softmax(logits) if s.logprobs is not None else None
        if (s.ignore_eos or n < s.min_tokens) and len(self.eog_ids):
            logits[self.eog_ids] = -np.inf  # in llama.cpp's own buffer, which its sampler reads
        tok = chain.sample(ctx, row)
        if lps is None:
            return tok, None, None
        return tok, float(lps[tok]), _top(lps, s.logprobs)

    def step(self, tok: int, lp, top, release: TextRelease, last: bool) -> tuple[Step, str | None]:
        """The Step of a sampled token and the finish reason it brings (None: go on). An EOS
        counts as a generated token (vLLM's usage counts it too) but has no text."""
        if self.lib.llama_vocab_is_eog(self.llm._model.vocab, tok):
            return Step(release.rest(), Token(tok, b"", lp, top)), "stop"
        piece = self.piece(tok, special=False)
        text, stopped = release.push(piece, last)
        return Step(text, Token(tok, piece, lp, top)), "stop" if stopped else "length" if last else None

    def _draft(self, tok: int, room: int) -> list[int]:
        """Draft tokens to follow `tok` (at most `room`: no more can be emitted), by the draft
        model or by prompt lookup over prompt + output so far."""
        llm, spec = self.llm, self.spec
        k = min(spec.k, room, self.n_ctx - llm.n_tokens - 1)  # [tok, drafts...] must fit
        if k <= 0:
            return []
        llm.input_ids[llm.n_tokens] = tok
        context = llm.input_ids[: llm.n_tokens + 1]
        if self.drafter is not None:
            drafts = self.drafter.propose(context, k)
        else:
            drafts = [int(t) for t in propose(context, k, spec.ngram_min, spec.ngram_max)]
        if drafts:
            self.counters.drafted(len(drafts))
        return drafts

    def _eval_drafts(self, batch: list[int]) -> None:
        """Evaluate [token, drafts...] in one batch with a logits row at every position."""
        llm = self.llm
        llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
        llm._batch.set_batch(batch=batch, n_past=llm.n_tokens, logits_all=True)
        llm._ctx.decode(llm._batch)
        llm.input_ids[llm.n_tokens : llm.n_tokens + len(batch)] = batch
        llm.n_tokens += len(batch)

    def _eval_reusing_prefix(self, ids: list[int]) -> None:
        """Evaluate the prompt, keeping the KV cache of a common prefix with the last request."""
        llm = self.llm
        have = llm.input_ids[: llm.n_tokens]
        same = 0
        for a, b in zip(have, ids):
            if a != b:
                break
            same += 1
        llm.n_tokens = min(same, len(ids) - 1)  # re-evaluate >= 1 token: it makes the logits
        llm.eval(ids[llm.n_tokens :])

    def _eval_with_logprobs(self, ids: list[int], k: int, into: list[Token]) -> None:
        """Evaluate the prompt with logits at every position; fill `into` per token. What it
        shares with the last echo prompt is kept, KV cache and logprobs (a token's logprob
        depends only on the tokens before it): the choices of one question, one after another,
        cost their own tokens, not the context again. The last shared token is evaluated again,
        for the logits row that predicts the first new one."""
        llm = self.llm
        echo_ids, echo_k, known = self._echo
        reuse = 0
        if echo_k == k:
            have = llm.input_ids[: llm.n_tokens]
            for a, b, c in zip(have, echo_ids, ids[: len(ids) - 1]):
                if not a == b == c:
                    break
                reuse += 1
        into.extend(known[:reuse])
        start = max(reuse - 1, 0)
        llm.n_tokens = start
        llm._ctx.kv_cache_seq_rm(-1, start, -1)
        self._echo = ([], k, [])  # until this evaluation completes
        prev: np.ndarray | None = None  # log-softmax of the row that predicts the next token
        for pos in range(start, len(ids), llm.n_batch):
            chunk = ids[pos : pos + llm.n_batch]
            llm._batch.set_batch(batch=chunk, n_past=llm.n_tokens, logits_all=True)
            llm._ctx.decode(llm._batch)
            rows = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(chunk), self.n_vocab))
            for j, tok in enumerate(chunk):
                if pos + j >= reuse:  # (known tokens are in `into` already)
                    into.append(Token(tok, b"") if prev is None else Token(tok, b"", float(prev[tok]), _top(prev, k)))
                prev = _log_softmax(rows[j])
            llm.input_ids[llm.n_tokens : llm.n_tokens + len(chunk)] = chunk
            llm.n_tokens += len(chunk)
        self._echo = (list(ids), k, list(into))


class FifoLock:
    """A lock granted in arrival order: threading.Lock lets a late request overtake waiting
    ones, which would skew the latency percentiles a benchmark reports."""

    def __init__(self):
        self._cv = threading.Condition()
        self._next = self._serving = 0

    def __enter__(self):
        with self._cv:
            ticket = self._next
            self._next += 1
            self._cv.wait_for(lambda: self._serving == ticket)

    def __exit__(self, *exc):
        with self._cv:
            self._serving += 1
            self._cv.notify_all()


class _SamplerChain:
    """llama.cpp's sampler chain in its own order (penalties, top-k, top-p, min-p, temperature,
    draw), every stage off unless asked, as vLLM and transformers default."""

    def __init__(self, lib, s: Sampling, n_ctx: int, n_vocab: int, prompt: list[int]):
        self.lib = lib
        self.chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if s.repetition_penalty != 1.0:  # vLLM applies it to prompt and output tokens
            rep = lib.llama_sampler_init_penalties(n_vocab, n_ctx, s.repetition_penalty, 0.0, 0.0)
            for t in prompt:
                lib.llama_sampler_accept(rep, t)
            lib.llama_sampler_chain_add(self.chain, rep)
        if s.presence_penalty or s.frequency_penalty:  # OpenAI: output tokens only
            lib.llama_sampler_chain_add(
                self.chain,
                lib.llama_sampler_init_penalties(
                    n_vocab, n_ctx, 1.0, s.frequency_penalty, s.presence_penalty
                ),
            )
        if s.temperature == 0:
            lib.llama_sampler_chain_add(self.chain, lib.llama_sampler_init_greedy())
            return
        if s.top_k > 0:
            lib.llama_sampler_chain_add(self.chain, lib.llama_sampler_init_top_k(s.top_k))
        if s.top_p < 1.0:
            lib.llama_sampler_chain_add(self.chain, lib.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0.0:
            lib.llama_sampler_chain_add(self.chain, lib.llama_sampler_init_min_p(s.min_p, 1))
        lib.llama_sampler_chain_add(self.chain, lib.llama_sampler_init_temp(s.temperature))
        seed = s.seed if s.seed is not None else int.from_bytes(os.urandom(4), "little")
        lib.llama_sampler_chain_add(self.chain, lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, ctx, row: int = -1) -> int:
        """Draw from the logits of the last batch's `row` (-1: its last); also accepts the token."""
        return self.lib.llama_sampler_sample(self.chain, ctx, row)

    def free(self) -> None:
        if self.chain is not None:
            self.lib.llama_sampler_free(self.chain)  # frees the samplers it owns
            self.chain = None


# ---------------------------------------------------------------------------- helpers


def _log_softmax(row: np.ndarray) -> np.ndarray:
    x = row.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def _top(lps: np.ndarray, k: int) -> list[tuple[int, float]]:
    if k <= 0:
        return []
    idx = np.argpartition(-lps, k - 1)[:k] if k < len(lps) else np.arange(len(lps))
    idx = idx[np.argsort(-lps[idx], kind="stable")]
    return [(int(i), float(lps[i])) for i in idx]
