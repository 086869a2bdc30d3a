"""From token ids to response text: incremental detokenization, stop strings, logprobs.

This runs on the server's event loop, not in the scheduler thread, so the decode loop stays lean.
"""

from __future__ import annotations

from backends.openai_server.logprobs import cached
from backends.openai_server.stops import find_stop, held_back


class IncrementalDetokenizer:
    """Text deltas as tokens arrive (vLLM's method): decode a short window that starts a few
    tokens back, so leading spaces and multi-byte characters come out right."""

    def __init__(self, tokenizer, context_ids=(), skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.ids = list(context_ids)[-6:]
        self.prefix = 0
        self.read = len(self.ids)
        self.skip = skip_special_tokens

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=self.skip)
        after = decode(self.ids[self.prefix :], skip_special_tokens=self.skip)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # an incomplete character (or a skipped special token): wait for more
        del self.ids[: self.prefix]
        self.prefix, self.read = self.read - self.prefix, len(self.ids)
        return after[len(before) :]

    def flush(self) -> str:
        """At the end: whatever is still held back (e.g. a final incomplete character)."""
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=self.skip)
        after = decode(self.ids[self.prefix :], skip_special_tokens=self.skip)
        self.prefix = self.read = len(self.ids)
        return after[len(before) :]


def token_text(tokenizer):
    """Per-token strings for logprobs (`tokenizer.decode([id])`, as vLLM reports them), cached."""
    return cached(lambda token_id: tokenizer.decode([token_id]))


class Choice:
    """The output of one prompt: generated text (cut at a stop string), counts, logprobs."""

    def __init__(self, index, tokenizer, token_text, prompt_ids, stops=(), min_tokens=0):
        self.index = index
        self.prompt_ids = prompt_ids
        self.detok = IncrementalDetokenizer(tokenizer, prompt_ids)
        self.token_text = token_text
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1  # a stop may start this far back
        self.min_tokens = min_tokens
        self.text = ""
        self.sent = 0  # characters of `text` already streamed
        self.checked = 0  # stop strings were searched up to here
        self.n_tokens = 0
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None
        self.prompt_lps: list | None = None  # [(token_id, lp | None, tops | None)]
        self.lps: list = []  # [(token_id, lp, tops)] for generated tokens
        self.error: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def on_event(self, event: tuple) -> bool:
        """Apply one engine event; True if a stop string ended this choice (abort the sequence)."""
        kind = event[0]
        if kind == "prompt":
            self.prompt_lps = [
                (tid, None, None) if x is None else (tid, x[0], x[1])
                for tid, x in zip(self.prompt_ids, event[1])
            ]
            return False
        if kind == "error":
            self.error = event[1]
            return False
        if self.done:
            return False  # tokens the scheduler made before it saw our abort
        if kind == "finish":
            self.finish_reason = "length" if event[1] == "abort" else event[1]
            self.text += self.detok.flush()
            return False
        _, token_id, lp, finish = event
        self.n_tokens += 1
        if lp is not None:
            self.lps.append((token_id, lp[0], lp[1]))
        self.text += self.detok.add(token_id)
        if self.stops and self.n_tokens >= self.min_tokens and self._cut_at_stop():
            return True
        if finish:
            self.text += self.detok.flush()
            if self.stops and self.n_tokens >= self.min_tokens and self._cut_at_stop():
                return True
            self.finish_reason = finish
        self.checked = len(self.text)
        return False

    def _cut_at_stop(self) -> bool:
        hit = find_stop(self.text, self.stops, max(0, self.checked - self.hold))
        if hit is None:
            return False
        cut, stop = hit
        self.text = self.text[:cut]
        self.finish_reason, self.stop_reason = "stop", stop
        return True

    def take_text(self) -> str:
        """Text that is safe to stream now: all of it once done, else all but a possible stop
        string's beginning."""
        end = len(self.text) if self.done else max(self.sent, len(self.text) - held_back(self.text, self.stops))
        delta = self.text[self.sent : end]
        self.sent = end
        return delta

    def text_offsets(self, entries, offset: int) -> tuple[list[int], int]:
        """Character offsets of `entries`' token texts from `offset`, and the offset after them."""
        offsets = []
        for token_id, _, _ in entries:
            offsets.append(offset)
            offset += len(self.token_text(token_id))
        return offsets, offset
