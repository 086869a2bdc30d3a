"""`compare --engines A,B --repeats N`: the engines interleaved (A rep 1, B rep 1, A rep 2, ...),
so a drift of the machine (another job, thermal state, a cache warming) lands on every engine
alike instead of on whichever ran last; each engine's repeats merged into one bench run folder
(its points tagged `repeat`, its `repeat_stats` the mean and 95% CI of each metric); and a
difference between two engines called only when it is significant.

The test: Welch's t on the per-repeat values of a metric (each repeat's p50, throughput, ...),
two-sided at 5%, with the Welch-Satterthwaite degrees of freedom rounded down (conservative);
it does not assume the engines' variances are equal. Repeats are the unit, not requests: the
requests of one repeat share its engine start, warm-up and machine state, so they are not
independent samples of the engine.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from harness.errors import HyperbenchError
from harness.bench.repeats import METRICS, mean_ci, repeat_stats, t975
from harness.results import SCHEMA_VERSION, RunFolder

# the metrics tested between engines, and whether higher is better
TESTED = {"request_throughput": True, "output_throughput": True, "goodput": True, "ttft_ms.p50": False,
          "ttft_ms.p99": False, "tpot_ms.p50": False, "e2e_ms.p50": False}
READ = dict(METRICS)


def run_interleaved(cells: list, repeats: int, bench_run, progress=None) -> None:
    """cells: (name, label, BenchConfig) of each engine, its output under <runs>/<name>. Runs
    repeat r of every engine before repeat r + 1 of any, each a bench run of its own
    (<runs>/<name>/rep<r>), then merges each engine's repeats (merge_repeats)."""
    for r in range(1, repeats + 1):
        for name, label, bench_cfg in cells:
            sub = bench_cfg.model_copy(update={
                "load": bench_cfg.load.model_copy(update={"repeats": 1}),
                "output": bench_cfg.output.model_copy(update={
                    "results_dir": Path(bench_cfg.output.results_dir) / bench_cfg.output.run_name,
                    "run_name": f"rep{r}"}),
            })  # fmt: skip
            try:
                bench_run(sub, progress)
            except HyperbenchError as e:  # as compare does: the others go on, the report says
                print(f"compare: {label} repeat {r} failed: {str(e).splitlines()[0]}", file=sys.stderr)
    for name, label, bench_cfg in cells:
        folder = Path(bench_cfg.output.results_dir) / bench_cfg.output.run_name
        if folder.is_dir():
            merge_repeats(RunFolder(folder), repeats, bench_cfg)


def merge_repeats(folder: RunFolder, repeats: int, bench_cfg) -> dict:
    """One bench run folder of an engine's repeats (rep1..repN inside it): its config (repeats N),
    every repeat's points tagged `repeat`, and repeat_stats over them, as `bench --repeats` writes."""
    points, reps, first = [], [], None
    for r in range(1, repeats + 1):
        path = folder.path / f"rep{r}" / "summary.json"
        if not path.is_file():
            reps.append({"repeat": r, "status": "missing"})
            continue
        s = RunFolder(path.parent).summary()
        first = first or s
        reps.append({"repeat": r, "run_folder": f"rep{r}", "status": s.get("status"),
                     **({"reason": s["reason"]} if s.get("reason") else {})})
        points += [{**p, "repeat": r} for p in s.get("points") or []]
    done = all(x["status"] == "complete" for x in reps)
    summary = {
        "schema_version": SCHEMA_VERSION, "kind": "bench", "status": "complete" if done else "incomplete",
        **({} if done else {"reason": "a repeat did not complete: " + ", ".join(
            f"rep{x['repeat']} {x['status']}" for x in reps if x["status"] != "complete")}),
        "engine": (first or {}).get("engine"), "model": (first or {}).get("model"),
        "engine_info": (first or {}).get("engine_info"), "interleaved_repeats": reps,
        "points": points, "repeat_stats": repeat_stats(points), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }  # fmt: skip
    config = bench_cfg.model_dump(mode="json")
    config["load"]["repeats"] = repeats
    folder.write_json("config.json", config)
    folder.write_json("summary.json", summary)
    return summary


def welch(a: list[float], b: list[float]) -> dict | None:
    """Welch's t of mean(a) - mean(b): t, df, and whether |t| passes the two-sided 5% critical
    value; None with fewer than 2 values a side."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return None
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1) / na
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1) / nb
    se2 = va + vb
    if se2 == 0:  # no spread at all: any difference of the means is real
        return {"t": math.inf if ma != mb else 0.0, "df": na + nb - 2, "significant": ma != mb}
    t = (ma - mb) / math.sqrt(se2)
    df = se2 ** 2 / ((va ** 2 / (na - 1) if va else 0) + (vb ** 2 / (nb - 1) if vb else 0))
    crit = t975(max(1, math.floor(df)))
    return {"t": t, "df": df, "critical_t": crit, "significant": abs(t) > crit}


def _per_repeat(entry, load) -> dict[str, list[float]]:
    from harness.compare.report import load_of

    ps = [p for p in entry.points if load_of(p) == load and p.get("completed") and not p.get("partial")]
    out = {}
    for name in TESTED:
        vals = [v for p in ps if isinstance(v := READ[name](p), (int, float))]
        if vals:
            out[name] = vals
    return out


def significance(entries: list) -> list[dict]:
    """Every pair of bench runs with repeats, at every load both have, every tested metric: the
    two means with their 95% CIs, the relative difference, Welch's test, and the verdict."""
    from harness.compare.report import load_of, union_points

    runs = [e for e in entries if e.kind == "bench" and len({p.get("repeat") for p in e.points}) > 1]
    out = []
    for point in union_points(runs):
        load = load_of(point)
        vals = {e.label: _per_repeat(e, load) for e in runs}
        for i, a in enumerate(runs):
            for b in runs[i + 1:]:
                for name, higher_better in TESTED.items():
                    va, vb = vals[a.label].get(name), vals[b.label].get(name)
                    if not va or not vb or (test := welch(va, vb)) is None:
                        continue
                    ma, mb = mean_ci(va), mean_ci(vb)
                    diff = (ma["mean"] - mb["mean"]) / mb["mean"] if mb["mean"] else None
                    better = None
                    if test["significant"]:
                        better = a.label if (ma["mean"] > mb["mean"]) == higher_better else b.label
                    out.append({"load": {load[0]: point[load[0]]}, "metric": name, "a": a.label, "b": b.label,
                                "a_mean": ma, "b_mean": mb, "relative_difference": diff, "welch": test,
                                "better": better})
    return out


def significance_section(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    from harness.bench.report import fmt

    def m(x):
        return fmt(x["mean"]) + (f" ± {fmt(x['ci95'])}" if x.get("ci95") is not None else "")

    out = ["", "## Repeats: is the difference real?", "",
           "Mean ± 95% CI over the repeats (engines interleaved); a difference is called only where "
           "Welch's t on the per-repeat values passes the two-sided 5% level (df rounded down).", "",
           "| load | metric | A | B | A mean ± CI | B mean ± CI | A vs B | Welch t (df) | verdict |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        (kind, value), = r["load"].items()
        w = r["welch"]
        diff = r["relative_difference"]
        verdict = f"**{r['better']} better**" if r["better"] else "no significant difference"
        out.append(f"| {kind}={value} | {r['metric']} | {r['a']} | {r['b']} | {m(r['a_mean'])} | {m(r['b_mean'])} | "
                   f"{f'{diff * 100:+.1f} %' if diff is not None else '-'} | {w['t']:.2f} ({w['df']:.1f}) | {verdict} |")
    return out
