"""The paired accuracy test of a variant against the reference, over the same items.

Per-item scores come from a score cell's own samples/<task>.jsonl (lm-eval's per-item records);
an item is keyed by its leaf task and doc_id, so a group (mmlu: 57 subjects) pairs item by item
across all its leaves. The test itself is the tune job's held-out test (harness.tune.stats):
McNemar's exact test for 0/1 scores, a paired permutation test otherwise, with a paired
bootstrap CI of the difference.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from harness.tune.stats import compare_metric

# the metric a task is judged on, in this order of preference; else the task's first
PREFERRED = ("acc", "exact_match,strict-match", "exact_match", "mc2", "f1", "acc_norm")


def primary_metric(metrics: dict) -> str | None:
    usable = [m for m, v in metrics.items() if isinstance(v, dict) and _finite(v.get("value"))]
    return next((m for m in PREFERRED if m in usable), usable[0] if usable else None)


def leaves(summary: dict, task: str) -> list[str]:
    """The leaf tasks of a task or group of a score run's summary.json (mmlu: its 57 subjects)."""
    groups = summary.get("groups") or {}
    if task not in groups:
        return [task]
    return [leaf for child in groups[task].get("subtasks") or [] for leaf in leaves(summary, child)]


def item_scores(run_dir: Path, metric: str, tasks: list[str]) -> list[dict]:
    """[{'doc_id': 'mmlu_anatomy/3', 'score': 1.0}, ...] from the samples files of `tasks` (leaves)
    of a score run, the rows of the metric's filter ('exact_match,strict-match': strict-match)."""
    name, _, filt = metric.partition(",")
    filt = filt or "none"
    out = []
    for path in [Path(run_dir) / "samples" / f"{t}.jsonl" for t in tasks]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            row = json.loads(line)
            score = _item_value(row.get(name), name)
            if row.get("filter", "none") != filt or score is None:
                continue
            out.append({"doc_id": f"{path.stem}/{row['doc_id']}", "score": score})
    return out


def _item_value(value, metric: str) -> float | None:
    """A per-item number; SQuAD v2 logs each item's [prediction, reference] pair instead (its
    metrics are computed over the set): its exact / f1 are scored item by item as the official
    script scores them, so the paired test has items to pair."""
    if _finite(value):
        return float(value)
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, dict) for v in value) \
            and "prediction_text" in value[0]:
        from harness.score.offline_tasks.squad_v2 import item_score

        return item_score(metric, value)
    return None


def paired_test(reference: list[dict], variant: list[dict], alpha: float, seed: int = 0) -> dict | None:
    """Variant minus reference over the items both answered: diff, CI, p, significant, and
    better (True/False when significant, else None). None when no item is shared."""
    return compare_metric(reference, variant, "accuracy", alpha, seed)


def mean_ci(scores: list[float], z: float = 1.96) -> tuple[float, float, float] | None:
    """Mean and its normal-approximation 95% CI (the stderr lm-eval reports, times z)."""
    n = len(scores)
    if n == 0:
        return None
    m = sum(scores) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in scores) / (n - 1)) if n > 1 else 0.0
    half = z * sd / math.sqrt(n)
    return m, m - half, m + half


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
