"""The study's report: summary.json (canonical: cells and verdict), report.md, and plots: accuracy
against output tok/s (marker size = memory, 95% CI bars, the Pareto front), the four-panel
compression chart (size, tok/s, perplexity, accuracy per variant), and the latency curves of all
variants (compare's plots of the bench cells)."""

from __future__ import annotations

from pathlib import Path

from harness.results import RunFolder, atomic_write_text


def write_report(folder: RunFolder, summary: dict, plots: bool | None = None) -> None:
    from harness.study.verdict import verdict

    data = verdict(folder.path)
    summary["verdict"] = data
    folder.write_json("summary.json", summary)
    if plots is None:
        plots = folder.read_json("config.json")["output"]["plots"]
    made: list[str] = []
    if plots:
        try:
            made = write_plots(folder, data)
        except Exception as e:  # a plot problem must never lose the study's numbers
            made = []
            summary.setdefault("notes", []).append(f"plots failed: {type(e).__name__}: {e}")
    atomic_write_text(folder.file("report.md"), render(summary, data, made))


def size_text(b) -> str:
    """Bytes in the unit that reads best: '1.21 GB', '929 kB' (a tiny test model has kilobytes)."""
    if b is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(b) >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


def _f(v, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def render(summary: dict, data: dict, plots: list[str]) -> str:
    ref, tasks = data["reference"], data["tasks"]
    loads = list(dict.fromkeys(k for v in data["variants"] for k in v.get("speed", {})))
    lines = [f"# hyperbench study: {summary.get('model')}", "",
             f"Status: **{summary['status']}**" + (f" ({summary['reason']})" if summary.get("reason") else ""),
             f"Reference: `{ref}`; paired test level {1 - data['alpha']:.0%}.", "",
             "## Verdict", "", f"**{data['answer'][0].upper() + data['answer'][1:]}.**", ""]
    head = ["variant"]
    for t in tasks:
        head += [f"{t}", f"Δ vs ref ({t})"]
    head += [f"out tok/s {x}" for x in loads] + ["TPOT p50 ms " + loads[0]] if loads else []
    spec = any("acceptance_rate" in x for v in data["variants"] for x in v.get("speed", {}).values())
    if spec:
        head += [f"acceptance {data.get('load')}", f"speedup vs no speculation {data.get('load')}"]
    head += ["memory", "size", "J/token", "perplexity", "greedy identical", "KL mean"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in data["variants"]:
        cells = [f"**{v['variant']}**" if v["variant"] == data.get("winner") else v["variant"]]
        for t in tasks:
            acc = v["accuracy"].get(t)
            if acc is None:
                cells += [_why(v, t), "-"]
                continue
            ci = acc.get("ci")
            cells.append(f"{acc['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] ({acc['metric']}, n={acc['n']})" if ci
                         else f"{acc['value']:.3f}")
            test = acc.get("vs_reference")
            if v["variant"] == ref:
                cells.append("(reference)")
            elif test is None:
                cells.append("-")
            else:
                sig = ("**worse**" if test["better"] is False else "**better**") if test["significant"] else "n.s."
                cells.append(f"{test['diff']:+.3f} [{test['ci'][0]:+.3f}, {test['ci'][1]:+.3f}] "
                             f"p={test['p']:.3g} {sig}")
        speed = v.get("speed", {})
        cells += [_f((speed.get(x) or {}).get("output_tok_s")) for x in loads]
        if loads:
            cells.append(_f((speed.get(loads[0]) or {}).get("tpot_p50_ms")))
        if spec:
            point = speed.get(data.get("load")) or {}
            cells += [_f(point.get("acceptance_rate"), ".3f"), _f(point.get("spec_speedup"), ".3f")]
        j = v.get("joules_per_token") or {}
        agree = v.get("agree") or {}
        cells += [size_text(v.get("memory_bytes")), size_text(v.get("size_bytes")),
                  _f(j.get(data.get("load"))) if j else "-", _f(v.get("perplexity")),
                  (f"{agree['identical_prompts']}/{agree['prompts']}" if agree.get("prompts") else
                   ("(reference)" if v["variant"] == ref else "-")), _f(agree.get("kl_mean"), ".3g")]
        rows.append("| " + " | ".join(cells) + " |")
    lines += rows
    lines += ["", "Accuracy: the task's metric with its 95% CI over items; Δ: variant minus reference over "
              "the same items, paired bootstrap 95% CI and p (McNemar exact for 0/1 scores, else a "
              "paired permutation test); n.s.: not significant. Memory: "
              + "; ".join(sorted({f"{v['memory_source']}" for v in data["variants"] if v.get("memory_source")}))
              + ". Size: the engine's weight bytes as loaded. Greedy identical and KL: the agree cell "
              "(both at full precision around the weights)."
              + (" Speedup: output tok/s against the same engine restarted without speculation (the bench "
                 "cell's own baseline run)." if spec else "")]
    if data.get("pareto"):
        lines += ["", f"Pareto set (accuracy, tok/s at {data['load']}, memory): "
                  + ", ".join(f"`{p}`" for p in data["pareto"])]
    not_ok = [v for v in data["variants"] if not v.get("eligible")]
    if not_ok:
        lines += ["", "Not eligible for the verdict: " + "; ".join(
            f"`{v['variant']}`: {v['not_eligible_because']}" for v in not_ok)]
    tuned = [v for v in data["variants"] if v.get("tune")]
    if tuned:
        lines += ["", "## Tune (sampling parameters per variant, held-out check against its baseline)", ""]
        for v in tuned:
            t = v["tune"]
            lines.append(f"- `{v['variant']}`: {t['status']}, {t['trials']} trials "
                         f"(report: `cells/tune-{_name(v)}/report.md`)")
            lines += [f"  - {p['label']} ({_params(p['params'])}): {p['verdict']}" for p in t.get("picks") or []]
    lines += ["", "## Cells", "", "| cell | job | variant | status | reason |", "|---|---|---|---|---|"]
    for v in data["variants"]:
        for name, c in v["cells"].items():
            lines.append(f"| `cells/{name}` | {c['job']} | {v['variant']} | {c['status']} | {c['reason'] or ''} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}](plots/{p})" for p in plots]
    return "\n".join(lines) + "\n"


def _params(params: dict | None) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in (params or {}).items())


def _why(v: dict, task: str) -> str:
    c = next((c for c in v["cells"].values() if c["job"] == "score" and task in c["tasks"]), None)
    return f"{c['status']}" if c else "-"


def _name(v: dict) -> str:
    from harness.study.variants import Variant

    return Variant(v["variant"], {}, True).name


# ---------------------------------------------------------------------------- plots


def write_plots(folder: RunFolder, data: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    out = folder.path / "plots"
    out.mkdir(exist_ok=True)
    made = []
    if data.get("load") and data["tasks"]:
        made.append(_accuracy_vs_speed(out, data))
    if data.get("load"):
        made.append(_four_panel(out, data))
    made += _latency_curves(folder, data)
    return made


def _tok(v: dict, load: str):
    return (v.get("speed", {}).get(load) or {}).get("output_tok_s")


def _accuracy_vs_speed(out: Path, data: dict) -> str:
    import matplotlib.pyplot as plt

    tasks, load = data["tasks"], data["load"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    mems = [v["memory_bytes"] for v in data["variants"] if v.get("memory_bytes")]
    top = max(mems) if mems else 1
    for ax, task in zip(axes[0], tasks):
        front = []
        for v in data["variants"]:
            acc, tok = v["accuracy"].get(task), _tok(v, load)
            if acc is None or tok is None:
                continue
            size = 60 + 400 * (v.get("memory_bytes") or 0) / top
            lo, hi = acc.get("ci") or (acc["value"], acc["value"])
            ax.errorbar(tok, acc["value"], yerr=[[acc["value"] - lo], [hi - acc["value"]]], fmt="none",
                        ecolor="gray", capsize=3)
            ax.scatter(tok, acc["value"], s=size, alpha=0.7, label=v["variant"])
            if v["variant"] in data.get("pareto", []):
                front.append((tok, acc["value"]))
        if len(front) > 1:
            front.sort()
            ax.plot(*zip(*front), "k--", lw=1, label="Pareto front")
        ax.set_xlabel(f"output tok/s at {load}")
        ax.set_ylabel(f"{task} accuracy (95% CI)")
        ax.set_title(f"{task}: accuracy vs speed (marker size = memory)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_speed.png", dpi=100)
    plt.close(fig)
    return "accuracy_vs_speed.png"


def _four_panel(out: Path, data: dict) -> str:
    import matplotlib.pyplot as plt

    names = [v["variant"] for v in data["variants"]]
    first = data["tasks"][0] if data["tasks"] else None
    panels = [
        ("size (MB, weights as loaded)", [(v.get("size_bytes") or 0) / 1e6 for v in data["variants"]]),
        (f"output tok/s at {data['load']}", [_tok(v, data["load"]) or 0 for v in data["variants"]]),
        ("perplexity", [v.get("perplexity") or 0 for v in data["variants"]]),
        (f"accuracy ({first})" if first else "accuracy (no task)",
         [(v["accuracy"].get(first) or {}).get("value") or 0 for v in data["variants"]] if first else []),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (title, values) in zip(axes.flat, panels):
        if values and any(values):
            ax.bar(range(len(names)), values, color="tab:blue")
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "compression.png", dpi=100)
    plt.close(fig)
    return "compression.png"


def _latency_curves(folder: RunFolder, data: dict) -> list[str]:
    """compare's throughput and latency plots of the bench cells, one line per variant."""
    from harness.compare.plots import write_plots
    from harness.compare.run import read_run
    from harness.study.cells import load_plan

    entries = []
    for cell in load_plan(folder.path):
        path = cell.folder(folder.path)
        if cell.job == "bench" and (path / "summary.json").is_file():
            e = read_run(RunFolder(path))
            e.label = cell.variant
            entries.append(e)
    return write_plots(folder, entries)
