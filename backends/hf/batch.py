"""The running batch: sequences decoded together, and their row-aligned tensors.

Rows are left-padded to a common KV length. Each row carries its own position ids (rotary
positions come from them, not from the cache index) and an attention mask that hides its padding,
so rows of different lengths, admitted at different times, share one `DynamicCache`:

- a new group (prefilled together, left-padded) joins by padding both caches on the left to the
  longer length and concatenating along the batch dimension;
- finished rows leave by `index_select`, and KV columns that are padding in every remaining row
  are trimmed off the left.

A speculating batch (`speculative.py`) also carries the draft model's cache, one column shorter
than the target's, and the token of that missing column per row (`pending`); rejected draft
tokens leave holes (mask 0) inside rows, which `compact` squeezes out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from backends.hf.sampling import BatchFlags


class Batch:
    def __init__(self, rows, cache: DynamicCache, mask, positions, tensors, seen):
        self.rows = rows  # list[Sequence], row i of every tensor belongs to rows[i]
        self.cache = cache  # KV [B, heads, L, head_dim] per layer
        self.mask = mask  # [B, L] long, 1 where the KV column is a real token of that row
        self.positions = positions  # [B] long, position id of each row's next input token
        self.last = None  # [B] long, each row's next input token (its last sampled one)
        self.t = tensors  # per-row sampling tensors (sampling.row_tensors)
        self.seen = seen  # [B, V] bool, tokens in prompt or output (repetition penalty)
        self.flags = BatchFlags()
        self.draft_cache: DynamicCache | None = None  # the draft's KV: every column but the last
        self.pending = None  # [B] long, the token of the last target column (speculating only)
        self.homed = False  # cache layers are views of graphs.StaticDecoder's buffer
        self.draft_homed = False  # the same for the draft's cache and the draft's decoder
        self.refresh()

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def kv_len(self) -> int:
        return self.mask.shape[1]

    def refresh(self) -> None:
        self.flags = BatchFlags.of([s.params for s in self.rows], [s.generator for s in self.rows])

    def caches(self) -> list[DynamicCache]:
        return [self.cache] if self.draft_cache is None else [self.cache, self.draft_cache]

    def kv_bytes(self) -> int:
        return sum(
            layer.keys.numel() * layer.keys.element_size() * 2
            for cache in self.caches()
            for layer in cache.layers
            if getattr(layer, "keys", None) is not None
        )

    def keep(self, keep: list[int]) -> None:
        """Only keep rows `keep` (in order), then trim columns that are padding everywhere."""
        index = torch.tensor(keep, device=self.mask.device)
        self.homed = self.draft_homed = False
        self.rows = [self.rows[i] for i in keep]
        self.mask = self.mask.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        self.last = self.last.index_select(0, index)
        self.seen = self.seen.index_select(0, index)
        self.t = {k: v.index_select(0, index) for k, v in self.t.items()}
        if self.pending is not None:
            self.pending = self.pending.index_select(0, index)
        for cache in self.caches():
            for layer in cache.layers:
                layer.keys = layer.keys.index_select(0, index)
                layer.values = layer.values.index_select(0, index)
        # (a row's `last` column is real, so `first` never reaches past the draft's columns)
        first = int(self.mask.any(0).to(torch.int8).argmax())
        if first > 0:
            self.mask = self.mask[:, first:]
            for cache in self.caches():
                for layer in cache.layers:
                    layer.keys = layer.keys[:, :, first:]
                    layer.values = layer.values[:, :, first:]
        self.refresh()

    def holes(self) -> int:
        """KV columns the longest row does not use (padding and rejected drafts)."""
        return self.kv_len - int(self.mask.sum(1).max())

    def compact(self) -> None:
        """Squeeze masked-out columns out of every row (left-padding again to the longest row).
        The last column stays, hole or not: the draft cache is defined as all columns but it."""
        length = self.kv_len
        self.homed = self.draft_homed = False
        valid = self.mask.bool()
        valid[:, -1] = True
        new_len = int(valid.sum(1).max())
        # each row's valid column indices, ascending and right-aligned; -1 marks left padding
        col = torch.arange(length, device=self.mask.device).expand_as(valid)
        index = torch.where(valid, col, -1).sort(dim=1).values[:, length - new_len :]
        pad = index < 0
        index = index.clamp(min=0)
        self.mask = self.mask.gather(1, index).masked_fill(pad, 0)

        def gather(x, idx):  # x [B, heads, L, head_dim], idx [B, L']
            b, h, _, d = x.shape
            return x.gather(2, idx[:, None, :, None].expand(b, h, idx.shape[1], d))

        for layer in self.cache.layers:
            layer.keys, layer.values = gather(layer.keys, index), gather(layer.values, index)
        if self.draft_cache is not None:
            for layer in self.draft_cache.layers:
                layer.keys = gather(layer.keys, index[:, :-1])
                layer.values = gather(layer.values, index[:, :-1])

    def merge(self, other: Batch) -> None:
        """Append the rows of `other` (a freshly prefilled group) to this batch."""
        length = max(self.kv_len, other.kv_len)
        self.homed = self.draft_homed = False

        def left_pad(x, to, dim):  # pad dimension `dim` (from the end) on the left with zeros
            missing = to - x.shape[dim]
            if missing == 0:
                return x
            pad = [0, 0] * (-dim - 1) + [missing, 0]
            return F.pad(x, pad)

        self.mask = torch.cat([left_pad(self.mask, length, -1), left_pad(other.mask, length, -1)])
        pairs = [(self.cache, other.cache, length)]
        if self.draft_cache is not None:  # one column shorter on both sides
            pairs.append((self.draft_cache, other.draft_cache, length - 1))
            self.pending = torch.cat([self.pending, other.pending])
        for cache, theirs_cache, n in pairs:
            for mine, theirs in zip(cache.layers, theirs_cache.layers):
                mine.keys = torch.cat([left_pad(mine.keys, n, -2), left_pad(theirs.keys, n, -2)])
                mine.values = torch.cat([left_pad(mine.values, n, -2), left_pad(theirs.values, n, -2)])
        self.rows = self.rows + other.rows
        self.positions = torch.cat([self.positions, other.positions])
        self.last = torch.cat([self.last, other.last])
        self.seen = torch.cat([self.seen, other.seen])
        self.t = {k: torch.cat([v, other.t[k]]) for k, v in self.t.items()}
        self.refresh()
