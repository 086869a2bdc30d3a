"""Echo-only sequences (max_tokens 0 with prompt logprobs: loglikelihood scoring) without the
generation machinery: no sampling, one forward per shared prefix, and the KV cache of the last
prompt kept for the next one (`PrefixCache`: a prefix shared across requests is computed once).

A prompt token's logprob depends only on the tokens before it, so prompt p needs the model's
outputs over p[:-1] only, and a prompt whose p[:-1] is a prefix of another's p[:-1] is scored by
that other's forward. The four choices of an MMLU question (context + " A" ... " D"), sent
together or arriving together, then cost one forward, as in lm-eval's own `hf` model, which
groups them the same way. Forwards are batched right-padded with no attention mask, as lm-eval's
`hf` model runs them: causal attention keeps the padding (after every real token) out of the
real positions, and their outputs are never read.
"""

from __future__ import annotations

import torch


def shared_prefix_groups(seqs: list) -> list[tuple[list[int], list]]:
    """(the ids to run forward, the sequences it scores) per group. Sorted by p[:-1], a key that
    is a prefix of any later key is a prefix of the next one, so one pass from the end finds
    every containment."""
    groups: list[tuple[list[int], list]] = []
    prev: list[int] | None = None
    for seq in sorted(seqs, key=lambda s: s.prompt_ids[:-1], reverse=True):
        key = seq.prompt_ids[:-1]
        if prev is not None and prev[: len(key)] == key:
            groups[-1][1].append(seq)
        else:
            groups.append((key, [seq]))
        prev = key
    return groups


# padded tokens per real token a forward batch may carry: on a CPU, batching rows gains little and
# padding costs its full share (the benchmark's concurrent MMLU questions differ by 2x in length)
MAX_PADDING = 1.15


def forward_batches(groups, max_tokens: int, max_logit_elems: int, vocab: int):
    """Groups in forward batches (similar lengths together) within the prefill bounds."""
    batch, longest, real = [], 0, 0
    for g in sorted(groups, key=lambda g: len(g[0])):
        n = max(len(g[0]), 1)
        width = max(longest, n)
        rows = len(batch) + 1
        if batch and (rows * width > max_tokens or rows * width * vocab > max_logit_elems
                      or rows * width > MAX_PADDING * (real + n)):  # fmt: skip
            yield batch
            batch, width, real = [], n, 0
        batch.append(g)
        longest, real = width, real + n
    if batch:
        yield batch


class PrefixCache:
    """The KV cache and per-position results of the last scored prompt, for the next forward to
    start where it stops sharing tokens with it. Loglikelihood tasks repeat a long prefix across
    questions (a subject's header; with few-shot, the examples: most of every prompt), which
    lm-eval's `hf` model computes again for every question; here it costs one forward.

    `ids`: the prompt ids it holds; `kv`: per layer (keys, values) of `ids`, batch 1; `done`: per
    position i < len(ids) - 1, (logprob of ids[i + 1], its top `k` [(id, logprob)])."""

    MAX_TOKENS = 8192  # a longer prompt is not kept (its KV would be 0.05-1 GB)
    MIN_REUSE = 4  # shorter shared prefixes are computed again: an extra cache copy costs more

    def __init__(self):
        self.ids: list[int] = []
        self.kv = None
        self.done: list = []
        self.k = 0
        self.off = False  # a model whose cache is not plain per-layer KV (sliding, recurrent)

    def clear(self) -> None:
        self.ids, self.kv, self.done = [], None, []

    def reusable(self, batch) -> int:
        """How many leading positions of every row of `batch` can come from the cache: each row's
        shared prefix with it, less the last shared token (its output row predicts a token that may
        differ), and short of every sequence's last prompt token (scored from a fresh output row)."""
        if self.off or self.kv is None:
            return 0
        n = len(self.ids) - 1
        for key, seqs in batch:
            if any(s.params.prompt_logprobs > self.k for s in seqs):
                return 0
            same, limit = 0, min(len(key), len(self.ids))
            while same < limit and key[same] == self.ids[same]:
                same += 1
            n = min(n, same - 1, *(len(s.prompt_ids) - 2 for s in seqs))
        return n if n >= self.MIN_REUSE else 0

    def fits(self, model) -> bool:
        """Plain per-layer KV (what DynamicCache holds): no sliding window, all layers full
        attention; other models are scored without a cache."""
        if not self.off:
            cfg = model.config.get_text_config(decoder=True)
            sliding = getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True)
            kinds = set(getattr(cfg, "layer_types", None) or ["full_attention"])
            self.off = bool(sliding) or kinds != {"full_attention"}
        return not self.off

    def past(self, n: int, rows: int):
        from transformers import DynamicCache

        if not n:
            return DynamicCache()
        def rows_of(t):  # the kept row seen `rows` times: views, copied once by the cache
            return t[:, :, :n].expand(rows, -1, -1, -1)

        return DynamicCache(ddp_cache_data=[(rows_of(k), rows_of(v)) for k, v in self.kv])

    def keep(self, key: list[int], cache, row: int, reused: int, new_done: list, k: int) -> None:
        """Hold `key`'s KV (row `row` of the forward's `cache`) and its per-position results."""
        if len(key) > self.MAX_TOKENS or not key:
            return
        n = len(key)  # the row's own positions (right padding after them)
        self.kv = [(layer.keys[row : row + 1, :, :n].clone(), layer.values[row : row + 1, :, :n].clone())
                   for layer in cache.layers]  # fmt: skip
        self.done = self.done[:reused] + new_done
        self.ids, self.k = list(key), k


def score_batch(model, batch, pad_id: int, device, cache: PrefixCache | None = None) -> list[tuple[object, list]]:
    """(sequence, its prompt logprobs in sampling.prompt_logprobs' shape) for every sequence of
    the groups in `batch`, from one forward, starting past what `cache` holds of every row."""
    reused = cache.reusable(batch) if cache is not None else 0
    width = max(len(key) for key, _ in batch) - reused
    out = []
    logits = past = None
    if width > 0:
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        for r, (key, _) in enumerate(batch):
            ids[r, : len(key) - reused] = torch.tensor(key[reused:], dtype=torch.long)
        if cache is not None and cache.fits(model):  # the forward fills `past` in place
            past = cache.past(reused, len(batch))
            res = model(input_ids=ids.to(device), past_key_values=past, use_cache=True)
        else:
            res = model(input_ids=ids.to(device), use_cache=False)
        logits = res.logits
        del res
    for r, (key, seqs) in enumerate(batch):
        n_top = max(s.params.prompt_logprobs for s in seqs)
        # output row j is position reused + j; the cache holds positions < reused
        lp = logits[r, : len(key) - reused].float().log_softmax(-1) if len(key) > reused else None
        tops: list = []
        if lp is not None and n_top > 0:  # the top ones of a shared row are the same for every sequence
            top_v, top_i = lp.topk(n_top, dim=-1)
            tops = [list(zip(i, v)) for i, v in zip(top_i.tolist(), top_v.tolist())]
        held = cache.done[:reused] if reused else []
        for s in seqs:
            ids_ = s.prompt_ids
            if len(ids_) < 2:
                out.append((s, [None] * len(ids_)))
                continue
            target = torch.tensor(ids_[reused + 1 :], device=lp.device)
            chosen = lp[: len(ids_) - 1 - reused].gather(-1, target[:, None])[:, 0].tolist()
            k = s.params.prompt_logprobs
            mine = [t[:k] for t in tops[: len(chosen)]] if k else [[] for _ in chosen]
            out.append((s, [None, *((c, t[:k]) for c, t in held), *zip(chosen, mine)]))
        if cache is not None and past is not None and r == len(batch) - 1:
            target = torch.tensor(key[reused + 1 :], device=lp.device)
            own = lp[: len(key) - 1 - reused].gather(-1, target[:, None])[:, 0].tolist()
            tops_ = tops if n_top > 0 else [[] for _ in own]
            cache.keep(key, past, r, reused, list(zip(own, tops_)), n_top)
    del logits, past
    return out
