"""Metrics, defined once (README "How it measures"): computed from per-request records, never from engine logs.

TTFT = first streamed token - send (the first chunk that carried a token, whatever its text);
ITL two ways, named so: `itl_ms` per chunk (gaps between arrivals of chunks that carried tokens,
what vLLM's client reports) and `itl_token_ms` per token (each gap split evenly over the tokens
its chunk carried: the same as `itl_ms` when every chunk carries one token); TPOT = (E2E - TTFT)
/ (output tokens - 1), output tokens from the server's usage; throughput over the sweep point's
wall time (first send to last end); goodput = requests/s that meet every stated SLO.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from harness.adapter import RequestRecord
from harness.config import SLO

PERCENTILES = (50, 90, 99)


def distribution(values_s: Iterable[float]) -> dict | None:
    """mean/std/min/max and percentiles, in milliseconds."""
    arr = np.asarray(list(values_s), dtype=float) * 1000.0
    if arr.size == 0:
        return None
    out = {
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "min": float(arr.min()),
        "max": float(arr.max()),
    }
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(arr, p))
    return out


def ttft(r: RequestRecord) -> float | None:
    return None if r.first_token is None else r.first_token - r.send


def e2e(r: RequestRecord) -> float | None:
    return None if r.end is None else r.end - r.send


def tpot(r: RequestRecord) -> float | None:
    if r.first_token is None or r.end is None or not r.output_tokens or r.output_tokens < 2:
        return None
    return (r.end - r.first_token) / (r.output_tokens - 1)


def itls(r: RequestRecord) -> list[float]:
    """Per chunk: the gaps between arrivals of chunks that carried tokens."""
    t = r.token_times
    return [b - a for a, b in zip(t, t[1:])]


def token_itls(r: RequestRecord) -> list[float]:
    """Per token: each chunk's gap split evenly over the tokens it carried (a chunk of n tokens
    gives n values of gap / n). The extra tokens of the first chunk have no gap of their own."""
    t, n = r.token_times, _chunk_tokens(r)
    out: list[float] = []
    for a, b, k in zip(t, t[1:], n[1:]):
        out += [(b - a) / k] * k
    return out


def schedule_lags(records: list[RequestRecord]) -> list[float]:
    """Open loop: each request's send minus its scheduled send (the client's own lateness)."""
    return [r.send - r.scheduled for r in records if r.scheduled is not None]


def send_gaps(records: list[RequestRecord]) -> list[float]:
    return [r.send_gap for r in records if r.send_gap is not None]


def meets_slo(r: RequestRecord, slo: SLO) -> bool:
    checks = ((slo.ttft_ms, ttft(r)), (slo.tpot_ms, tpot(r)), (slo.e2e_ms, e2e(r)))
    for limit, value in checks:
        if limit is None:
            continue
        if value is None or value * 1000.0 > limit:
            return False
    return True


def span(records: list[RequestRecord]) -> float:
    """Wall time of one session of a point: first send to last end."""
    ends = [r.end for r in records if r.end is not None]
    return max(ends) - min(r.send for r in records) if ends else 0.0


def summarize(records: list[RequestRecord], slo: SLO | None = None, duration_s: float | None = None) -> dict:
    """Summary of one sweep point. `duration_s`: its wall time when it ran in several sessions (a
    point a killed run had started, finished by `bench --resume`): the sum of the sessions' spans,
    not first send to last end, which would count the time nothing ran."""
    ok = [r for r in records if r.ok]
    errors = [r for r in records if not r.ok]
    out: dict = {"requests": len(records), "completed": len(ok), "failed": len(errors)}
    if errors:
        out["first_error"] = errors[0].error
    if not ok:
        return out
    duration = max(span(records) if duration_s is None else duration_s, 1e-9)
    out_tokens = sum(r.output_tokens or 0 for r in ok)
    in_tokens = sum(r.prompt_tokens or 0 for r in ok)
    short = [r for r in ok if r.expected_output_tokens and r.output_tokens != r.expected_output_tokens]
    out.update(
        duration_s=duration,
        prompt_tokens=in_tokens,
        output_tokens=out_tokens,
        request_throughput=len(ok) / duration,
        output_throughput=out_tokens / duration,
        total_token_throughput=(in_tokens + out_tokens) / duration,
        ttft_ms=distribution(v for r in ok if (v := ttft(r)) is not None),
        tpot_ms=distribution(v for r in ok if (v := tpot(r)) is not None),
        itl_ms=distribution(g for r in ok for g in itls(r)),
        itl_token_ms=distribution(g for r in ok for g in token_itls(r)),
        tokens_per_chunk=_tokens_per_chunk(ok),
        e2e_ms=distribution(v for r in ok if (v := e2e(r)) is not None),
        output_len_mismatch=len(short),
    )
    if gaps := send_gaps(records):
        # closed loop: a stream's finished request (its last read) to its next send, the client's
        # own idle time between requests, which lowers the load it offers
        out["send_gap_ms"] = distribution(gaps)
    if lags := schedule_lags(records):
        # open loop: a late send lowers the offered load and hides client queueing from latency
        out["schedule_lag_ms"] = distribution(lags)
    if any(r.turn is not None for r in records):
        out["turns"] = per_turn(records)
    if slo is not None and any(v is not None for v in slo.model_dump().values()):
        good = sum(1 for r in ok if meets_slo(r, slo))
        out["goodput"] = good / duration
        out["slo_attainment"] = good / len(records)
    return out


def per_turn(records: list[RequestRecord]) -> list[dict]:
    """Multi-turn: TTFT and prompt length by turn (1-based). The prompt grows with the history,
    so TTFT by turn shows what the engine's prefix cache saves of it."""
    out = []
    for t in sorted({r.turn for r in records if r.turn is not None}):
        of = [r for r in records if r.turn == t]
        ok = [r for r in of if r.ok]
        prompts = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
        out.append({"turn": t + 1, "requests": len(of), "completed": len(ok),
                    "prompt_tokens_mean": sum(prompts) / len(prompts) if prompts else None,
                    "ttft_ms": distribution(v for r in ok if (v := ttft(r)) is not None)})
    return out


def _tokens_per_chunk(ok: list[RequestRecord]) -> dict:
    """Mean tokens per chunk and where the counts came from (see RequestRecord.tokens_from)."""
    chunks = sum(len(r.token_times) for r in ok)
    tokens = sum(sum(_chunk_tokens(r)) for r in ok)
    return {"mean": tokens / chunks if chunks else None,
            "counted_from": sorted({r.tokens_from for r in ok if r.tokens_from})}


def _chunk_tokens(r: RequestRecord) -> list[int]:
    return r.chunk_tokens or [1] * len(r.token_times)  # records from before tokens were counted
