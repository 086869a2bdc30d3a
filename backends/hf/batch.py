"""The running batch: sequences decoded together, and their row-aligned tensors.

Rows are left-padded to a common KV length. Each row carries its own position ids (rotary
positions come from them, not from the cache index) and an attention mask that hides its padding,
so rows of different lengths, admitted at different times, share one `DynamicCache`:

- a new group (prefilled together, left-padded) joins by padding both caches on the left to the
  longer length and concatenating along the batch dimension;
- finished rows leave by `index_select`, and KV columns that are padding in every remaining row
  are trimmed off the left.
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
        self.refresh()

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def kv_len(self) -> int:
        return self.mask.shape[1]

    def refresh(self) -> None:
        self.flags = BatchFlags.of([s.params for s in self.rows], [s.generator for s in self.rows])

    def kv_bytes(self) -> int:
        return sum(
            layer.keys.numel() * layer.keys.element_size() * 2
            for layer in self.cache.layers
            if getattr(layer, "keys", None) is not None
        )

    def keep(self, keep: list[int]) -> None:
        """Only keep rows `keep` (in order), then trim columns that are padding everywhere."""
        index = torch.tensor(keep, device=self.mask.device)
        self.rows = [self.rows[i] for i in keep]
        self.mask = self.mask.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        self.last = self.last.index_select(0, index)
        self.seen = self.seen.index_select(0, index)
        self.t = {k: v.index_select(0, index) for k, v in self.t.items()}
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)
        first = int(self.mask.any(0).to(torch.int8).argmax())
        if first > 0:
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, first:]
                layer.values = layer.values[:, :, first:]
        self.refresh()

    def merge(self, other: Batch) -> None:
        """Append the rows of `other` (a freshly prefilled group) to this batch."""
        length = max(self.kv_len, other.kv_len)

        def left_pad(x, to, dim):  # pad dimension `dim` (from the end) on the left with zeros
            missing = to - x.shape[dim]
            if missing == 0:
                return x
            pad = [0, 0] * (-dim - 1) + [missing, 0]
            return F.pad(x, pad)

        self.mask = torch.cat([left_pad(self.mask, length, -1), left_pad(other.mask, length, -1)])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([left_pad(mine.keys, length, -2), left_pad(theirs.keys, length, -2)])
            mine.values = torch.cat(
                [left_pad(mine.values, length, -2), left_pad(theirs.values, length, -2)]
            )
        self.rows = self.rows + other.rows
        self.positions = torch.cat([self.positions, other.positions])
        self.last = torch.cat([self.last, other.last])
        self.seen = torch.cat([self.seen, other.seen])
        self.t = {k: torch.cat([v, other.t[k]]) for k, v in self.t.items()}
        self.refresh()
