"""The numbers of `hyperbench agree`, from what engines return on the wire (no server here).

Token identity. vLLM and llama.cpp name tokens by id when asked (`return_tokens_as_token_ids`);
an engine that cannot (our transformers server today) names them by text, and texts are not
ids: byte-fallback pieces of a SentencePiece vocabulary all read "\\ufffd", "▁A" and "<0x41>"
both read "A". So every token is kept as (id or None, text), where the text is always the
harness's `tokenizer.decode([id])` for an id (engines' own texts differ: llama.cpp keeps the
leading space, vLLM shows "" for a byte piece), and an engine's text is mapped back to an id
where exactly one id reads that way. Two engines that both give ids are compared by id
("compared by: ids"); otherwise by text, and tokens whose text several ids share are left out
of the explicit buckets (they fall into the remainder) or counted as ambiguous.

KL of next-token distributions from top-K logprobs. The full distributions are not on the wire
(vLLM caps K at 20), so KL(ref || variant) is computed on a coarser partition of the vocabulary:
one bucket per token that both engines list in their top-K (and can name unambiguously), and one
bucket for everything else, whose mass is 1 minus the listed mass on each side. Coarsening never
increases a KL divergence (data-processing inequality), so this is a LOWER BOUND of the full
KL, and exact when the shared top-K hold all the mass; `ref_mass_shared` (the reference's mass in
the shared buckets) says how tight it is. A token only one engine lists cannot go in a bucket of
its own: the other engine's probability for it is not known, only that it is below its K-th.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

ID_PREFIX = "token_id:"
REST_FLOOR = 1e-12  # a remainder mass below rounding noise (top-K summing to 1 + 1e-7)


@dataclass
class Tokens:
    """The harness's naming of tokens: id -> text, and text -> id where that is unique."""

    decode: Callable[[int], str]
    by_text: dict[str, list[int]]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Tokens:
        by_text: dict[str, list[int]] = {}
        texts = [tokenizer.decode([i]) for i in range(len(tokenizer))]
        for i, t in enumerate(texts):
            by_text.setdefault(t, []).append(i)
        return cls(decode=lambda i: texts[i] if 0 <= i < len(texts) else f"<{i}>", by_text=by_text)

    def ambiguous(self, text: str) -> bool:
        return len(self.by_text.get(text, ())) != 1

    def token(self, name: str) -> tuple[int | None, str]:
        """An engine's name of a token ('token_id:42' or text) -> (id or None, harness text)."""
        if name.startswith(ID_PREFIX):
            tid = int(name[len(ID_PREFIX):])
            return tid, self.decode(tid)
        ids = self.by_text.get(name, ())
        return (ids[0] if len(ids) == 1 else None), name


# ---------------------------------------------------------------------------- parsing responses


def parse_generation(choice: dict, tokens: Tokens) -> list[list]:
    """The generated tokens of a completion choice (with logprobs) as [[id|None, text], ...]."""
    return [list(tokens.token(t)) for t in choice["logprobs"]["tokens"]]


def parse_scoring(choice: dict, n_prompt: int, tokens: Tokens) -> dict:
    """An `echo` + `logprobs=K` + `max_tokens=1` choice -> per position p = 1..n_prompt: the
    logprob of prompt token p (None for the one after the prompt) and the top-K distribution
    predicting position p as [[id|None, text, logprob], ...] (position n_prompt: the next token)."""
    lp = choice["logprobs"]
    tops = lp["top_logprobs"]
    if len(tops) < n_prompt + 1:
        raise ValueError(f"the engine echoed {len(tops) - 1} prompt tokens for a prompt of {n_prompt}")
    chosen = list(lp["token_logprobs"][1:n_prompt]) + [None]
    dists = []
    for top in tops[1 : n_prompt + 1]:
        dists.append([[*tokens.token(name), float(v)] for name, v in (top or {}).items()])
    return {"logprobs": chosen, "top": dists}


# ---------------------------------------------------------------------------- comparisons


def same_token(a: list, b: list, by_ids: bool) -> bool:
    return a[0] == b[0] if by_ids else a[1] == b[1]


def first_divergence(ref: list[list], var: list[list], by_ids: bool) -> int | None:
    """Index of the first generated token that differs; None when the sequences agree."""
    for i, (a, b) in enumerate(zip(ref, var)):
        if not same_token(a, b, by_ids):
            return i
    return None if len(ref) == len(var) else min(len(ref), len(var))


def _key(entry: list, by_ids: bool, tokens: Tokens):
    tid, text = entry[0], entry[1]
    if by_ids:
        return tid
    return None if tokens.ambiguous(text) else text


def kl_lower_bound(ref: list[list], var: list[list], by_ids: bool, tokens: Tokens) -> tuple[float, float]:
    """KL(ref || var) over {tokens both list} + {the rest}; returns (kl, ref mass in the shared buckets)."""
    p = {k: math.exp(e[2]) for e in ref if (k := _key(e, by_ids, tokens)) is not None}
    q = {k: math.exp(e[2]) for e in var if (k := _key(e, by_ids, tokens)) is not None}
    shared = [k for k in p if k in q]  # in list order: the same sums in every process
    kl = sum(p[k] * math.log(p[k] / q[k]) for k in shared if p[k] > 0)
    p_rest = max(1.0 - sum(p[k] for k in shared), REST_FLOOR)
    q_rest = max(1.0 - sum(q[k] for k in shared), REST_FLOOR)
    kl += p_rest * math.log(p_rest / q_rest)
    return max(kl, 0.0), 1.0 - p_rest


def top1(dist: list[list]) -> list:
    return max(dist, key=lambda e: e[2])


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class EngineOutput:
    """What one engine returned for every prompt: greedy tokens and prompt scoring."""

    label: str
    token_ids: bool  # the engine named tokens by id
    greedy: list[list[list]] = field(default_factory=list)  # per prompt: [[id|None, text], ...]
    texts: list[str] = field(default_factory=list)  # per prompt: the generated text
    scoring: list[dict] = field(default_factory=list)  # per prompt: parse_scoring(...)


def compare(ref: EngineOutput, var: EngineOutput, tokens: Tokens) -> dict:
    """Every agreement number of `var` against `ref` (the JSON a run folder keeps)."""
    by_ids = ref.token_ids and var.token_ids
    firsts, ambiguous = [], 0
    for a, b in zip(ref.greedy, var.greedy):
        d = first_divergence(a, b, by_ids)
        firsts.append(d)
        if not by_ids:
            upto = len(a) if d is None else d
            ambiguous += sum(1 for e in a[:upto] if tokens.ambiguous(e[1]))
    n_tok = max((len(g) for g in ref.greedy), default=0)
    diffs, kls, mass, top_same, top_n = [], [], [], 0, 0
    for sa, sb in zip(ref.scoring, var.scoring):
        for x, y in zip(sa["logprobs"], sb["logprobs"]):
            if x is not None and y is not None:
                diffs.append(abs(x - y))
        for da, db in zip(sa["top"], sb["top"]):
            if not da or not db:
                continue
            kl, m = kl_lower_bound(da, db, by_ids, tokens)
            kls.append(kl)
            mass.append(m)
            # by text, a top-1 token that several ids read as is no evidence either way (an engine
            # naming tokens by text lists one value for all of them)
            ka, kb = _key(top1(da), by_ids, tokens), _key(top1(db), by_ids, tokens)
            if ka is not None and kb is not None:
                top_n += 1
                top_same += ka == kb
    matched = [n_tok if d is None else d for d in firsts]
    return {
        "compared_by": "ids" if by_ids else "text",
        "greedy": {
            "prompts": len(firsts),
            "identical": sum(d is None for d in firsts),
            "max_tokens": n_tok,
            "first_divergence": firsts,
            "min_first_divergence": min((d for d in firsts if d is not None), default=None),
            "mean_matched_tokens": sum(matched) / len(matched) if matched else None,
            "ambiguous_matches": None if by_ids else ambiguous,
        },
        "prompt_logprobs": {
            "positions": len(diffs),
            "max_abs_diff": max(diffs, default=None),
            "mean_abs_diff": sum(diffs) / len(diffs) if diffs else None,
        },
        "next_token": {
            "positions": len(kls),
            "kl_mean": sum(kls) / len(kls) if kls else None,
            "kl_p50": percentile(kls, 0.5),
            "kl_p99": percentile(kls, 0.99),
            "kl_max": max(kls, default=None),
            "top1_agreement": top_same / top_n if top_n else None,
            "top1_positions": top_n,
            "ref_mass_shared": sum(mass) / len(mass) if mass else None,
        },
    }
