"""Held-out comparison of a configuration against the baseline: paired, per item.

Both configurations answer the same held-out items, so each item gives a pair. For each metric:
the difference of the statistic (candidate - baseline), a percentile bootstrap confidence
interval over items (pairs resampled together), and a two-sided p-value: McNemar's exact test
for 0/1 scores, a paired permutation test (each pair's members swapped at random) otherwise.
With k candidates the level is Bonferroni-corrected (alpha / k), so "significant" means it.
"""

from __future__ import annotations

import math

import numpy as np

from harness.tune.objectives import METRICS

BOOTSTRAP = 4000
PERMUTATIONS = 4000


def _stat(metric: str):
    """The statistic of a metric over items: a mean, or (output_tok_s) the per-stream rate,
    output tokens over E2E time of the same requests."""
    if metric == "output_tok_s":
        return lambda tok, e2e: tok.sum() / max(e2e.sum() / 1000.0, 1e-12)
    return None


def _pairs(base: list[dict], cand: list[dict], metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    key = "score" if metric == "accuracy" else metric
    b = {i["doc_id"]: i for i in base}
    rows = []
    for c in cand:
        o = b.get(c["doc_id"])
        if o is None:
            continue
        if metric == "output_tok_s":
            vals = (o.get("output_tokens"), o.get("e2e_ms"), c.get("output_tokens"), c.get("e2e_ms"))
            if all(v is not None for v in vals):
                rows.append(vals)
        elif o.get(key) is not None and c.get(key) is not None:
            rows.append((o[key], c[key]))
    if not rows:
        return None
    arr = np.asarray(rows, dtype=float)
    return arr[:, : arr.shape[1] // 2], arr[:, arr.shape[1] // 2:]


def _value(x: np.ndarray, metric: str) -> float:
    if metric == "output_tok_s":
        return float(x[:, 0].sum() / max(x[:, 1].sum() / 1000.0, 1e-12))
    return float(x[:, 0].mean())


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes."""
    n01 = int(((a == 0) & (b == 1)).sum())
    n10 = int(((a == 1) & (b == 0)).sum())
    n = n01 + n10
    if n == 0:
        return 1.0
    k = min(n01, n10)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare_metric(base: list[dict], cand: list[dict], metric: str, alpha: float, seed: int = 0) -> dict | None:
    pairs = _pairs(base, cand, metric)
    if pairs is None:
        return None
    b, c = pairs
    n = len(b)
    rng = np.random.default_rng(seed)
    vb, vc = _value(b, metric), _value(c, metric)
    diff = vc - vb
    idx = rng.integers(0, n, size=(BOOTSTRAP, n))
    boots = np.array([_value(c[i], metric) - _value(b[i], metric) for i in idx])
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    binary = metric == "accuracy" and set(np.unique(np.concatenate([b[:, 0], c[:, 0]]))) <= {0.0, 1.0}
    if binary:
        p, test = mcnemar_exact(b[:, 0], c[:, 0]), "McNemar exact"
    else:
        swap = rng.random((PERMUTATIONS, n)) < 0.5
        count = 0
        for s in swap:
            pb = np.where(s[:, None], c, b)
            pc = np.where(s[:, None], b, c)
            if abs(_value(pc, metric) - _value(pb, metric)) >= abs(diff) - 1e-12:
                count += 1
        p, test = (count + 1) / (PERMUTATIONS + 1), "paired permutation"
    m = METRICS[metric]
    significant = p < alpha and not (lo <= 0 <= hi)
    better = None
    if significant:
        better = (diff > 0) == m.maximize
    return {"metric": metric, "n": n, "baseline": vb, "candidate": vc, "diff": diff,
            "ci": [float(lo), float(hi)], "level": 1 - alpha, "p": float(p), "test": test,
            "significant": bool(significant), "better": better}


def compare(base: list[dict], cand: list[dict], metrics: list[str], alpha: float, seed: int = 0) -> dict:
    out = {}
    for k, metric in enumerate(metrics):
        r = compare_metric(base, cand, metric, alpha, seed + k)
        if r is not None:
            out[metric] = r
    return out


def verdict(results: dict, objectives: list[str]) -> str:
    """One plain-language sentence about a candidate against the baseline."""
    better = [METRICS[m].label for m in objectives if m in results and results[m]["better"] is True]
    worse = [METRICS[m].label for m in objectives if m in results and results[m]["better"] is False]
    if not better and not worse:
        return "no significant difference from the baseline on the held-out split"
    if better and not worse:
        return f"significantly better than the baseline on {', '.join(better)}; no significant difference otherwise"
    if worse and not better:
        return f"significantly worse than the baseline on {', '.join(worse)}; no significant gain"
    return f"a trade-off: significantly better on {', '.join(better)}, significantly worse on {', '.join(worse)}"


def describe(r: dict) -> str:
    """'accuracy 0.250 vs 0.200: +0.050 (95% CI -0.030 to +0.130, McNemar exact p=0.29)'."""
    m = METRICS[r["metric"]]
    unit = f" {m.unit}" if m.unit else ""
    label = m.label + (" per stream" if r["metric"] == "output_tok_s" else "")
    f = (lambda v: f"{v:.3f}") if r["metric"] == "accuracy" else (lambda v: f"{v:.4g}")
    sign = lambda v: ("+" if v >= 0 else "") + f(v)  # noqa: E731
    level = round(r["level"] * 100, 1)
    return (f"{label} {f(r['candidate'])} vs {f(r['baseline'])}{unit}: {sign(r['diff'])}{unit} "
            f"({level:g}% CI {sign(r['ci'][0])} to {sign(r['ci'][1])}, {r['test']} p={r['p']:.3g})")
