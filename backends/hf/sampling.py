"""Per-request sampling parameters, and sampling a whole batch at once.

Every row of a batch has its own temperature / top-p / top-k / min-p / repetition penalty / seed.
They live as row-aligned tensors in the batch (see `batch.py`), so one decode step samples every
row with a handful of tensor ops; only seeded rows cost a small per-row op (their noise must come
from their own generator, so a request's sample does not depend on who else is in the batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Temperatures below this are greedy (as in vLLM): dividing by them overflows the logits.
GREEDY_EPS = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None  # alternatives per generated token (None: no logprobs)
    prompt_logprobs: int | None = None  # alternatives per prompt token (echo + logprobs)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPS

    def generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None or self.greedy:
            return None
        return torch.Generator(device=device).manual_seed(self.seed & 0xFFFF_FFFF_FFFF_FFFF)


@dataclass
class BatchFlags:
    """What the rows of a batch need, worked out once per change of membership (not per step)."""

    all_greedy: bool = True
    any_rep: bool = False
    any_min_p: bool = False
    any_top_k: bool = False
    any_top_p: bool = False
    seeded: tuple[tuple[int, torch.Generator], ...] = ()
    logprob_rows: tuple[int, ...] = ()
    max_logprobs: int = 0
    min_token_rows: tuple[int, ...] = ()  # rows whose EOS / stop ids are banned for a while

    @classmethod
    def of(cls, params: list[SamplingParams], generators: list[torch.Generator | None]):
        sampled = [p for p in params if not p.greedy]
        lp_rows = tuple(i for i, p in enumerate(params) if p.logprobs is not None)
        return cls(
            all_greedy=not sampled,
            any_rep=any(p.repetition_penalty != 1.0 for p in params),
            any_min_p=any(p.min_p > 0 for p in sampled),
            any_top_k=any(p.top_k > 0 for p in sampled),
            any_top_p=any(p.top_p < 1.0 for p in sampled),
            seeded=tuple((i, g) for i, g in enumerate(generators) if g is not None),
            logprob_rows=lp_rows,
            max_logprobs=max((params[i].logprobs for i in lp_rows), default=0),
            min_token_rows=tuple(i for i, p in enumerate(params) if p.min_tokens > 0),
        )


def row_tensors(params: list[SamplingParams], vocab: int, device) -> dict[str, torch.Tensor]:
    """The per-row sampling tensors of a new group of sequences."""

    def t(values, dtype):
        return torch.tensor(values, dtype=dtype, device=device)

    return {
        "temperature": t([p.temperature for p in params], torch.float32),
        "top_p": t([p.top_p for p in params], torch.float32),
        "top_k": t([p.top_k if p.top_k > 0 else vocab for p in params], torch.long),
        "min_p": t([p.min_p for p in params], torch.float32),
        "rep": t([p.repetition_penalty for p in params], torch.float32),
        "min_tokens": t([p.min_tokens for p in params], torch.long),
    }


def ban_stop_tokens(logits, rows, params, n_out, eos_ids) -> torch.Tensor:
    """-inf on EOS / stop ids for rows that have not reached their min_tokens yet."""
    at_rows, at_ids = [], []
    for i in rows:
        if n_out[i] < params[i].min_tokens:
            ids = [*eos_ids, *params[i].stop_token_ids]
            at_rows += [i] * len(ids)
            at_ids += ids
    if not at_rows:
        return logits
    logits = logits.clone()
    index = torch.tensor([at_rows, at_ids], device=logits.device)  # one copy and one kernel
    logits[index[0], index[1]] = float("-inf")
    return logits


def sample(logits: torch.Tensor, t: dict[str, torch.Tensor], seen: torch.Tensor, f: BatchFlags):
    """Next token per row. `logits` is float32 [B, V] and is not modified."""
    logits = penalize(logits, t, seen, f)
    greedy = logits.argmax(-1)
    if f.all_greedy:
        return greedy
    sampled = race(warped_probs(logits, t, f), f.seeded)
    return torch.where(t["temperature"] < GREEDY_EPS, greedy, sampled)


def penalize(logits: torch.Tensor, t: dict[str, torch.Tensor], seen: torch.Tensor, f: BatchFlags):
    """The repetition penalty on tokens already seen (a new tensor; `logits` is kept)."""
    if not f.any_rep:
        return logits
    rep = t["rep"][:, None]
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    return torch.where(seen, penalized, logits)


def warped_probs(logits: torch.Tensor, t: dict[str, torch.Tensor], f: BatchFlags) -> torch.Tensor:
    """The distribution a sampled row draws from: temperature, then min-p / top-k / top-p.
    (Rows that are greedy get a meaningless distribution here: their caller takes the argmax.)"""
    x = logits / t["temperature"].clamp(min=GREEDY_EPS)[:, None]
    if f.any_min_p or f.any_top_k or f.any_top_p:
        x = _filter(x, t, f)
    return x.softmax(-1)


def race(probs: torch.Tensor, seeded=()) -> torch.Tensor:
    """One draw per row from `probs` [B, V] (rows need not be normalized).

    Exponential-race sampling (argmax p/q, q ~ Exp(1)) is a draw from `probs`, and lets each
    seeded row take its noise from its own generator: `seeded` is ((row, generator), ...)."""
    q = torch.empty_like(probs).exponential_()
    for i, gen in seeded:
        q[i].exponential_(generator=gen)
    return (probs / q).argmax(-1)


def _filter(x: torch.Tensor, t: dict[str, torch.Tensor], f: BatchFlags) -> torch.Tensor:
    """min-p, then top-k, then top-p (vLLM's order), on one sort of the batch."""
    sx, idx = x.sort(-1, descending=True)
    neg_inf = float("-inf")
    if f.any_min_p:
        p = sx.softmax(-1)
        sx = sx.masked_fill(p < t["min_p"][:, None] * p[:, :1], neg_inf)
    if f.any_top_k:
        rank = torch.arange(sx.shape[-1], device=sx.device)
        sx = sx.masked_fill(rank[None, :] >= t["top_k"][:, None], neg_inf)
    if f.any_top_p:
        p = sx.softmax(-1)
        # keep a token while the mass before it is within top_p: the first token always stays
        sx = sx.masked_fill(p.cumsum(-1) - p > t["top_p"][:, None], neg_inf)
    return torch.full_like(x, neg_inf).scatter_(-1, idx, sx)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, rows, n_top: int):
    """(logprob of the chosen token, [(id, logprob)] top n) for `rows`, from the raw logits."""
    index = torch.tensor(rows, device=logits.device)
    lp = logits.index_select(0, index).log_softmax(-1)
    chosen = lp.gather(-1, tokens.index_select(0, index)[:, None])[:, 0].tolist()
    if n_top > 0:
        top_v, top_i = lp.topk(n_top, dim=-1)
        tops = [list(zip(i, v)) for i, v in zip(top_i.tolist(), top_v.tolist())]
    else:
        tops = [[] for _ in rows]
    return dict(zip(rows, zip(chosen, tops)))


def prompt_logprobs(logits: torch.Tensor, ids: list[int], n_top: int):
    """Per prompt token: None for the first, else (logprob, [(id, logprob)] top n).

    `logits` [len(ids), V] are the model's outputs at the prompt positions (row i predicts i+1).
    """
    if len(ids) < 2:
        return [None] * len(ids)
    lp = logits[:-1].float().log_softmax(-1)
    target = torch.tensor(ids[1:], device=logits.device)
    chosen = lp.gather(-1, target[:, None])[:, 0].tolist()
    if n_top > 0:
        top_v, top_i = lp.topk(n_top, dim=-1)
        tops = [list(zip(i, v)) for i, v in zip(top_i.tolist(), top_v.tolist())]
    else:
        tops = [[] for _ in chosen]
    return [None, *zip(chosen, tops)]
