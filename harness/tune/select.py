"""After the search: which configurations go to the held-out split, and how they fare there.

Selection uses the dev split only. One objective: Ax's best (its model's prediction, which
discounts lucky noise), then the next best observed means. Several: the observed Pareto front of
the feasible trials, spread along the first objective. The baseline is never a pick: it is scored
on the held-out split anyway, and every pick is compared with it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from harness.results import atomic_write_json, read_json
from harness.tune import stats
from harness.tune.objectives import Constraint, Objective, feasible, pareto_front

HOLDOUT_ROUNDS = 4  # at least
HOLDOUT_ROUNDS_MAX = 16  # each round is one lm-eval pass per configuration (seconds of set-up)


def holdout_rounds(n_items: int, concurrency: int, same_engine: bool) -> int:
    """How many interleaved rounds the held-out phase takes: the more, the finer the alternation
    and the less a passing load spike favours one configuration (the paired tests assume items
    independent). As many as keep 2 x `concurrency` items per round (so the engine still sees its
    load), at least HOLDOUT_ROUNDS, at most HOLDOUT_ROUNDS_MAX; 1 when the configurations differ in
    an engine option (each round would restart the engine)."""
    if not same_engine or n_items <= 1:
        return 1
    return min(n_items, max(HOLDOUT_ROUNDS, min(HOLDOUT_ROUNDS_MAX, n_items // (2 * max(1, concurrency)))))


def _means(rec: dict) -> dict:
    return {k: v.get("mean") for k, v in (rec.get("metrics") or {}).items()}


def select(records: list[dict], objectives: list[Objective], constraints: list[Constraint], study,
           k: int) -> dict:
    done = [r for r in records if r.get("status") == "completed"]
    ok = [r for r in done if feasible(_means(r), constraints)]
    out: dict = {"completed": len(done), "feasible": len(ok), "picks": [], "front": []}
    if not ok:
        out["why"] = ("no trial met the constraints on the dev split" if constraints and done
                      else "no trial completed")
        return out
    first = objectives[0]
    ranked = sorted(ok, key=lambda r: _means(r)[first.metric], reverse=first.maximize)
    if len(objectives) == 1:
        best = study.best() if study is not None else None
        ids = [r["index"] for r in ranked]
        if best in ids:
            ids.remove(best)
            ids.insert(0, best)
            out["ax_best"] = best
        out["best"] = ids[0]
        picks = [i for i in ids if i != 0][:k]
        out["method"] = ("Ax's best by model prediction, then the best observed means" if "ax_best" in out
                         else "the best observed means")
    else:
        def front_of(recs):
            f = pareto_front([(r["index"], _means(r)) for r in recs], objectives)
            return sorted(f, key=lambda i: _means(_rec(ok, i))[first.metric], reverse=first.maximize)

        out["front"] = front_of(ok)
        # where the baseline dominates some tuned points, the best tuned ones are the front of
        # the tuned trials alone: those are what a held-out check can tell from the baseline
        picks = _spread(front_of([r for r in ok if r["index"] != 0]), k)
        out["method"] = ("points of the observed Pareto front of the feasible tuned trials, spread "
                         f"along {first.metric}")
    if 0 in ([out.get("best")] if len(objectives) == 1 else out["front"]):
        out["note"] = "the baseline itself is among the best on the dev split"
    out["picks"] = picks
    return out


def _rec(records: list[dict], index: int) -> dict:
    return next(r for r in records if r["index"] == index)


def _spread(ids: list[int], k: int) -> list[int]:
    if len(ids) <= k:
        return list(ids)
    if k == 1:
        return [ids[0]]
    step = (len(ids) - 1) / (k - 1)
    return list(dict.fromkeys(ids[round(j * step)] for j in range(k)))


def holdout(selection: dict, store, root: Path, items: list[int], evaluate, space, objectives: list[Objective],
            constraints: list[Constraint], alpha: float, seed: int, echo, *, concurrency: int) -> dict:
    """Score the baseline and every pick on the held-out items (each once: a resumed run keeps
    what was done), and compare each pick with the baseline."""
    from harness.tune.loop import TrialFailed

    picks = selection.get("picks") or []
    if not picks:
        return {"items": len(items), "why": selection.get("why") or "no configuration other than the "
                "baseline to compare", "results": {}, "comparisons": []}
    base_params = store.read(0)["params"]
    runs = [("baseline", 0, base_params)] + [(f"trial-{i}", i, store.read(i)["params"]) for i in picks]
    results: dict[str, dict] = {}
    for label, _, _ in runs:
        path = Path(root) / "holdout" / label / "result.json"
        if path.is_file():
            results[label] = read_json(path)
    # Interleave: every configuration answers the items in rounds, in alternating order, so a
    # drift of the machine's speed (other load, heat) falls on all of them alike rather than on
    # whichever ran last. Not when they differ in an engine option (each round would restart).
    same_engine = len({json.dumps(space.split(p)[1], sort_keys=True) for _, _, p in runs}) == 1
    rounds = holdout_rounds(len(items), concurrency, same_engine)
    ends = [len(items) * (r + 1) // rounds for r in range(rounds)]
    started = {label: time.perf_counter() for label, _, _ in runs}
    for r, end in enumerate(ends):
        for label, index, params in (runs if r % 2 == 0 else runs[::-1]):
            if label in results:
                continue
            if r == 0:
                echo(f"held-out: {label} on {len(items)} items" + (f", in {rounds} interleaved rounds"
                                                                   if rounds > 1 else ""))
            folder = Path(root) / "holdout" / label
            try:
                m = evaluate(folder, params, items[:end])  # earlier rounds come from the cache
            except TrialFailed as e:
                results[label] = {"label": label, "trial": index, "params": params, "status": "failed",
                                  "error": str(e)}
                folder.mkdir(parents=True, exist_ok=True)
                atomic_write_json(folder / "result.json", results[label])
                continue
            if end == len(items):
                results[label] = {"label": label, "trial": index, "params": params, "status": "completed",
                                  "metrics": m.metrics, "rounds": rounds,
                                  "elapsed_s": round(time.perf_counter() - started[label], 3)}
                atomic_write_json(folder / "result.json", results[label])
    metrics = list(dict.fromkeys(["accuracy", *[o.metric for o in objectives], *[c.metric for c in constraints],
                                  "tpot_ms", "ttft_ms", "e2e_ms", "output_tok_s"]))  # fmt: skip
    level_alpha = alpha / len(picks)  # Bonferroni over the picks
    comparisons = []
    base = results["baseline"]
    base_items = _items(Path(root) / "holdout" / "baseline") if base["status"] == "completed" else None
    for label, index, _ in runs[1:]:
        r = results[label]
        if base_items is None or r["status"] != "completed":
            comparisons.append({"label": label, "trial": index, "verdict": "not compared: a held-out "
                                "measurement failed"})
            continue
        c = stats.compare(base_items, _items(Path(root) / "holdout" / label), metrics, level_alpha, seed)
        comparisons.append({"label": label, "trial": index, "metrics": c,
                            "verdict": stats.verdict(c, [o.metric for o in objectives])})
    return {"items": len(items), "alpha": alpha, "level": 1 - level_alpha, "results": results,
            "comparisons": comparisons}


def _items(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines() if line.strip()]
