"""The generation loop: one background thread owns the model and decodes every running sequence
together (continuous batching).

Each iteration admits waiting sequences while there is room (up to `max_batch_size` rows),
prefills them as one left-padded group, samples their first token and merges them into the
running batch (`batch.py`); then runs one decode step for the whole batch. Finished or aborted
rows leave the batch at once. Every produced token is handed to its sequence's `put` as soon as
it is known, so streaming is real: with an event loop, the events of one step are posted to it
in one `call_soon_threadsafe` (one wake-up per step, not per token). Echo-only sequences
(max_tokens 0 with prompt logprobs: scoring) take none of this: one forward per shared prefix,
past the KV cache kept from the last scored prompt (`scoring.py`).

Events `put` receives, as tuples:
    ("prompt", prompt_logprobs)           once, before any token, if prompt logprobs were asked
    ("token", token_id, logprob, finish)  logprob: (lp, [(id, lp)...]) or None; finish: reason or None
    ("finish", reason)                    finished without a new token (max_tokens 0, aborted)
    ("error", message)
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from typing import Callable

import torch
from transformers import DynamicCache

from backends.hf import scoring
from backends.hf.batch import Batch
from backends.hf.speculative import Speculator, accept
from backends.hf.sampling import (
    SamplingParams,
    ban_stop_tokens,
    prompt_logprobs,
    row_tensors,
    sample,
    token_logprobs,
)

log = logging.getLogger("hf.engine")

# Bounds on one prefill group, so a burst of long prompts cannot exhaust memory at once.
MAX_PREFILL_TOKENS = 16384  # padded tokens (rows x longest prompt)
MAX_PROMPT_LOGIT_ELEMS = 2**28  # full-prompt logits kept for echo scoring (rows x tokens x vocab)
# Speculating: squeeze rejected-draft holes out of the KV cache once they are half of it
COMPACT_MIN_HOLES = 16

_ids = itertools.count()


def _deliver(items) -> None:
    for put, event in items:
        put(event)


class Sequence:
    """One prompt being generated. Only the scheduler thread touches it after `submit`, except
    `abort()` which any thread may call. `put(event)` runs on `loop` if one is given, else in the
    scheduler thread."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, put: Callable, device,
                 loop=None):  # fmt: skip
        self.id = next(_ids)
        self.prompt_ids = prompt_ids
        self.params = params
        self.put = put
        self.loop = loop
        self.out_ids: list[int] = []
        self.generator = params.generator(device)
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class Counters:
    def __init__(self) -> None:
        self.requests_finished = 0
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.prefill_batches = 0
        self.decode_steps = 0
        self.decode_rows = 0  # sum of batch sizes over decode steps (mean batch = rows / steps)
        self.errors = 0

    def as_dict(self) -> dict:
        out = dict(vars(self))
        steps = self.decode_steps
        out["mean_decode_batch"] = round(self.decode_rows / steps, 3) if steps else 0.0
        return out


class Scheduler:
    def __init__(self, model, *, eos_ids, pad_id, vocab_size, max_batch_size, max_len, device,
                 speculator: Speculator | None = None, graphs=None):  # fmt: skip
        self.model = model
        self.spec = speculator
        self.graphs = graphs  # graphs.StaticDecoder: decode steps over a static KV cache (None: eager)
        self.eos_ids = frozenset(eos_ids)
        self.pad_id = pad_id
        self.prefix_cache = scoring.PrefixCache()  # echo scoring: the last prompt's KV, for the next one
        self.vocab = vocab_size
        self.max_batch_size = max_batch_size
        self.max_len = max_len
        self.device = torch.device(device)
        # transformers' flash-attn path un-pads q/k/v on every layer of every step when it gets
        # an attention mask (gathering the whole KV cache, a host sync per layer: TPOT 33 -> 49 ms
        # against SDPA on the H100); a batch with no padding anywhere goes without one (_mask)
        self._unmask = getattr(model.config, "_attn_implementation", "").startswith("flash_attention")
        self.waiting: deque[Sequence] = deque()
        self.cv = threading.Condition()
        self.batch: Batch | None = None
        self.counters = Counters()
        self._thread = threading.Thread(target=self._run, name="hf-scheduler", daemon=True)
        self._stop = False
        self._inflight: list[Sequence] = []  # admitted but not yet in the batch (for _fail_all)
        self._outbox: dict[object, list] = {}  # loop -> [(put, event)] of this step
        self._last_log = time.monotonic()
        self._logged_tokens = 0

    # --- called from other threads -------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self.cv:
            self._stop = True
            self.cv.notify()
        self._thread.join(timeout=10)

    def submit(self, seqs: list[Sequence]) -> None:
        with self.cv:
            self.waiting.extend(seqs)
            self.cv.notify()

    def load(self) -> dict:
        batch = self.batch
        return {
            "running": len(batch) if batch else 0,
            "waiting": len(self.waiting),
            "kv_cache_bytes": batch.kv_bytes() if batch else 0,
        }

    # --- the scheduler thread ------------------------------------------------------------------
    def _mask(self, mask: torch.Tensor) -> torch.Tensor | None:
        """The attention mask to give the model: None for flash-attn when no column of any row
        is padding (then causal attention is the whole mask)."""
        if self._unmask and bool(mask.all()):
            return None
        return mask

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self.cv:
                    while not self._stop and not self.waiting and not self.batch:
                        self.cv.wait()
                    if self._stop:
                        return
                try:
                    self._step()
                except Exception as exc:  # keep serving: fail the sequences involved, not the server
                    log.exception("generation step failed")
                    self._fail_all(f"{type(exc).__name__}: {exc}")
                self._flush()
                self._maybe_log()

    def _emit(self, seq: Sequence, event: tuple) -> None:
        if seq.loop is None:
            seq.put(event)
        else:
            self._outbox.setdefault(seq.loop, []).append((seq.put, event))

    def _flush(self) -> None:
        for loop, items in self._outbox.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that loop is closed (server shutting down): nobody listens
                pass
        self._outbox = {}

    def _step(self) -> None:
        room = self.max_batch_size - (len(self.batch) if self.batch else 0)
        admitted = []
        with self.cv:
            while self.waiting and len(admitted) < room:
                seq = self.waiting.popleft()
                if seq.aborted:
                    self._emit(seq, ("finish", "abort"))
                else:
                    admitted.append(seq)
        self._inflight = admitted
        echo_only = [s for s in admitted if s.params.max_tokens == 0 and s.params.prompt_logprobs is not None]
        if echo_only:  # scoring: no batch row, one forward per shared prefix
            self._score(echo_only)
            admitted = [s for s in admitted if s.params.max_tokens or s.params.prompt_logprobs is None]
        if admitted:  # generation: its KV cache gets the memory the kept scoring prompt held
            self.prefix_cache.clear()
        for group in self._groups(admitted):
            self._prefill(group)
            self._flush()  # first tokens out before the next decode step (time to first token)
        self._inflight = []
        if self.batch:
            if self.spec is not None:
                self._spec_decode()
            else:
                self._decode()

    def _groups(self, seqs: list[Sequence]):
        group, longest = [], 0
        for seq in seqs:
            if seq.params.max_tokens == 0 and seq.params.prompt_logprobs is None:
                self._finish_now(seq)  # nothing to compute
                continue
            n = len(seq.prompt_ids)
            new_longest = max(longest, n)
            rows = len(group) + 1
            scoring = any(s.params.prompt_logprobs is not None for s in (*group, seq))
            too_big = rows * new_longest > MAX_PREFILL_TOKENS or (
                scoring and rows * new_longest * self.vocab > MAX_PROMPT_LOGIT_ELEMS
            )
            if group and too_big:
                yield group
                group, new_longest = [], n
            group.append(seq)
            longest = new_longest
        if group:
            yield group

    def _score(self, seqs: list[Sequence]) -> None:
        groups = scoring.shared_prefix_groups(seqs)
        for batch in scoring.forward_batches(groups, MAX_PREFILL_TOKENS, MAX_PROMPT_LOGIT_ELEMS, self.vocab):
            for seq, plp in scoring.score_batch(self.model, batch, self.pad_id, self.device, self.prefix_cache):
                self._emit(seq, ("prompt", plp))
                self._done(seq, ("finish", "length"))
            self.counters.prefill_batches += 1
            self._flush()

    def _finish_now(self, seq: Sequence) -> None:
        self.counters.requests_finished += 1
        self.counters.prompt_tokens += len(seq.prompt_ids)
        self._emit(seq, ("finish", "length"))

    def _prefill(self, group: list[Sequence]) -> None:
        lens = [len(s.prompt_ids) for s in group]
        width = max(lens)
        ids = torch.full((len(group), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        seen = torch.zeros((len(group), self.vocab), dtype=torch.bool)
        for i, s in enumerate(group):
            ids[i, width - lens[i] :] = torch.tensor(s.prompt_ids)
            mask[i, width - lens[i] :] = 1
            seen[i, s.prompt_ids] = True
        ids, mask, seen = ids.to(self.device), mask.to(self.device), seen.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        scoring = [i for i, s in enumerate(group) if s.params.prompt_logprobs is not None]
        cache = DynamicCache()
        out = self.model(
            input_ids=ids,
            attention_mask=self._mask(mask),
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=0 if scoring else 1,
        )
        for i in scoring:
            s = group[i]
            plp = prompt_logprobs(out.logits[i, width - lens[i] :], s.prompt_ids, s.params.prompt_logprobs)
            self._emit(s, ("prompt", plp))
        logits = out.logits[:, -1, :].float()
        del out
        params = [s.params for s in group]
        new = Batch(
            group,
            cache,
            mask,
            torch.tensor(lens, device=self.device),
            row_tensors(params, self.vocab, self.device),
            seen,
        )
        self.counters.prefill_batches += 1
        self._sample_and_emit(new, logits)
        if not new:
            return
        if self.spec is not None:
            self._flush()  # first tokens out before the draft reads the prompts
            survivors = [i for i, s in enumerate(group) if s in new.rows]
            index = torch.tensor(survivors, device=self.device)
            width = new.kv_len  # keep() may have trimmed columns that became all padding
            new.draft_cache, new.pending = self.spec.prefill(
                ids.index_select(0, index)[:, -width:], new.mask
            )
        if self.batch:
            self.batch.merge(new)
        else:
            self.batch = new

    def _decode(self) -> None:
        b = self.batch
        ones = torch.ones((len(b), 1), dtype=b.mask.dtype, device=b.mask.device)
        b.mask = torch.cat([b.mask, ones], dim=1)
        logits = None
        if self.graphs is not None and self.graphs.failed is None and self.graphs.fits(len(b), b.kv_len):
            try:
                logits = self.graphs.step(b).float()
            except Exception as exc:  # e.g. a capture this GPU/torch refuses: decode eagerly from now on
                log.exception("graphed decode step failed; decoding eagerly from now on")
                self.graphs.failed = f"{type(exc).__name__}: {exc}"
        if logits is None:
            out = self.model(
                input_ids=b.last[:, None],
                attention_mask=self._mask(b.mask),
                position_ids=b.positions[:, None],
                past_key_values=b.cache,
                use_cache=True,
            )
            logits = out.logits[:, -1, :].float()
            del out
            b.homed = False  # the cache grew by concatenation: new tensors, not the static buffer's
            if self.graphs is not None:
                self.graphs.eager_steps += 1
        b.positions += 1
        self.counters.decode_steps += 1
        self.counters.decode_rows += len(b)
        self._sample_and_emit(b, logits)
        if not b:
            self.batch = None

    def _sample_and_emit(self, b: Batch, logits: torch.Tensor) -> None:
        """Sample one token per row, hand it to its sink, and drop the rows that finished."""
        f = b.flags
        if f.min_token_rows:
            n_out = [len(s.out_ids) for s in b.rows]
            params = [s.params for s in b.rows]
            masked = ban_stop_tokens(logits, f.min_token_rows, params, n_out, self.eos_ids)
        else:
            masked = logits
        tokens = sample(masked, b.t, b.seen, f)
        b.last = tokens
        b.seen[torch.arange(len(b), device=tokens.device), tokens] = True
        lps = token_logprobs(logits, tokens, f.logprob_rows, f.max_logprobs) if f.logprob_rows else {}
        keep = [i for i, (seq, tok) in enumerate(zip(b.rows, tokens.tolist()))
                if self._append(seq, tok, lps.get(i), f.max_logprobs)]  # fmt: skip
        self._keep(b, keep)

    def _append(self, seq: Sequence, tok: int, lp, max_logprobs: int) -> bool:
        """Hand one new token to its sequence; False when the sequence is done (it then leaves)."""
        p = seq.params
        if seq.aborted:
            self._done(seq, ("finish", "abort"))
            return False
        if len(seq.out_ids) >= p.max_tokens:  # max_tokens 0: the prefill was only for scoring
            self._done(seq, ("finish", "length"))
            return False
        seq.out_ids.append(tok)
        self.counters.generated_tokens += 1
        n = len(seq.out_ids)
        finish = None
        if n >= p.min_tokens and (
            (tok in self.eos_ids and not p.ignore_eos) or tok in p.stop_token_ids
        ):
            finish = "stop"
        elif n >= p.max_tokens or len(seq.prompt_ids) + n >= self.max_len:
            finish = "length"
        if lp is not None and p.logprobs < max_logprobs:
            lp = (lp[0], lp[1][: p.logprobs])
        event = ("token", tok, lp, finish)
        if finish:
            self._done(seq, event)
            return False
        self._emit(seq, event)
        return True

    @staticmethod
    def _keep(b: Batch, keep: list[int]) -> None:
        if len(keep) < len(b):
            if keep:
                b.keep(keep)
            else:
                b.rows = []

    # --- speculative decoding (speculative.py explains the step and the KV layout) ---------------
    def _spec_decode(self) -> None:
        b, spec = self.batch, self.spec
        # a row can emit `room` more tokens: it drafts at most room - 1 (the target adds one)
        budgets = []
        for s in b.rows:
            n = len(s.out_ids)
            room = min(s.params.max_tokens - n, self.max_len - len(s.prompt_ids) - n)
            budgets.append(max(0, min(spec.k, room - 1)))
        if max(budgets) == 0:  # every row is at its last token: a plain step
            spec.catch_up(b)
            self._decode()
            return
        drafts = spec.propose(b, budgets)
        k = drafts.tokens.shape[1]
        width = k + 1
        b.mask = torch.cat([b.mask, b.mask.new_ones((len(b), width))], dim=1)
        steps = torch.arange(width, device=self.device)
        ids = torch.cat([b.last[:, None], drafts.tokens], dim=1)
        positions = (b.positions[:, None] + steps).clamp(max=self.max_len - 1)
        logits = None
        g = self.graphs
        if g is not None and g.failed is None and g.fits(len(b), b.kv_len, width):
            try:
                logits = g.run(b.cache, b.homed, ids, positions, b.mask).float()
                b.homed = True
            except Exception as exc:  # as in _decode: eagerly from now on
                log.exception("graphed verification step failed; decoding eagerly from now on")
                g.failed = f"{type(exc).__name__}: {exc}"
        if logits is None:
            out = self.model(input_ids=ids, attention_mask=self._mask(b.mask), position_ids=positions,
                             past_key_values=b.cache, use_cache=True)  # fmt: skip
            logits = out.logits.float()
            del out
            b.homed = False
            if g is not None:
                g.eager_steps += 1
        params = [s.params for s in b.rows]
        n_out = [len(s.out_ids) for s in b.rows]
        accepted, tokens = accept(logits, drafts, b.t, b.seen, b.flags, params, n_out, self.eos_ids)
        kept = steps[None, :] <= accepted[:, None]  # [B, width]: last + accepted drafts
        b.mask[:, -width:] = kept.to(b.mask.dtype)  # rejected drafts become holes
        b.pending = drafts.tokens[:, -1].clone()
        b.positions += accepted + 1
        b.last = tokens.gather(1, accepted[:, None])[:, 0]
        rows = torch.arange(len(b), device=self.device)[:, None].expand(-1, width)
        b.seen[rows[kept], tokens[kept]] = True
        self.counters.decode_steps += 1
        self.counters.decode_rows += len(b)
        spec.counters.verify_forward_passes += 1
        n_acc, emitted = accepted.tolist(), tokens.tolist()
        spec.counters.add(drafts.counts, n_acc)
        f = b.flags
        lps = {}
        if f.logprob_rows:
            flat = [i * width + j for i in f.logprob_rows for j in range(n_acc[i] + 1)]
            lps = token_logprobs(logits.view(-1, logits.shape[-1]), tokens.view(-1), flat, f.max_logprobs)
        del logits
        keep = []
        for i, seq in enumerate(b.rows):
            for j in range(n_acc[i] + 1):
                if not self._append(seq, emitted[i][j], lps.get(i * width + j), f.max_logprobs):
                    break
            else:
                keep.append(i)
        self._keep(b, keep)
        if not b:
            self.batch = None
        elif b.holes() >= max(COMPACT_MIN_HOLES, b.kv_len // 2):
            b.compact()
            spec.counters.compactions += 1

    def _done(self, seq: Sequence, event: tuple) -> None:
        self.counters.requests_finished += 1
        self.counters.prompt_tokens += len(seq.prompt_ids)
        self._emit(seq, event)

    def _fail_all(self, message: str) -> None:
        self.counters.errors += 1
        rows = (self.batch.rows if self.batch else []) + self._inflight
        for seq in {id(s): s for s in rows}.values():
            self._emit(seq, ("error", message))
        self.batch = None
        self._inflight = []

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if now - self._last_log < 10:
            return
        c = self.counters
        gen = c.generated_tokens - self._logged_tokens
        if gen:
            log.info(
                "running %d, waiting %d, %.1f generated tok/s, %d requests done",
                len(self.batch) if self.batch else 0,
                len(self.waiting),
                gen / (now - self._last_log),
                c.requests_finished,
            )
        self._logged_tokens = c.generated_tokens
        self._last_log = now
