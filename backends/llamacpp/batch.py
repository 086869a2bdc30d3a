"""Continuous batching for the llama.cpp engine (`--parallel N` > 1), as llama-server does it:
one llama.cpp context whose unified KV cache holds N sequences (`n_seq_max`), and one scheduler
thread that, every step, decodes one `llama_batch` holding the next token of every running
request and chunks of waiting prompts (prefill and decode in one `llama_decode`). Requests join
at any step into a free sequence slot and leave at any step (finished, stopped, or their client
gone: `llama_memory_seq_rm` frees their cells at once).

Each request keeps its own sampler chain (penalties, top-k/p, min-p, temperature, seeded draw),
min_tokens / ignore_eos masking, logprobs, stop strings and, with `echo`, prompt logprobs (its
prompt chunks ask for a logits row at every position). The per-token work is the one-sequence
loop's own (`Engine.draw`, `Engine.step`).

A sequence never holds more than n_ctx / N cells (the server refuses longer requests), so the
cache cannot run out mid-generation and nothing needs to be preempted.
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from backends.llamacpp.prompt_cache import PromptCache
from backends.llamacpp.release import TextRelease

POLL_S = 0.05  # how often a waiting request checks whether its client went away


@dataclass
class _Request:
    ids: list[int]
    sampling: object  # engine.Sampling
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False  # set by the request's thread; read by the scheduler


@dataclass
class _Slot:
    """A request decoding in KV sequence `seq`."""

    seq: int
    req: _Request
    chain: object  # engine._SamplerChain
    release: TextRelease
    pending: list[int]  # tokens still to evaluate: the prompt's rest, then the last sampled one
    n_past: int = 0  # tokens of this sequence in the KV cache
    n_gen: int = 0  # tokens generated
    prompt_lps: np.ndarray | None = None  # echo: log-softmax of the row before the next prompt token
    rows: list[int] = field(default_factory=list)  # this step's logits rows in the batch
    echo_rows: bool = False  # this step's rows are prompt positions (echo), one per token


class BatchScheduler:
    def __init__(self, engine, ctx, n_seq: int, n_batch: int, cache_idle_slots: bool = True):
        import llama_cpp

        self.lib, self.engine, self.ctx = llama_cpp, engine, ctx  # ctx: an internals.LlamaContext
        self.n_seq, self.n_batch = n_seq, n_batch
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        b = self.batch  # numpy views of its arrays: a prompt chunk is filled in a few calls
        self.token = np.ctypeslib.as_array(b.token, shape=(n_batch,))
        self.pos = np.ctypeslib.as_array(b.pos, shape=(n_batch,))
        self.n_seq_id = np.ctypeslib.as_array(b.n_seq_id, shape=(n_batch,))
        self.logits = np.ctypeslib.as_array(b.logits, shape=(n_batch,))
        self.waiting: deque[_Request] = deque()
        self.running: list[_Slot] = []
        self.free = list(range(n_seq))
        # the tokens whose KV each sequence holds: a finished request's cells stay as a prompt
        # cache until the next request is admitted, which takes the free sequence sharing the
        # longest prefix with it (llama-server's slot selection by similarity and cache_prompt
        # do the same); the other idle sequences' cells then move to host RAM (_clear_idle)
        self.cached: list[list[int]] = [[] for _ in range(n_seq)]
        self.ram = PromptCache(llama_cpp, ctx.ctx)  # idle sequences' cells, out of the KV cache
        self.cache_idle_slots = cache_idle_slots  # off: idle cells stay (no RAM round trip)
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="llamacpp-batch", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------ request side

    def generate(self, ids, s, result, cancelled: Callable[[], bool]) -> Iterator:
        """Engine.generate for one request: queue it, then yield its Steps as the scheduler
        produces them. Leaving early (client gone, generator closed) frees its slot."""
        from backends.llamacpp.engine import Token

        req = _Request(list(ids), s)
        with self._cv:
            self.waiting.append(req)
            self._cv.notify()
        done = False
        try:
            while True:
                try:
                    kind, value = req.events.get(timeout=POLL_S)
                except queue.Empty:
                    if cancelled():
                        result.finish_reason = "abort"
                        return
                    continue
                if kind == "step":
                    result.completion_tokens += 1
                    result.text += value.text
                    yield value
                elif kind == "prompt":  # echo: (id, logprob, top) per prompt token
                    result.prompt.extend(Token(t, b"", lp, top) for t, lp, top in value)
                elif kind == "end":
                    result.finish_reason = value
                    done = True
                    return
                else:  # "error": the batch this request was in failed
                    done = True
                    raise value
                if cancelled():
                    result.finish_reason = "abort"
                    return
        finally:
            if not done:
                req.cancelled = True  # the scheduler frees its slot at its next step
                with self._cv:
                    self._cv.notify()

    # ------------------------------------------------------------------------ scheduler thread

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self.waiting or self.running)
                self._drop_cancelled()
                self._admit()
            if not self.running:
                continue
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - every request of the batch hears of it
                traceback.print_exc()
                for slot in list(self.running):
                    slot.req.events.put(("error", exc))
                    self._finish(slot, None)

    def _drop_cancelled(self) -> None:
        self.waiting = deque(r for r in self.waiting if not r.cancelled)
        for slot in [x for x in self.running if x.req.cancelled]:
            self._finish(slot, None)

    def _admit(self) -> None:
        from backends.llamacpp.engine import _SamplerChain

        engine, admitted = self.engine, False
        while self.waiting and self.free:
            req = self.waiting.popleft()
            s = req.sampling
            if s.max_tokens == 0 and not s.prompt_logprobs:
                req.events.put(("end", "length"))
                continue
            chain = _SamplerChain(self.lib, s, engine.n_ctx, engine.n_vocab, req.ids)
            seq, keep = self._reuse(req)
            self.free.remove(seq)
            keep = self._from_ram(req, seq, keep)
            self.ctx.kv_cache_seq_rm(seq, keep, -1)
            del self.cached[seq][keep:]
            slot = _Slot(seq, req, chain, TextRelease(s.stop), list(req.ids[keep:]), n_past=keep)
            self.running.append(slot)
            admitted = True
        if admitted:
            self._clear_idle()

    def _from_ram(self, req: _Request, seq: int, keep: int) -> int:
        """Where a prompt kept in RAM shares more of the request's prompt than the cells of
        `seq` do, those cells replace seq's (which go to RAM in turn); the tokens to keep."""
        if req.sampling.prompt_logprobs:
            return keep
        key, n = self.ram.best(req.ids)
        n = min(n, len(req.ids) - 1)
        if n <= keep or n * 10 <= len(req.ids):  # too little to be worth a state's round trip (_reuse)
            return keep
        self.ram.save(seq, self.cached[seq])
        self.ctx.kv_cache_seq_rm(seq, 0, -1)
        if self.ram.load(key, seq):
            self.cached[seq] = list(key)
            return n
        self.ctx.kv_cache_seq_rm(seq, 0, -1)  # no room for them: the prompt is evaluated
        self.cached[seq] = []
        return 0

    def _clear_idle(self) -> None:
        """Drop the cells of the sequences no request holds, once new requests have taken the
        ones they reuse. In a unified KV cache every step attends over the span of all cells in
        use (masked per sequence), so idle prompt caches would make each running sequence's
        step slower: one stream's CPU per token on smollm2-135m went from 13 to 32 ms as idle
        prompt caches piled up. Their cells are kept in host RAM instead (backends/llamacpp/
        prompt_cache.py), as llama-server's `--cache-idle-slots` (on by default) does. On a GPU
        moving them costs more than attending over them (128 MB for 256 tokens of a 7B model),
        hence the switch."""
        if not self.cache_idle_slots:
            return
        for seq in self.free:
            if self.cached[seq]:
                self.ram.save(seq, self.cached[seq])
                self.ctx.kv_cache_seq_rm(seq, 0, -1)
                self.cached[seq] = []

    def _reuse(self, req: _Request) -> tuple[int, int]:
        """The free sequence whose cached tokens share the longest prefix with the prompt, and
        how many of them to keep (at least one prompt token is evaluated: it makes the logits;
        echo evaluates them all: it needs a logits row at every position). A prefix of at most a
        tenth of the prompt (a BOS, say) is not worth another prompt's cells: an empty sequence is
        taken then, as llama-server's --slot-prompt-similarity 0.1 does."""
        empty = next((seq for seq in self.free if not self.cached[seq]), self.free[0])
        if req.sampling.prompt_logprobs:
            return empty, 0
        best, keep = empty, 0
        for seq in self.free:
            have, n = self.cached[seq], 0
            limit = min(len(have), len(req.ids) - 1)
            while n < limit and have[n] == req.ids[n]:
                n += 1
            if n > keep:
                best, keep = seq, n
        if keep * 10 <= len(req.ids):
            return empty, 0
        return best, keep

    def _step(self) -> None:
        """One llama_decode: every decoding sequence's next token first (each is one row), then
        prompt chunks in arrival order while the batch has room."""
        b, n = self.batch, 0
        decoding = [x for x in self.running if x.n_past >= len(x.req.ids)]
        prefilling = [x for x in self.running if x.n_past < len(x.req.ids)]
        for slot in decoding + prefilling:
            room = self.n_batch - n
            if room <= 0:
                slot.rows, slot.echo_rows = [], False
                continue
            chunk = slot.pending[:room]
            m = len(chunk)
            echo = slot.req.sampling.prompt_logprobs and slot.n_past < len(slot.req.ids)
            last_of_prompt = slot.n_past + m >= len(slot.req.ids)
            self.token[n : n + m] = chunk
            self.pos[n : n + m] = np.arange(slot.n_past, slot.n_past + m)
            self.n_seq_id[n : n + m] = 1
            seq_ids = b.seq_id
            for i in range(n, n + m):
                seq_ids[i][0] = slot.seq
            # logits rows: every prompt position for echo, else the prompt's last / the new token
            self.logits[n : n + m] = echo
            if echo:
                slot.rows = list(range(n, n + m))
            elif last_of_prompt:
                self.logits[n + m - 1] = 1
                slot.rows = [n + m - 1]
            else:
                slot.rows = []
            slot.echo_rows = echo
            n += m
            slot.pending = slot.pending[len(chunk) :]
            slot.n_past += len(chunk)
            self.cached[slot.seq].extend(chunk)
        b.n_tokens = n
        rc = self.lib.llama_decode(self.ctx.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        for slot in list(self.running):
            if slot.rows:
                self._after_decode(slot)

    def _after_decode(self, slot: _Slot) -> None:
        engine, req, s = self.engine, slot.req, slot.req.sampling
        ctx = self.ctx.ctx
        if slot.echo_rows:
            self._prompt_logprobs(slot)
        if slot.pending:  # the prompt goes on next step
            return
        if s.max_tokens == 0:  # echo only
            self._finish(slot, "length")
            return
        tok, lp, top = engine.draw(ctx, slot.rows[-1], slot.chain, s, slot.n_gen)
        slot.n_gen += 1
        last = slot.n_gen == s.max_tokens or slot.n_past >= engine.n_ctx
        step, finish = engine.step(tok, lp, top, slot.release, last)
        req.events.put(("step", step))
        if finish:
            self._finish(slot, finish)
        else:
            slot.pending = [tok]

    def _prompt_logprobs(self, slot: _Slot) -> None:
        """Echo: the logprob of every prompt token evaluated this step, from the row before it
        (the first prompt token has none, as vLLM returns it)."""
        from backends.llamacpp.engine import _log_softmax, _top

        ids, k = slot.req.ids, slot.req.sampling.logprobs or 0
        start = slot.n_past - len(slot.rows)  # the prompt positions evaluated this step
        out = []
        for i, row in enumerate(slot.rows):
            pos = start + i
            tok = ids[pos]
            prev = slot.prompt_lps
            out.append((tok, None, None) if prev is None else (tok, float(prev[tok]), _top(prev, k)))
            logits = np.ctypeslib.as_array(
                self.lib.llama_get_logits_ith(self.ctx.ctx, row), shape=(self.engine.n_vocab,)
            )
            slot.prompt_lps = _log_softmax(logits)
        slot.req.events.put(("prompt", out))

    def _finish(self, slot: _Slot, reason: str | None) -> None:
        """The request leaves: its slot is free for the next one, its cells stay as a prompt
        cache (None: a failed batch, whose cells are dropped)."""
        if reason is None and not slot.req.cancelled:
            self.ctx.kv_cache_seq_rm(slot.seq, 0, -1)
            self.cached[slot.seq] = []
        slot.chain.free()
        self.running.remove(slot)
        self.free.append(slot.seq)
        if reason is not None:
            slot.req.events.put(("end", reason))
