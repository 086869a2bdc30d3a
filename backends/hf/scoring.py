"""Echo-only sequences (max_tokens 0 with prompt logprobs: loglikelihood scoring) without the
generation machinery: no KV cache, no sampling, and one forward per shared prefix.

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


def score_batch(model, batch, pad_id: int, device) -> list[tuple[object, list]]:
    """(sequence, its prompt logprobs in sampling.prompt_logprobs' shape) for every sequence of
    the groups in `batch`, from one forward."""
    width = max(len(key) for key, _ in batch)
    out = []
    logits = None
    if width:
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        for r, (key, _) in enumerate(batch):
            ids[r, : len(key)] = torch.tensor(key, dtype=torch.long)
        logits = model(input_ids=ids.to(device), use_cache=False).logits
    for r, (key, seqs) in enumerate(batch):
        n_top = max(s.params.prompt_logprobs for s in seqs)
        lp = logits[r, : len(key)].float().log_softmax(-1) if key else None
        tops: list = []
        if key and n_top > 0:  # the top ones of a shared row are the same for every sequence
            top_v, top_i = lp.topk(n_top, dim=-1)
            tops = [list(zip(i, v)) for i, v in zip(top_i.tolist(), top_v.tolist())]
        for s in seqs:
            ids_ = s.prompt_ids
            if len(ids_) < 2:
                out.append((s, [None] * len(ids_)))
                continue
            target = torch.tensor(ids_[1:], device=lp.device)
            chosen = lp[: len(ids_) - 1].gather(-1, target[:, None])[:, 0].tolist()
            k = s.params.prompt_logprobs
            mine = [t[:k] for t in tops[: len(chosen)]] if k else [[] for _ in chosen]
            out.append((s, [None, *zip(chosen, mine)]))
    del logits
    return out
