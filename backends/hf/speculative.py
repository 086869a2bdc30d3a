"""Speculative decoding with a draft model, inside the continuous-batching scheduler.

One decode step of a speculating batch (`Scheduler._spec_decode`):

1. the draft model proposes up to k tokens for every row, one batched forward per token; a row
   stops proposing after a token to which the draft gave less than `confidence_threshold`
   probability (transformers' `assistant_confidence_threshold`: that token is still proposed),
   or when the row has no room for more tokens; the batch drafts while any row still does;
2. the target model scores `[last, d1 .. dk]` of every row in one forward;
3. `accept` keeps, per row, greedy: the longest prefix of drafts equal to the target's argmax,
   then the target's own next token (so the text is the target's greedy text); sampling:
   standard speculative sampling (Leviathan et al. 2023, Chen et al. 2023): draft d_j is kept
   with probability min(1, p(d_j) / q(d_j)), and at the first rejection a token is drawn from
   max(0, p - q) renormalized; if all are kept, one more from p. The output tokens are then
   distributed exactly as the target's, where p and q are both computed with the request's own
   temperature / top-k / top-p / min-p / repetition penalty / min_tokens processing.

KV layout. Rows keep sharing one left-padded target cache (`batch.py`). A draft token the
target rejects is not cut out of the cache: its column stays and its attention-mask bit is set
to 0, like padding (rows accept different numbers of tokens, and a shared cache is
rectangular). `Batch.compact` squeezes those holes out when they pile up. The draft model's
cache has the same columns as the target's except the last one, whose token (`Batch.pending`)
the draft reads at the start of the next step together with `last`: so the draft never runs a
forward pass only to catch up. Both caches therefore share one mask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from backends.hf.sampling import (
    GREEDY_EPS,
    ban_stop_tokens,
    penalize,
    race,
    warped_probs,
)

log = logging.getLogger("hf.speculative")


@dataclass
class Drafts:
    tokens: torch.Tensor  # [B, k] long: proposed tokens (beyond counts[i]: fillers, never kept)
    probs: torch.Tensor | None  # [B, k, V] the distributions they were drawn from (None: all greedy)
    counts: list[int]  # tokens each row really proposed (0 .. k)


class SpecCounters:
    """Cumulative since start-up, with vLLM's definitions: a draft is one row's proposal in one
    step (rows that propose nothing are not counted), accepted tokens exclude the target's own
    token, and accepted_per_position[j] counts drafts whose token j+1 was accepted."""

    def __init__(self, k: int) -> None:
        self.drafts = 0
        self.draft_tokens = 0
        self.accepted_tokens = 0
        self.accepted_per_position = [0] * k
        self.draft_forward_passes = 0
        self.verify_forward_passes = 0
        self.compactions = 0

    def add(self, counts: list[int], accepted: list[int]) -> None:
        for c, n in zip(counts, accepted):
            if c == 0:
                continue
            self.drafts += 1
            self.draft_tokens += c
            self.accepted_tokens += n
            for j in range(n):
                self.accepted_per_position[j] += 1

    def as_dict(self) -> dict:
        return {**vars(self), "accepted_per_position": list(self.accepted_per_position)}


class Speculator:
    """The draft model and what it needs to propose tokens for a batch (scheduler thread only)."""

    def __init__(self, draft, *, k: int, confidence_threshold: float, vocab_size: int,
                 draft_vocab_size: int, eos_ids, max_len: int, graphs=None):  # fmt: skip
        self.draft = draft
        self.graphs = graphs  # graphs.StaticDecoder of the draft model (None: it decodes eagerly)
        self.k = k
        self.threshold = confidence_threshold
        self.vocab = vocab_size  # the target's: draft logits are cut or padded to it
        self.draft_vocab = draft_vocab_size
        self.eos_ids = eos_ids
        self.max_len = max_len
        self.counters = SpecCounters(k)

    # --- token ids and logits between the two vocabularies ---------------------------------------
    def _ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Target token ids as draft inputs: an id the draft's embedding lacks (a padded row of a
        bigger target vocabulary) becomes 0; it only costs acceptance, never correctness."""
        if self.draft_vocab >= self.vocab:
            return ids
        return ids.masked_fill(ids >= self.draft_vocab, 0)

    def _fit(self, logits: torch.Tensor) -> torch.Tensor:
        extra = self.vocab - logits.shape[-1]
        if extra < 0:
            return logits[..., : self.vocab]
        if extra > 0:
            return torch.nn.functional.pad(logits, (0, extra), value=float("-inf"))
        return logits

    def _forward(self, ids, mask, positions, cache, b=None):
        """Draft logits [B, V] after `ids` [B, w]; `b`: the batch whose draft cache this is (its
        steps can take the draft's graphs; a prefill's fresh cache cannot)."""
        self.counters.draft_forward_passes += 1
        g = self.graphs
        if b is not None and g is not None and g.failed is None and g.fits(len(b), mask.shape[1], ids.shape[1]):
            try:
                logits = g.run(cache, b.draft_homed, self._ids(ids), positions, mask)[:, -1]
                b.draft_homed = True
                return self._fit(logits.float())
            except Exception as exc:  # the engine's rule: eagerly from now on
                log.exception("graphed draft step failed; the draft decodes eagerly from now on")
                g.failed = f"{type(exc).__name__}: {exc}"
        out = self.draft(
            input_ids=self._ids(ids),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        if b is not None:
            b.draft_homed = False
            if g is not None:
                g.eager_steps += 1
        return self._fit(out.logits[:, -1, :].float())

    # --- prefill ---------------------------------------------------------------------------------
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[DynamicCache, torch.Tensor]:
        """Draft cache of a freshly prefilled group (left-padded `ids`, `mask` [B, L]) without
        its last column, and that column's tokens (`Batch.pending`)."""
        cache = DynamicCache()
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        self._forward(ids, mask, positions, cache)
        for layer in cache.layers:
            layer.keys = layer.keys[:, :, :-1]
            layer.values = layer.values[:, :, :-1]
        return cache, ids[:, -1].clone()

    def catch_up(self, b) -> None:
        """Before a plain decode step of a speculating batch: the draft reads the token it is
        behind by, and `last` becomes the one it will be behind by after the step."""
        self._forward(b.pending[:, None], b.mask, (b.positions - 1).clamp(min=0)[:, None], b.draft_cache, b)
        b.pending = b.last.clone()

    # --- proposing -------------------------------------------------------------------------------
    def propose(self, b, budgets: list[int]) -> Drafts:
        """Up to budgets[i] (<= k) draft tokens for row i of batch `b` (max(budgets) >= 1)."""
        rows, f, t = len(b), b.flags, b.t
        dev = b.mask.device
        k_max = max(budgets)
        n_out = [len(s.out_ids) for s in b.rows]
        params = [s.params for s in b.rows]
        greedy_rows = t["temperature"] < GREEDY_EPS
        seen = b.seen.clone() if f.any_rep else b.seen
        arange = torch.arange(rows, device=dev)
        open_ = [c > 0 for c in budgets]  # still proposing
        counts = [0] * rows
        tokens, probs = [], []
        # the token the draft is behind by (last column of the target cache), then `last`
        ids = torch.stack([b.pending, b.last], dim=1)
        positions = torch.stack([b.positions - 1, b.positions], dim=1).clamp(min=0)
        mask = torch.cat([b.mask, torch.ones_like(b.mask[:, :1])], dim=1)
        logits = self._forward(ids, mask, positions, b.draft_cache, b)
        for j in range(k_max):
            if f.min_token_rows:
                logits = ban_stop_tokens(logits, f.min_token_rows, params, [n + j for n in n_out],
                                         self.eos_ids)  # fmt: skip
            adjusted = penalize(logits, t, seen, f)
            tok = adjusted.argmax(-1)
            q = None
            if not f.all_greedy:
                q = warped_probs(adjusted, t, f)
                tok = torch.where(greedy_rows, tok, race(q, f.seeded))
                probs.append(q)
            tokens.append(tok)
            if f.any_rep:
                seen[arange, tok] = True
            for i in range(rows):
                if open_[i]:
                    counts[i] = j + 1
                    open_[i] = j + 1 < budgets[i]
            if self.threshold > 0 and any(open_):
                conf = adjusted.softmax(-1) if q is None else torch.where(
                    greedy_rows[:, None], adjusted.softmax(-1), q)  # fmt: skip
                sure = (conf.gather(-1, tok[:, None])[:, 0] >= self.threshold).tolist()
                open_ = [o and s for o, s in zip(open_, sure)]
            if not any(open_):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = (b.positions + j + 1).clamp(max=self.max_len - 1)[:, None]
            logits = self._forward(tok[:, None], mask, pos, b.draft_cache, b)
        return Drafts(
            tokens=torch.stack(tokens, dim=1),
            probs=torch.stack(probs, dim=1) if probs else None,
            counts=counts,
        )


def accept(logits: torch.Tensor, drafts: Drafts, t: dict, seen: torch.Tensor, f, params, n_out,
           eos_ids) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Verify drafts against the target's `logits` [B, k+1, V] (float32, position j scores the
    token after `last` and j drafts). Returns (accepted [B]: drafts kept per row, tokens
    [B, k+1]: row i emits tokens[i, :accepted[i] + 1], its kept drafts then the target's own)."""
    rows, width, vocab = logits.shape
    k = width - 1
    dev = logits.device
    d = drafts.tokens
    flat = logits.reshape(rows * width, vocab)
    if f.min_token_rows:  # position j of row i comes after n_out[i] + j tokens
        flat_rows = [i * width + j for i in f.min_token_rows for j in range(width)]
        flat_params = [params[r // width] for r in range(rows * width)]
        flat_n = [n_out[r // width] + r % width for r in range(rows * width)]
        flat = ban_stop_tokens(flat, flat_rows, flat_params, flat_n, eos_ids)
    t_flat = {key: v.repeat_interleave(width, dim=0) for key, v in t.items()}
    if f.any_rep:  # position j has also seen drafts 1..j
        s = seen[:, None, :].repeat(1, width, 1)
        row_index = torch.arange(rows, device=dev)[:, None]
        for j in range(1, width):
            s[row_index, torch.arange(j, width, device=dev)[None, :], d[:, j - 1][:, None]] = True
        flat = penalize(flat, t_flat, s.reshape(rows * width, vocab), f)
    greedy = flat.argmax(-1).view(rows, width)
    match = d == greedy[:, :k]
    if f.all_greedy:
        ok = match
    else:
        greedy_rows = t["temperature"] < GREEDY_EPS
        p = warped_probs(flat, t_flat, f).view(rows, width, vocab)
        q = drafts.probs
        p_d = p[:, :k].gather(-1, d[..., None])[..., 0]
        q_d = q.gather(-1, d[..., None])[..., 0]
        u = torch.rand((rows, k), device=dev)
        for i, gen in f.seeded:
            u[i] = torch.rand(k, generator=gen, device=dev)
        ok = torch.where(greedy_rows[:, None], match, u * q_d < p_d)
    counts = torch.tensor(drafts.counts, device=dev)
    ok &= torch.arange(k, device=dev)[None, :] < counts[:, None]
    accepted = ok.long().cumprod(-1).sum(-1)
    final = greedy.gather(1, accepted[:, None])[:, 0]
    if not f.all_greedy:
        at = accepted[:, None, None].expand(rows, 1, vocab)
        p_n = p.gather(1, at)[:, 0]
        q_pad = torch.cat([q, torch.zeros_like(q[:, :1])], dim=1)
        q_n = q_pad.gather(1, at)[:, 0] * (accepted < counts)[:, None]  # no residual after all kept
        residual = (p_n - q_n).clamp_(min=0)
        residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_n)
        final = torch.where(greedy_rows, final, race(residual, f.seeded))
    tokens = torch.cat([d, torch.zeros_like(d[:, :1])], dim=1)
    tokens.scatter_(1, accepted[:, None], final[:, None])
    return accepted, tokens
