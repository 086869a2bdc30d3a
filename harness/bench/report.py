"""Markdown report and plots: views of summary.json (which stays canonical)."""

from __future__ import annotations

import math

from harness.bench.server_report import server_plots, server_section
from harness.results import RunFolder

COLUMNS = (
    ("req/s", lambda p: p.get("request_throughput")),
    ("out tok/s", lambda p: p.get("output_throughput")),
    ("TTFT p50", lambda p: stat(p, "ttft_ms", "p50")),
    ("TTFT p99", lambda p: stat(p, "ttft_ms", "p99")),
    ("TPOT p50", lambda p: stat(p, "tpot_ms", "p50")),
    ("TPOT p99", lambda p: stat(p, "tpot_ms", "p99")),
    ("ITL/chunk p50", lambda p: stat(p, "itl_ms", "p50")),
    ("ITL/token p50", lambda p: stat(p, "itl_token_ms", "p50")),
    ("E2E p50", lambda p: stat(p, "e2e_ms", "p50")),
    ("E2E p99", lambda p: stat(p, "e2e_ms", "p99")),
)


def _spec(point: dict, key: str):
    return (point.get("speculative") or {}).get(key)


def _speedup(point: dict, key: str):
    return (_spec(point, "speedup") or {}).get(key)


def _x(v) -> str | None:
    return None if v is None else f"{v:.2f}x"


def _f2(v) -> str | None:
    return None if v is None else f"{v:.2f}"


# speculative decoding, for runs whose points have it: acceptance from the engine's counters,
# speedup against the same engine without speculation (harness/bench/run.py: _spec_baseline)
SPEC_COLUMNS = (
    ("accept", lambda p: _f2(_spec(p, "acceptance_rate"))),
    ("acc. len", lambda p: _f2(_spec(p, "mean_accepted_length"))),
    ("speedup tok/s", lambda p: _x(_speedup(p, "output_throughput"))),
    ("speedup TPOT", lambda p: _x(_speedup(p, "tpot_p50"))),
)


# with --slo: requests/s that met every SLO (harness/bench/metrics.py)
GOODPUT_COLUMN = ("goodput req/s", lambda p: p.get("goodput"))


def terminal_columns(points: list[dict]) -> list:
    """The columns of bench's terminal table: COLUMNS, goodput when SLOs were set (as report.md),
    then SPEC_COLUMNS when it speculated."""
    return (list(COLUMNS) + ([GOODPUT_COLUMN] if any("goodput" in p for p in points) else [])
            + (list(SPEC_COLUMNS) if any("speculative" in p for p in points) else []))


def spec_baseline_note(summary: dict) -> str | None:
    """One line on the speculation-off baseline when the speedup was not measured."""
    sb = summary.get("speculative_baseline")
    if not sb or sb.get("status") == "complete":
        return None
    return f"speedup not measured: baseline {sb.get('status')}" + (f" ({sb['reason']})" if sb.get("reason") else "")


def stat(point: dict, key: str, name: str):
    """A point's statistic (`ttft_ms`, `p50`), None where the point has none (a failed point)."""
    d = point.get(key)
    return d.get(name) if isinstance(d, dict) else None


def point_label(p: dict) -> str:
    rep = f" #{p['repeat']}" if p.get("repeat") is not None else ""  # bench --repeats
    for k in ("concurrency", "rate", "trace"):
        if k in p:
            v = p[k]
            if isinstance(v, float) and math.isinf(v) or v == "inf":
                return f"{k}=inf{rep}"
            return (f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}") + rep
    return "?"


# bench --repeats: mean ± 95% CI half-width over the repeats (harness/bench/repeats.py)
REPEAT_COLUMNS = (("req/s", "request_throughput"), ("out tok/s", "output_throughput"),
                  ("TTFT p50", "ttft_ms.p50"), ("TTFT p99", "ttft_ms.p99"), ("TPOT p50", "tpot_ms.p50"),
                  ("E2E p50", "e2e_ms.p50"), ("goodput req/s", "goodput"))


def repeats_section(stats: list[dict]) -> list[str]:
    def cell(m):
        if not m:
            return "-"
        return fmt(m["mean"]) + (f" ± {fmt(m['ci95'])}" if m.get("ci95") is not None else "")

    cols = [(c, k) for c, k in REPEAT_COLUMNS if any(k in e for e in stats)]
    return ["## Repeats", "", "Mean ± half-width of the 95% confidence interval (Student's t) over the "
            "finished repeats of each point; latencies in ms.", "",
            "| point | repeats | " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * (len(cols) + 2),
            *(f"| {point_label(e)} | {e['repeats']} | " + " | ".join(cell(e.get(k)) for _, k in cols) + " |"
              for e in stats)]


def row_label(p: dict) -> str:
    """A table row's point: its load, and "(partial)" when a stop cut it short (harness/bench/run.py)."""
    return point_label(p) + (" (partial)" if p.get("partial") else "")


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3g}"
    return str(v)


def points_table(points: list[dict], with_goodput: bool = False) -> str:
    cols = list(COLUMNS)
    if with_goodput:
        cols.append(GOODPUT_COLUMN)
    head = "| point | ok/total | " + " | ".join(c for c, _ in cols) + " |"
    sep = "|" + "---|" * (len(cols) + 2)
    rows = [
        f"| {row_label(p)} | {p.get('completed', 0)}/{p.get('requests', 0)} | "
        + " | ".join(fmt(f(p)) for _, f in cols) + " |"
        for p in points
    ]
    return "\n".join([head, sep, *rows])


def write_report(run: RunFolder, plots: bool = True) -> str:
    summary = run.typed_summary()
    s = summary.model_dump(exclude_unset=True)  # as written: the sections below share the dict views
    cfg = run.read_json("config.json")
    env = run.read_json("env.json")
    points = [p.model_dump(exclude_unset=True) for p in summary.points]
    lines = [f"# hyperbench bench: {summary.engine} / {summary.model}", ""]
    if summary.status != "complete":
        lines += [f"> **status: {summary.status}**: {summary.reason or ''}", ""]
    w = cfg.get("workload", {})
    lines += [
        f"- run folder: `{run.path}`  ",
        f"- served model: `{summary.served_model}`; started {summary.started}  ",
        (f"- workload: trace `{cfg['load']['trace']}` (its send times, lengths and requests), time scale "
         f"{cfg['load'].get('time_scale')}" if (cfg.get("load") or {}).get("trace") else
         f"- workload: input {w.get('input_len')} tokens, output {w.get('output_len')} tokens"
         f"{' (fixed)' if w.get('fixed_output') else ''}, "
         + (f"{w.get('num_requests')} conversations of {w['turns']} turns (think time {fmt(w.get('think_time_ms'))} ms) "
            "per point" if (w.get("turns") or 1) > 1 else f"{w.get('num_requests')} requests per point"))
        + f", temperature {w.get('temperature')}, seed {w.get('seed')}"
        + (f", dataset `{w.get('dataset')}`" if w.get("dataset") else ""),
        f"- machine: {env.get('cpu', {}).get('model')}, "
        + (", ".join(g["name"] for g in env.get("gpus", [])) or "no GPU")
        + f"; hyperbench {env.get('hyperbench')} ({env.get('git_commit')})",
        "",
        "Latencies in ms. TTFT = first token - send; TPOT = (E2E - TTFT)/(output tokens - 1); "
        "ITL/chunk = gaps between streamed chunks that carried tokens; ITL/token = each gap split "
        "over its chunk's tokens (the same where every chunk carries one).",
        "",
        points_table(points, with_goodput=any("goodput" in p for p in points)),
        "",
    ]
    for p in points:
        if p.get("partial"):
            lines.append(f"- {row_label(p)}: cut short; {p.get('requests', 0)} of {p.get('planned_requests')} "
                         "requests finished, and its numbers are over those only.")
    for p in points:  # open loop: how late the client sent against its schedule
        if lag := p.get("schedule_lag_ms"):
            lines.append(f"- {point_label(p)}: schedule lag (send - scheduled send) p50 {fmt(lag['p50'])} ms, "
                         f"p99 {fmt(lag['p99'])} ms" + (f"; **{p['client_behind']}**" if p.get("client_behind") else ""))
    lines += turns_section(points)
    failed = [p for p in points if p.get("failed")]
    for p in failed:
        lines.append(f"- {point_label(p)}: {p['failed']} failed, first error: `{p.get('first_error')}`")
    if mr := summary.max_rate:  # bench --find-max-rate (harness/bench/find_rate.py)
        lo, hi = mr["bracket"]
        lines += ["", "## Highest rate under the SLOs", "",
                  (f"**{fmt(mr['rate'])} req/s**: the highest rate at which at least {mr['goodput_share']:.0%} of "
                   f"requests met every SLO; {fmt(hi)} req/s did not" if mr.get("found") else
                   f"not found within {mr['precision']:.0%} (bracket {fmt(lo)}..{fmt(hi)} req/s)")
                  + f" (precision {mr['precision']:.0%}). The walk:", "",
                  "| step | rate req/s | SLO attainment | passed |", "|---|---|---|---|",
                  *(f"| {i} | {fmt(w['rate'])} | {w['slo_attainment']:.1%} | {'yes' if w['passed'] else 'no'} |"
                    for i, w in enumerate(mr["walk"], 1))]
    lines += server_section(points, point_label)
    if s.get("repeat_stats"):
        lines += ["", *repeats_section(s["repeat_stats"])]
    if any("speculative" in p for p in points):
        lines += ["", *spec_section(s, points)]
    info = summary.engine_info
    if info:
        from harness.precision import precision_line

        lines += ["", "## Engine", "", f"Precision: {precision_line(s.get('precision'))}.",
                  "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in info.items() if not isinstance(v, (dict, list))]
    gpu_rows = [(point_label(p), g) for p in points if p.get("gpu") for g in p["gpu"]["gpus"]]
    if gpu_rows:
        lines += ["", "## GPU (NVML)", "", "| point | GPU | peak above idle (MiB) | util % | energy J |",
                  "|---|---|---|---|---|"]
        for label, g in gpu_rows:
            above = g.get("peak_above_baseline_bytes")
            lines.append(f"| {label} | {g['index']} | {fmt(above / 2**20 if above is not None else None)} | "
                         f"{fmt(g.get('mean_utilization_pct'))} | {fmt(g.get('energy_j'))} |")
    roof_rows = [(point_label(p), p["roofline"]) for p in points if p.get("roofline")]
    if roof_rows:
        lines += ["", "## Roofline and energy", "",
                  "Per-stream decode speed (1000 / TPOT p50) against bandwidth / weight bytes "
                  "(no engine decodes one stream faster at small batch).", "",
                  "| point | decode tok/s | roofline tok/s | % of roofline | J / output token |",
                  "|---|---|---|---|---|"]
        for label, r in roof_rows:
            frac = r.get("fraction_of_roofline")
            lines.append(f"| {label} | {fmt(r.get('decode_tok_s'))} | {fmt(r.get('roofline_tok_s'))} | "
                         f"{fmt(frac * 100 if frac is not None else None)} | "
                         f"{fmt(r.get('joules_per_output_token'))} |")
        src = roof_rows[0][1].get("bandwidth_source")
        if src:
            lines += ["", f"Bandwidth: {fmt(roof_rows[0][1].get('bandwidth_gbs'))} GB/s ({src})."]
    if plots and points:
        made = write_plots(run, points)
        lines += ["", "## Plots", ""] + [f"![{m}](plots/{m})" for m in made]
    text = "\n".join(lines) + "\n"
    from harness.results import atomic_write_text

    atomic_write_text(run.file("report.md"), text)
    return text


def turns_section(points: list[dict]) -> list[str]:
    """Multi-turn: TTFT by turn at each point. Each turn's prompt holds the conversation so far,
    so a TTFT that stays flat as the prompt grows is the engine's prefix cache at work."""
    rows = [(point_label(p), t) for p in points for t in p.get("turns") or []]
    if not rows:
        return []
    out = ["", "## TTFT by turn", "", "| point | turn | requests | prompt tokens (mean) | TTFT p50 | TTFT p99 |",
           "|---|---|---|---|---|---|"]
    for label, t in rows:
        d = t.get("ttft_ms") or {}
        out.append(f"| {label} | {t['turn']} | {t['completed']}/{t['requests']} | {fmt(t.get('prompt_tokens_mean'))} "
                   f"| {fmt(d.get('p50'))} | {fmt(d.get('p99'))} |")
    return out


def spec_section(s: dict, points: list[dict]) -> list[str]:
    """The report's "Speculative decoding" section: acceptance per point, and the speedup against
    the same engine without speculation (its run folder: BASELINE_FOLDER)."""
    spec = (s.get("engine_info") or {}).get("speculative") or {}
    what = ", ".join(f"{k} {v}" for k, v in spec.items() if not isinstance(v, (dict, list)) and v is not None)
    out = ["## Speculative decoding", ""]
    if what:
        out += [f"Engine settings: {what}.", ""]
    out += ["Acceptance from the engine's counters differenced around each point: acceptance rate = "
            "accepted / drafted tokens; mean accepted length = tokens per target forward pass "
            "(1 + accepted / drafts). Speedup > 1: faster with speculation (output tok/s spec / "
            "no-spec; TPOT and E2E p50 no-spec / spec).", ""]
    sb = s.get("speculative_baseline") or {}
    if sb.get("status") == "complete":
        out += [f"Baseline: the same engine restarted without speculation, same workload and seed: "
                f"run folder `{sb.get('run_folder')}/`.", ""]
    elif sb:
        out += [f"Speedup not measured: baseline {sb.get('status')}"
                + (f" ({sb['reason']})." if sb.get("reason") else "."), ""]
    out += ["| point | drafts | draft tokens | accepted | acceptance rate | mean accepted length "
            "| acceptance by position | out tok/s spec / no-spec | speedup | TPOT p50 spec / no-spec "
            "| speedup | E2E p50 spec / no-spec | speedup |",
            "|" + "---|" * 13]
    for p in points:
        sp = p.get("speculative")
        if sp is None:
            continue
        if "error" in sp:
            out.append(f"| {point_label(p)} | counters unreadable: {sp['error']} |" + " |" * 11)
            continue
        up = sp.get("speedup") or {}
        base = up.get("baseline") or {}
        by_pos = sp.get("acceptance_by_position")
        out.append(
            f"| {point_label(p)} | {fmt(sp.get('drafts'))} | {fmt(sp.get('draft_tokens'))} | "
            f"{fmt(sp.get('accepted_tokens'))} | {fmt(_f2(sp.get('acceptance_rate')))} | "
            f"{fmt(_f2(sp.get('mean_accepted_length')))} | "
            f"{', '.join(f'{v:.2f}' for v in by_pos) if by_pos else '-'} | "
            f"{fmt(p.get('output_throughput'))} / {fmt(base.get('output_throughput'))} | "
            f"{_x(up.get('output_throughput')) or '-'} | "
            f"{fmt(stat(p, 'tpot_ms', 'p50'))} / {fmt(base.get('tpot_p50_ms'))} | {_x(up.get('tpot_p50')) or '-'} | "
            f"{fmt(stat(p, 'e2e_ms', 'p50'))} / {fmt(base.get('e2e_p50_ms'))} | {_x(up.get('e2e_p50')) or '-'} |"
        )
    return out


def write_plots(run: RunFolder, points: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [p for p in points if p.get("completed")]
    if not ok:
        return []
    kind = next(k for k in ("concurrency", "rate", "trace") if k in ok[0])
    # --repeats: each load's repeats side by side, not a line that goes back and forth
    ok.sort(key=lambda p: float("inf") if p[kind] == "inf" else float(p[kind]))
    xs = [float("inf") if p[kind] == "inf" else float(p[kind]) for p in ok]
    finite = [x for x in xs if math.isfinite(x)]
    top = (max(finite) * 2) if finite else 1.0
    has_inf = any(not math.isfinite(x) for x in xs)
    xs = [x if math.isfinite(x) else top for x in xs]  # plot inf at the right edge, ticked "inf"
    out_dir = run.path / "plots"
    out_dir.mkdir(exist_ok=True)
    made = []

    def finish(ax):  # every panel: load on x (inf ticked), legend, grid
        ax.set_xlabel(kind)
        if has_inf:
            tick_inf(ax, finite, top)
        ax.legend()
        ax.grid(alpha=0.3)

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        made.append(name)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in zip(axes, ("ttft_ms", "tpot_ms", "e2e_ms"), ("TTFT", "TPOT", "E2E")):
        for q in ("p50", "p90", "p99"):
            ax.plot(xs, [stat(p, key, q) for p in ok], marker="o", label=q)
        ax.set_title(f"{title} (ms)")
        finish(ax)
    save(fig, "latency.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [p.get("output_throughput") for p in ok], marker="o", label="output tok/s")
    ax.plot(xs, [p.get("total_token_throughput") for p in ok], marker="s", label="total tok/s")
    ax.set_ylabel("tokens/s")
    finish(ax)
    save(fig, "throughput.png")
    return made + server_plots(run, out_dir)


def tick_inf(ax, finite: list[float], at: float) -> None:
    """rate=inf is drawn at `at` (beyond every finite rate): tick the rates swept, that one "inf",
    so the point is not read as a rate of `at` requests/s."""
    from matplotlib.ticker import NullLocator

    ticks = sorted(set(finite))
    ax.set_xticks(ticks + [at], [f"{v:g}" for v in ticks] + ["inf"])
    ax.xaxis.set_minor_locator(NullLocator())  # a log axis would label its minor ticks otherwise
