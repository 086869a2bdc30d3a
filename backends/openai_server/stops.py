"""Stop strings: where one ends the text, and how much text to hold back while streaming
(the end of the text that could still be the beginning of one), so none ever leaks out."""

from __future__ import annotations


def find_stop(text: str, stops: list[str], start: int = 0) -> tuple[int, str] | None:
    """(index, stop) of the earliest stop string found in text[start:], or None."""
    hits = [(i, s) for s in stops if s and (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could still be the start of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
