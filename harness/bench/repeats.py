"""`bench --repeats N`: the sweep run N times; each point's metrics as mean and 95% confidence
interval over the repeats (Student's t, since N is small: 3 repeats give a t of 4.30, not 1.96)."""

from __future__ import annotations

import math

# two-sided 95% quantiles of Student's t by degrees of freedom (scipy is not a dependency)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)

# (name in repeat_stats, how to read it from a point)
METRICS = (
    ("request_throughput", lambda p: p.get("request_throughput")),
    ("output_throughput", lambda p: p.get("output_throughput")),
    ("goodput", lambda p: p.get("goodput")),
    *((f"{key}.{stat}", lambda p, k=key, s=stat: (p.get(k) or {}).get(s))
      for key in ("ttft_ms", "tpot_ms", "itl_ms", "itl_token_ms", "e2e_ms", "schedule_lag_ms")
      for stat in ("p50", "p99")),
)


def t975(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_ci(values: list[float]) -> dict:
    """mean and the half-width of its 95% CI (None from a single value: no spread to go on)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "ci95": None, "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return {"mean": mean, "ci95": t975(n - 1) * sd / math.sqrt(n), "n": n}


def repeat_stats(points: list[dict], load_kinds=("concurrency", "rate", "trace")) -> list[dict]:
    """One entry per load of the sweep, in sweep order: every metric over that load's finished
    repeats (a partial point is left out: its numbers are over fewer requests)."""
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        if p.get("partial") or not p.get("completed"):
            continue
        kind = next((k for k in load_kinds if k in p), None)
        if kind is not None:
            groups.setdefault((kind, str(p[kind])), []).append(p)
    out = []
    for (kind, _), ps in groups.items():
        entry: dict = {kind: ps[0][kind], "repeats": len(ps)}
        for name, read in METRICS:
            values = [v for p in ps if isinstance(v := read(p), (int, float))]
            if values:
                entry[name] = mean_ci(values)
        out.append(entry)
    return out
