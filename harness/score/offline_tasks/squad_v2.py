"""lm-eval's SQuAD2 task, reading its data where the task config says (hub or staged files) and
computing its metrics with the official SQuAD 2.0 evaluation script's logic (what the hub's
`squad_v2` metric wraps), ported here so no metric script is downloaded.

Scores are in percent as the official script gives them (exact, f1, HasAns_*, NoAns_*,
best_exact, best_f1). A prediction counts as "no answer" when lm-eval's no-answer probability
(exp of the loglikelihood of " unanswerable") is above 1.0, i.e. never: as the metric's default
threshold, the best_* numbers are where the threshold matters.
"""

from __future__ import annotations

import collections
import re
import string
from functools import partial

from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks.squadv2.task import SQuAD2

NO_ANSWER_THRESHOLD = 1.0  # the `squad_v2` metric's default
CONFIG_KEYS = ("task", "dataset_path", "dataset_name", "dataset_kwargs", "training_split", "validation_split")
METRICS = ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_exact", "best_f1")


class LocalSQuAD2(SQuAD2):
    def __init__(self, config=None):
        # SQuAD2 throws its config away (its hub path is a class attribute): keep where the data is
        config = dict(config or {})
        keep = {k: config[k] for k in CONFIG_KEYS if config.get(k) is not None}
        ConfigurableTask.__init__(self, config={"metadata": {"version": self.VERSION}, **keep})

    def has_training_docs(self):
        return bool(self.config.training_split) and self.config.training_split in self.dataset

    def aggregation(self):
        return {m: partial(_aggregate, m) for m in METRICS}


def _aggregate(key: str, items) -> float:
    predictions, references = zip(*items)
    return squad_v2_scores(predictions, references).get(key, 0)


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def compute_exact(gold: str, pred: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(pred))


def compute_f1(gold: str, pred: str) -> float:
    gold_toks = normalize_answer(gold).split() if gold else []
    pred_toks = normalize_answer(pred).split() if pred else []
    if not gold_toks or not pred_toks:  # no answer: 1 if both say none, else 0
        return float(gold_toks == pred_toks)
    same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def _best(preds: dict, scores: dict, na_probs: dict, has_ans: dict) -> float:
    """The best score over every no-answer threshold (the official find_best_thresh)."""
    cur = best = sum(1 for q in has_ans if not has_ans[q])
    for qid in sorted(na_probs, key=lambda q: na_probs[q]):
        if qid not in scores:
            continue
        cur += scores[qid] if has_ans[qid] else (-1 if preds[qid] else 0)
        best = max(best, cur)
    return 100.0 * best / len(scores)


def item_score(metric: str, pair) -> float | None:
    """One item's exact or f1 (percent, as the aggregate), from the [prediction, reference] pair
    lm-eval logs for it; None for the metrics that exist only over a set (best_*, HasAns_*...)."""
    if metric not in ("exact", "f1") or not (isinstance(pair, (list, tuple)) and len(pair) == 2):
        return None
    pred, ref = pair
    s = squad_v2_scores([pred], [ref])
    return s[metric]


def squad_v2_scores(predictions, references) -> dict[str, float]:
    """predictions: {id, prediction_text, no_answer_probability}; references: {id, answers}."""
    preds = {p["id"]: p["prediction_text"] for p in predictions}
    na_probs = {p["id"]: p["no_answer_probability"] for p in predictions}
    exact, f1, has_ans = {}, {}, {}
    for ref in references:
        qid = ref["id"]
        golds = [a for a in ref["answers"]["text"] if normalize_answer(a)] or [""]
        has_ans[qid] = golds != [""]
        exact[qid] = max(compute_exact(g, preds[qid]) for g in golds)
        f1[qid] = max(compute_f1(g, preds[qid]) for g in golds)

    def thresholded(scores):
        return {q: float(not has_ans[q]) if na_probs[q] > NO_ANSWER_THRESHOLD else s for q, s in scores.items()}

    exact_t, f1_t = thresholded(exact), thresholded(f1)
    out = {"exact": 100.0 * sum(exact_t.values()) / len(exact_t), "f1": 100.0 * sum(f1_t.values()) / len(f1_t)}
    for prefix, ids in (("HasAns", [q for q in has_ans if has_ans[q]]), ("NoAns", [q for q in has_ans if not has_ans[q]])):
        if ids:
            out[f"{prefix}_exact"] = 100.0 * sum(exact_t[q] for q in ids) / len(ids)
            out[f"{prefix}_f1"] = 100.0 * sum(f1_t[q] for q in ids) / len(ids)
    out["best_exact"] = _best(preds, exact, na_probs, has_ans)
    out["best_f1"] = _best(preds, f1, na_probs, has_ans)
    return out
