"""report.md and plots of a tune run: views of summary.json, plan.json and the trial records.

Plots: the trials in the quality-speed plane with the Pareto front (pareto.png), each objective
against the trial number with the best so far (convergence.png), each objective against each
parameter (slices.png). Parameter importance is a rank correlation over the completed trials.
"""

from __future__ import annotations

import math

import numpy as np

from harness.results import RunFolder, atomic_write_text
from harness.tune import stats
from harness.tune.objectives import METRICS, Constraint, Objective, feasible


def _fmt(v, metric: str | None = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if metric == "accuracy":
        return f"{v:.3f}"
    if isinstance(v, int):
        return str(v)
    return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}"


def _ms(m: dict | None, metric: str) -> str:
    if not m or m.get("mean") is None:
        return "-"
    sem = f" ± {_fmt(m['sem'], metric)}" if m.get("sem") is not None else ""
    return _fmt(m["mean"], metric) + sem


def _params(p: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in p.items())


def write_report(run: RunFolder, plots: bool = True) -> str:
    s = run.read_json("summary.json")
    plan = run.read_json("plan.json") if run.file("plan.json").is_file() else {}
    cfg = run.read_json("config.json") if run.file("config.json").is_file() else {}
    objectives = [Objective(**o) for o in plan.get("objectives", [])]
    constraints = [Constraint(**c) for c in plan.get("constraints", [])]
    trials = s.get("trials") or []
    metrics = [o.metric for o in objectives] + [m for m in METRICS if m not in {o.metric for o in objectives}]
    out = [f"# tune: {s.get('engine')} / {s.get('model')} on {s.get('task')}", ""]
    out.append(f"status **{s.get('status')}**" + (f" ({s['reason']})" if s.get("reason") else "")
               + f", started {s.get('started')}, finished {s.get('finished', '-')}")
    if s.get("resumed"):
        out.append(f"; resumed {len(s['resumed'])} time(s)")
    out.append("")
    spec = cfg.get("tune", {})
    out += [
        f"- quality: `{s.get('metric')}` of lm-eval task `{s.get('task')}`, {s.get('dev_items')} dev items per "
        f"trial, {s.get('test_items')} held-out items (a seeded shuffle of the task's items, disjoint)",
        f"- objectives: {', '.join(s.get('objectives') or [])}"
        + (f"; constraints: {', '.join(s.get('constraints'))}" if s.get("constraints") else ""),
        f"- search: {s.get('strategy')} ({'Ax Sobol then Bayesian optimization' if s.get('strategy') == 'bayes' else 'Ax quasi-random search'}), "
        f"{s.get('budget')} trials budgeted (trial 0 is the baseline), seed {spec.get('seed')}",
        f"- speed: measured on the same streamed requests that are scored, {spec.get('concurrency')} in "
        "flight; latencies are means over requests (± standard error)",
        "",
    ]
    space = plan.get("space", {}).get("params", [])
    if space:
        out += ["## Search space", "", "| parameter | kind | range | baseline |", "|---|---|---|---|"]
        for p in space:
            rng = " \\| ".join(map(str, p["choices"])) if p["type"] == "choice" else f"{p['low']:g} to {p['high']:g}"
            out.append(f"| {p['name']} | {p['kind']}{' (engine restart)' if p['kind'] == 'engine' else ''} "
                       f"| {rng} | {p['baseline']} |")
        fixed = plan.get("space", {}).get("fixed") or {}
        if fixed:
            out += ["", f"Fixed in every trial: {_params(fixed)}."]
        out.append("")
    if s.get("notes"):
        out += ["## Read this first", ""] + [f"- {n}" for n in s["notes"]] + [""]
    if trials:
        out += ["## Trials", "", "| # | how | status | parameters | " + " | ".join(metrics) + " |",
                "|---|---|---|---|" + "---|" * len(metrics)]
        for t in trials:
            ms = t.get("metrics") or {}
            status = t["status"] + (f": {t['error'][:80]}" if t.get("error") else "")
            out.append(f"| {t['index']} | {t.get('generator', '-')} | {status} | {_params(t.get('params', {}))} | "
                       + " | ".join(_ms(ms.get(m), m) for m in metrics) + " |")
        out.append("")
    sel = s.get("selection") or {}
    if sel:
        out += ["## Best configurations (dev split)", ""]
        if sel.get("why"):
            out.append(f"None: {sel['why']}.")
        else:
            out.append(f"{sel['feasible']} of {sel['completed']} completed trials feasible; picked by "
                       f"{sel.get('method')}." + (f" Note: {sel['note']}." if sel.get("note") else ""))
            if sel.get("front"):
                out.append(f"Pareto front (trials): {', '.join(map(str, sel['front']))}.")
            out += ["", "| trial | parameters | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
            by = {t["index"]: t for t in trials}
            for i in [0] + list(sel.get("picks") or []):
                t = by.get(i)
                if t:
                    out.append(f"| {i}{' (baseline)' if i == 0 else ''} | {_params(t['params'])} | "
                               + " | ".join(_ms((t.get('metrics') or {}).get(m), m) for m in metrics) + " |")
        out.append("")
    imp = importance(trials, space, objectives)
    if imp:
        out += ["## Parameter importance", "",
                "Spearman rank correlation of each parameter with each objective over the completed "
                "trials (a Bayesian search samples where it expects gains, so read it as a hint).", "",
                "| parameter | " + " | ".join(o.metric for o in objectives) + " |", "|---|" + "---|" * len(objectives)]
        for name, row in imp.items():
            out.append(f"| {name} | " + " | ".join(_fmt(row.get(o.metric)) for o in objectives) + " |")
        out.append("")
    out += _holdout_section(s.get("holdout"))
    if plots and trials:
        made = write_plots(run, trials, space, objectives, constraints, sel)
        if made:
            out += ["## Plots", ""] + [f"![{m}](plots/{m})" for m in made] + [""]
    out.append("Per-trial records: trials/<i>/trial.json (items.jsonl: per item; requests.jsonl: every "
               "answer with its timing); Ax's state: ax_state.json.")
    text = "\n".join(out) + "\n"
    atomic_write_text(run.file("report.md"), text)
    return text


def _holdout_section(h: dict | None) -> list[str]:
    if not h:
        return []
    out = ["## Held-out comparison with the baseline", ""]
    if h.get("why"):
        return out + [f"Not run: {h['why']}.", ""]
    level = round(h.get("level", 0.95) * 100, 1)
    rounds = max([r.get("rounds", 1) for r in h.get("results", {}).values()] or [1])
    out.append(f"{h['items']} held-out items, never seen by the search. Paired per item; {level:g}% "
               "bootstrap confidence intervals (Bonferroni over the configurations compared); p-values "
               "from McNemar's exact test (accuracy) or a paired permutation test (speed). "
               + (f"The configurations answered the items in {rounds} interleaved rounds (alternating "
                  "order), so a drift of the machine's speed falls on all of them alike."
                  if rounds > 1 else "The configurations were measured one after another."))
    out.append("")
    names = ["accuracy", "tpot_ms", "ttft_ms", "e2e_ms", "output_tok_s"]
    out += ["| configuration | parameters | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for label, res in h.get("results", {}).items():
        ms = res.get("metrics") or {}
        cells = [_ms(ms.get(n), n) for n in names] if res.get("status") == "completed" else \
            [f"failed: {res.get('error', '')[:60]}"] + [""] * (len(names) - 1)
        out.append(f"| {label} | {_params(res.get('params', {}))} | " + " | ".join(cells) + " |")
    out.append("")
    for comp in h.get("comparisons", []):
        res = h["results"].get(comp["label"], {})
        out.append(f"**{comp['label']}** ({_params(res.get('params', {}))}): {comp['verdict']}.")
        out.append("")
        for r in (comp.get("metrics") or {}).values():
            mark = " **(significant)**" if r["significant"] else ""
            out.append(f"- {stats.describe(r)}{mark}")
        out.append("")
    return out


def importance(trials: list[dict], space: list[dict], objectives: list[Objective]) -> dict:
    done = [t for t in trials if t.get("status") == "completed"]
    if len(done) < 4:
        return {}
    out = {}
    for p in space:
        if p["type"] == "choice":
            continue
        x = np.array([float(t["params"][p["name"]]) for t in done])
        row = {}
        for o in objectives:
            y = np.array([t["metrics"][o.metric]["mean"] for t in done], dtype=float)
            row[o.metric] = _spearman(x, y)
        out[p["name"]] = row
    return out


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    def rank(a):
        order = a.argsort(kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a))
        for v in np.unique(a):  # ties share their mean rank
            r[a == v] = r[a == v].mean()
        return r

    rx, ry = rank(x), rank(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def clipped_err(means: list[float], sems: list[float], lo: float, hi: float) -> list[list[float]]:
    """Error bars of +-1 SEM cut at [lo, hi] (matplotlib's 2xN form): an accuracy of 0 +- 0.19
    is drawn from 0 to 0.19, not below 0."""
    return [[m - max(lo, m - s) for m, s in zip(means, sems)],
            [min(hi, m + s) - m for m, s in zip(means, sems)]]


def write_plots(run: RunFolder, trials, space, objectives, constraints, sel) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    done = [t for t in trials if t.get("status") == "completed"]
    if not done:
        return []
    out_dir = run.path / "plots"
    out_dir.mkdir(exist_ok=True)
    made = []
    mean = lambda t, m: (t["metrics"].get(m) or {}).get("mean")  # noqa: E731
    sem = lambda t, m: (t["metrics"].get(m) or {}).get("sem") or 0.0  # noqa: E731
    speed = next((o.metric for o in objectives if o.metric != "accuracy"), "tpot_ms")

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ok = [t for t in done if feasible({m: mean(t, m) for m in METRICS}, constraints)]
    bad = [t for t in done if t not in ok]
    for group, style, label in ((ok, dict(color="tab:blue"), "trial"),
                                (bad, dict(color="tab:gray", alpha=0.5), "infeasible")):
        if group:
            accs = [mean(t, "accuracy") for t in group]
            ax.errorbar([mean(t, speed) for t in group], accs, xerr=[sem(t, speed) for t in group],
                        yerr=clipped_err(accs, [sem(t, "accuracy") for t in group], 0.0, 1.0),
                        fmt="o", ms=5, capsize=2, label=label, **style)
    for t in done:
        ax.annotate(str(t["index"]), (mean(t, speed), mean(t, "accuracy")), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    front = [t for t in done if t["index"] in (sel.get("front") or [])]
    if front:
        front.sort(key=lambda t: mean(t, speed))
        ax.step([mean(t, speed) for t in front], [mean(t, "accuracy") for t in front], where="post",
                color="tab:red", label="Pareto front")
    base = next((t for t in done if t["index"] == 0), None)
    if base:
        ax.plot(mean(base, speed), mean(base, "accuracy"), marker="*", ms=14, color="tab:orange",
                ls="none", label="baseline")
    for c in constraints:
        if c.metric == speed:
            ax.axvline(c.bound, color="k", ls="--", lw=1, label=str(c))
        elif c.metric == "accuracy":
            ax.axhline(c.bound, color="k", ls="--", lw=1, label=str(c))
    ax.set_xlabel(f"{METRICS[speed].label} ({METRICS[speed].unit})")
    ax.set_ylabel("accuracy (dev)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "pareto.png", dpi=100)
    plt.close(fig)
    made.append("pareto.png")

    fig, axes = plt.subplots(1, len(objectives), figsize=(5 * len(objectives), 3.8), squeeze=False)
    for ax, o in zip(axes[0], objectives):
        xs = [t["index"] for t in done]
        ys = [mean(t, o.metric) for t in done]
        errs = [sem(t, o.metric) for t in done]
        ax.errorbar(xs, ys, yerr=clipped_err(ys, errs, 0.0, 1.0) if o.metric == "accuracy" else errs,
                    fmt="o", ms=4, capsize=2, label="trial")
        best, run_best = None, []
        for t in done:
            v = mean(t, o.metric)
            if feasible({m: mean(t, m) for m in METRICS}, constraints) and (best is None or o.better(v, best)):
                best = v
            run_best.append(best)
        ax.step(xs, [b if b is not None else np.nan for b in run_best], where="post", color="tab:red",
                label="best so far (feasible)")
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(o.metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "convergence.png", dpi=100)
    plt.close(fig)
    made.append("convergence.png")

    if space:
        fig, axes = plt.subplots(len(objectives), len(space), figsize=(3.6 * len(space), 3 * len(objectives)),
                                 squeeze=False)
        for r, o in enumerate(objectives):
            for c, p in enumerate(space):
                ax = axes[r][c]
                xs = [t["params"][p["name"]] for t in done]
                if p["type"] == "choice":
                    xs = [str(x) for x in xs]
                ax.scatter(xs, [mean(t, o.metric) for t in done], s=14)
                ax.set_xlabel(p["name"])
                ax.set_ylabel(o.metric)
                ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "slices.png", dpi=100)
        plt.close(fig)
        made.append("slices.png")
    return made
