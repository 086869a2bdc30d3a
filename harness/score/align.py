"""Which echoed prompt tokens score the continuation: pure functions over an engine's response.

A loglikelihood request sends `context + continuation` as text with `echo`, `logprobs` and
`max_tokens: 0`, and gets per-token logprobs of the whole prompt back. The continuation is a
suffix of the prompt, so its tokens are found from the end, by text: engines disagree about the
start (vLLM keeps the BOS token with a null logprob and counts its text "<s>" in the offsets;
llama.cpp drops it, or keeps it with an empty text), but not about where the prompt ends.

The offsets are trusted only when they describe the prompt: each token's text must sit in the
prompt where its offset says (allowing the one virtual leading space that SentencePiece puts on
the first word). When they do not (e.g. a server whose token texts lose their leading spaces),
`split_by_offsets` returns None and the caller splits by token counts instead, as lm-eval's own
`hf` model does: the continuation is what the whole prompt has beyond the context's token count.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PromptLogprobs:
    tokens: list[str]
    offsets: list[int] | None
    logprobs: list[float | None]
    top: list[dict[str, float] | None]
    generated: int = 0  # tokens the server generated (usage), listed after the prompt or not

    def head(self, n: int) -> PromptLogprobs:
        return PromptLogprobs(self.tokens[:n], None if self.offsets is None else self.offsets[:n],
                              self.logprobs[:n], self.top[:n])

    def prompt_part(self) -> PromptLogprobs:
        """Without generated tokens (a server refusing max_tokens 0 made one), assuming they are
        listed; `locate` also tries the other case (vLLM does not list a generated EOS)."""
        return self.head(max(0, len(self.tokens) - self.generated))


class AlignmentError(ValueError):
    pass


def prompt_logprobs(resp: dict) -> PromptLogprobs | None:
    """The legacy `logprobs` of an echo response, or None if it has none."""
    try:
        choice = resp["choices"][0]
    except (KeyError, IndexError, TypeError):
        return None
    lp = choice.get("logprobs") if isinstance(choice, dict) else None
    if not isinstance(lp, dict) or not isinstance(lp.get("token_logprobs"), list):
        return None
    n = len(lp["token_logprobs"])
    offsets = lp.get("text_offset")
    return PromptLogprobs(
        tokens=list(lp.get("tokens") or [""] * n),
        offsets=list(offsets) if isinstance(offsets, list) and len(offsets) == n else None,
        logprobs=list(lp["token_logprobs"]),
        top=list(lp.get("top_logprobs") or [None] * n),
        generated=int(((resp.get("usage") or {}).get("completion_tokens")) or 0),
    )


def locate(lp: PromptLogprobs, prompt: str, context_chars: int) -> tuple[PromptLogprobs, int | None]:
    """The prompt's tokens and the index of the first continuation token by text offsets (None
    if the offsets do not describe the prompt: split by counts then)."""
    candidates = [lp.prompt_part()] + ([lp] if lp.generated else [])
    for part in candidates:
        first = split_by_offsets(part, prompt, context_chars)
        if first is not None:
            return part, first
    return candidates[0], None


def split_by_offsets(lp: PromptLogprobs, prompt: str, context_chars: int) -> int | None:
    """Index of the first continuation token (every token holding a continuation character is
    one), or None when the offsets do not describe `prompt`."""
    if lp.offsets is None or len(lp.offsets) != len(lp.tokens) or not lp.tokens:
        return None
    end = lp.offsets[-1] + len(lp.tokens[-1])
    shift = end - len(prompt)  # text the server counts before the prompt (e.g. "<s>")
    first = None
    for i, (tok, off) in enumerate(zip(lp.tokens, lp.offsets)):
        pos = off - shift
        if i == 0 and lp.logprobs[0] is None and not prompt.startswith(tok, max(pos, 0)):
            continue  # the unscored first token: a BOS, whose text ("<s>", "") is not the prompt's
        if pos + len(tok) <= 0 and not tok:
            continue
        if not _token_at(prompt, tok, pos):
            return None
        if first is None and pos + len(tok) > context_chars:
            first = i
    return first


def _token_at(prompt: str, tok: str, pos: int) -> bool:
    if pos < 0:
        return False
    if prompt.startswith(tok, pos):
        return True
    if "\ufffd" in tok:  # part of a multi-byte character: its text is not the prompt's
        return True
    # SentencePiece's virtual space before the first word: " The" at offset 0 of "The ..."
    return pos == 0 and tok.startswith(" ") and prompt.startswith(tok[1:], 0)


def split_by_count(lp: PromptLogprobs, whole_tokens: int, context_tokens: int) -> int:
    """Index of the first continuation token from the servers' token counts (usage): the whole
    prompt has `whole_tokens`, the context alone `context_tokens` (both with any BOS); an echo
    that dropped BOS lists one token fewer than usage counts."""
    dropped = whole_tokens - len(lp.tokens)
    if dropped not in (0, 1):
        raise AlignmentError(f"echo lists {len(lp.tokens)} prompt tokens, usage says {whole_tokens}")
    first = context_tokens - dropped
    if not 0 <= first < len(lp.tokens):
        raise AlignmentError(f"context of {context_tokens} tokens leaves no continuation tokens")
    return first


def score(lp: PromptLogprobs, first: int) -> tuple[float, bool, int]:
    """(sum of the continuation's logprobs, whether each token was the top choice, tokens)."""
    span = range(first, len(lp.tokens))
    if not span:
        raise AlignmentError("the continuation has no tokens")
    total, greedy = 0.0, True
    for i in span:
        value = lp.logprobs[i]
        if value is None:
            raise AlignmentError("the first prompt token has no logprob: the continuation needs a "
                                 "context token before it")
        total += value
        top = lp.top[i] if i < len(lp.top) else None
        if top:
            greedy = greedy and value >= max(top.values()) - 1e-6
    return total, greedy, len(span)


def prompt_tokens_of(lp: PromptLogprobs, n_prompt: int) -> PromptLogprobs:
    """The entries of a token-id prompt of `n_prompt` tokens: generated ones (listed or not) cut;
    an echo one shorter dropped the leading BOS. (A server that both drops BOS from the echo and
    generates despite max_tokens 0 is not told apart from one that does neither.)"""
    return lp.head(n_prompt) if len(lp.tokens) >= n_prompt else lp
