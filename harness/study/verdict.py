"""The study's numbers and its verdict, computed from the cells' own run folders only (their
summary.json and samples), so anyone can recompute them: `verdict(study_dir)`.

Per variant: speed at each load point (bench), memory (GPU peak above idle where NVML sampled
it, else the engine's own weight + KV-cache bytes), weight size, J/token, accuracy per task with
a 95% CI and the paired test against the reference (score), perplexity, greedy agreement and KL
(agree), the tune's status. Then the answer: the fastest variant whose accuracy is not
significantly worse than the reference on any task, and the Pareto set (accuracy, tok/s, memory).
"""

from __future__ import annotations

import math
from pathlib import Path

from harness.errors import HyperbenchError
from harness.results import read_json
from harness.study.cells import Cell, load_plan
from harness.study.paired import item_scores, leaves, mean_ci, paired_test, primary_metric


def _summary(cell: Cell, study_dir: Path) -> dict | None:
    try:
        s = read_json(cell.folder(study_dir) / "summary.json")
    except HyperbenchError:  # never started, or killed before its first write
        return None
    return s if s.get("status") == "complete" else None


def cell_status(cell: Cell, study_dir: Path) -> tuple[str, str | None]:
    """(status, reason) of a cell, read from its own folder: skipped, missing, or the job's status."""
    if cell.status == "skipped":
        return "skipped", cell.reason
    try:
        s = read_json(cell.folder(study_dir) / "summary.json")
    except HyperbenchError:
        # a job refused its input before making its run folder: its one-line error is in the log
        error = _log_error(study_dir / "logs" / f"{cell.name}.log")
        return ("failed", error) if error else ("missing", None)
    reason = s.get("reason")
    return str(s.get("status", "?")), str(reason).splitlines()[0][:300] if reason else None


def _log_error(log: Path) -> str | None:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    errors = [ln.removeprefix("error: ") for ln in lines if ln.startswith("error: ")]
    return errors[-1][:300] if errors else None


def _bench(s: dict) -> dict:
    from harness.compare.report import load_of
    from harness.bench.report import point_label
    from harness.roofline import point_roofline

    info = s.get("engine_info") or {}
    weights = info.get("weight_bytes")
    speed, gpu_peaks, joules = {}, [], {}
    for p in sorted((p for p in s.get("points") or [] if p.get("completed")), key=lambda p: load_of(p) or ("", 0)):
        label = point_label(p)
        speed[label] = {"output_tok_s": p.get("output_throughput"),
                        **{f"{k}_p50_ms": (p.get(f"{k}_ms") or {}).get("p50") for k in ("ttft", "tpot", "e2e")}}
        if spec := p.get("speculative"):  # the bench's own speculation-off run gives the speedup
            speed[label].update(acceptance_rate=spec.get("acceptance_rate"),
                                spec_speedup=(spec.get("speedup") or {}).get("output_throughput"))
        gpus = (p.get("gpu") or {}).get("gpus") or []
        peaks = [g.get("peak_above_baseline_bytes") for g in gpus]
        if peaks and all(x is not None for x in peaks):
            gpu_peaks.append(sum(peaks))
        roof = point_roofline(p, weights) or {}
        if roof.get("joules_per_output_token") is not None:
            joules[label] = roof["joules_per_output_token"]
    if gpu_peaks:
        memory, source = max(gpu_peaks), "GPU peak above idle (NVML)"
    elif weights is not None:
        memory, source = weights + (info.get("kv_cache_bytes") or 0), "engine: weights + KV cache"
    else:
        memory, source = None, None
    return {"speed": speed, "memory_bytes": memory, "memory_source": source, "size_bytes": weights,
            "joules_per_token": joules}


def _accuracy(s: dict, folder: Path, task: str) -> dict | None:
    entry = (s.get("groups") or {}).get(task) or (s.get("tasks") or {}).get(task)
    if not entry:
        return None
    metric = primary_metric(entry.get("metrics") or {})
    if metric is None:
        return None
    items = item_scores(folder, metric, leaves(s, task))
    ci = mean_ci([i["score"] for i in items])
    return {"metric": metric, "value": entry["metrics"][metric]["value"], "n": len(items),
            "ci": [ci[1], ci[2]] if ci else None, "items": items}


def verdict(study_dir: Path) -> dict:
    study_dir = Path(study_dir)
    cfg = read_json(study_dir / "config.json")
    cells = load_plan(study_dir)
    ref = cfg["reference"]
    alpha = cfg["study"]["alpha"]
    tasks = list(cfg["study"]["tasks"])
    variants: dict[str, dict] = {}
    for cell in cells:
        v = variants.setdefault(cell.variant, {"variant": cell.variant, "cells": {}, "accuracy": {}})
        status, reason = cell_status(cell, study_dir)
        v["cells"][cell.name] = {"job": cell.job, "tasks": cell.tasks, "status": status, "reason": reason}
        s = _summary(cell, study_dir)
        if s is None:
            continue
        if cell.job == "bench":
            v.update(_bench(s))
        elif cell.job == "score":
            m = ((s.get("tasks") or {}).get("perplexity") or {}).get("metrics") or {}
            if m:
                v["perplexity"] = (m.get("token_perplexity") or m.get("word_perplexity") or {}).get("value")
            for task in cell.tasks:
                if task != "perplexity" and (acc := _accuracy(s, cell.folder(study_dir), task)) is not None:
                    v["accuracy"][task] = acc
        elif cell.job == "agree":
            a = (s.get("agreement") or {}).get(cell.variant) or {}
            g = a.get("greedy") or {}
            v["agree"] = {"identical_prompts": g.get("identical"), "prompts": g.get("prompts"),
                          "mean_matched_tokens": g.get("mean_matched_tokens"),
                          "kl_mean": (a.get("next_token") or {}).get("kl_mean"),
                          "top1_agreement": (a.get("next_token") or {}).get("top1_agreement")}
        elif cell.job == "tune":
            held = s.get("holdout") or {}
            v["tune"] = {"status": s.get("status"), "trials": len(s.get("trials") or []),
                         "picks": [{"label": c["label"], "verdict": c.get("verdict"),
                                    "params": ((held.get("results") or {}).get(c["label"]) or {}).get("params")}
                                   for c in held.get("comparisons") or []]}
    base = variants.get(ref, {}).get("accuracy", {})
    for k, (spec, v) in enumerate(variants.items()):
        for task, acc in v["accuracy"].items():
            if spec != ref and task in base:
                acc["vs_reference"] = paired_test(base[task]["items"], acc["items"], alpha, seed=k)
    for v in variants.values():  # the items were for the test: the cells keep them
        for acc in v["accuracy"].values():
            acc.pop("items", None)
    out = {"reference": ref, "tasks": tasks, "alpha": alpha, "variants": list(variants.values())}
    out.update(answer(out))
    return out


def _top_load(variants: list[dict]) -> str | None:
    """The highest load point every benched variant reached (the answer's speed is read there)."""
    from harness.compare.report import load_of

    sets = [set(v["speed"]) for v in variants if v.get("speed")]
    common = set.intersection(*sets) if sets else set()
    if not common:
        return None

    def key(label):
        k, _, x = label.partition("=")
        return load_of({k: x if x == "inf" else float(x)})
    return max(common, key=key)


def eligible(v: dict, ref: str, tasks: list[str]) -> tuple[bool, str | None]:
    """Not significantly worse than the reference on any task (the reference itself is)."""
    for t in tasks:
        acc = v["accuracy"].get(t)
        if acc is None:
            return False, f"no accuracy on {t}"
        if v["variant"] != ref:
            test = acc.get("vs_reference")
            if test is None:
                return False, f"no paired test on {t} (the reference has no score)"
            if test["better"] is False:
                return False, f"significantly worse on {t} ({test['diff']:+.3f}, p={test['p']:.3g})"
    return True, None


def _mean_accuracy(v: dict, tasks: list[str]) -> float | None:
    vals = [v["accuracy"][t]["value"] for t in tasks if t in v["accuracy"]]
    return sum(vals) / len(vals) if tasks and len(vals) == len(tasks) else None


def pareto(variants: list[dict], load: str, tasks: list[str]) -> list[str]:
    """Variants no other beats on accuracy (mean over tasks), tok/s at `load` and memory at once."""
    pts = []
    for v in variants:
        tok = (v.get("speed", {}).get(load) or {}).get("output_tok_s")
        acc = _mean_accuracy(v, tasks) if tasks else 0.0
        mem = v.get("memory_bytes")
        if tok is not None and acc is not None and mem is not None:
            pts.append((v["variant"], acc, tok, -mem))
    front = []
    for name, *x in pts:
        dominated = any(all(o >= s for o, s in zip(y, x)) and any(o > s for o, s in zip(y, x))
                        for other, *y in pts if other != name)
        if not dominated:
            front.append(name)
    return front


def answer(data: dict) -> dict:
    ref, tasks, variants = data["reference"], data["tasks"], data["variants"]
    load = _top_load(variants)
    by = {v["variant"]: v for v in variants}
    for v in variants:
        ok, why = eligible(v, ref, tasks)
        v["eligible"], v["not_eligible_because"] = ok, why
    if load is None or ref not in by or not by[ref].get("speed"):
        return {"load": load, "winner": None, "pareto": [],
                "answer": "no verdict: the reference has no finished bench cell"}
    tok = lambda v: (v.get("speed", {}).get(load) or {}).get("output_tok_s") or 0.0  # noqa: E731
    candidates = [v for v in variants if v["eligible"] and v.get("speed", {}).get(load)]
    front = pareto(variants, load, tasks)
    if not candidates:
        return {"load": load, "winner": None, "pareto": front,
                "answer": "no variant has both a finished bench and accuracy not significantly worse "
                          "than the reference on every task"}
    best = max(candidates, key=tok)
    r = by[ref]
    ratio = tok(best) / tok(r) if tok(r) else math.nan
    quality = ("whose accuracy is not significantly worse than the reference on every task "
               f"({', '.join(tasks)})" if tasks else "(no tasks scored: speed only)")
    words = f"the fastest variant {quality} is {best['variant']}"
    if best["variant"] == ref:
        words += f" (the reference itself): {tok(r):.4g} tok/s at {load}"
    else:
        words += f": {ratio:.2f}x the reference's tok/s at {load} ({tok(best):.4g} vs {tok(r):.4g})"
        if best.get("memory_bytes") is not None and r.get("memory_bytes") is not None:
            from harness.study.report import size_text

            saved = r["memory_bytes"] - best["memory_bytes"]
            words += f", {size_text(abs(saved))} {'less' if saved >= 0 else 'more'} memory"
    if len(front) > 1:
        words += f"; Pareto set (accuracy, tok/s, memory): {', '.join(front)}"
    return {"load": load, "winner": best["variant"], "speedup": ratio, "pareto": front, "answer": words}
