"""report.md of a score run: a view of summary.json (which stays canonical)."""

from __future__ import annotations

from harness.results import RunFolder, atomic_write_text


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.1f}"
    return str(v)


def write_report(run_dir: RunFolder) -> None:
    s = run_dir.read_json("summary.json")
    out = [f"# score: {s.get('engine')} / {s.get('model')}", ""]
    out.append(f"status **{s.get('status')}**" + (f" ({s['reason']})" if s.get("reason") else "")
               + f", started {s.get('started')}, finished {s.get('finished', '-')}")
    if s.get("resumed"):
        out.append(f"resumed {len(s['resumed'])} time(s): {', '.join(s['resumed'])}")
    if s.get("precision"):
        from harness.precision import precision_line

        out.append(f"precision: {precision_line(s['precision'])}")
    out.append("")
    if s.get("notes"):
        out += ["## Read this first", ""] + [f"- {n}" for n in s["notes"]] + [""]
    tasks = s.get("tasks") or {}
    if tasks:
        out += ["## Scores", "", "| task | metric | value | ± stderr | items | few-shot |",
                "| --- | --- | ---: | ---: | ---: | ---: |"]
        for name, t in tasks.items():
            for metric, m in t["metrics"].items():
                n = f"{t.get('n')}/{t.get('n_total')}" if t.get("n_total") else _fmt(t.get("n"))
                out.append(f"| {name} | {metric} | {_fmt(m['value'])} | {_fmt(m['stderr'])} | {n} | "
                           f"{_fmt(t.get('num_fewshot'))} |")
        for name, g in (s.get("groups") or {}).items():
            for metric, m in g["metrics"].items():
                out.append(f"| **{name}** (group) | {metric} | {_fmt(m['value'])} | {_fmt(m['stderr'])} | | |")
        out.append("")
        gen = {n: t["generation"] for n, t in tasks.items() if t.get("generation")}
        if gen:
            out += ["## Generation settings", "",
                    "| task | sent on the wire | greedy | fixed by the task | your overrides |",
                    "| --- | --- | --- | --- | --- |"]
            for name, g in gen.items():
                sent = ", ".join(f"{k}={v!r}" for k, v in g["sent"].items())
                out.append(f"| {name} | {sent} | {'yes' if g['greedy'] else 'no'} | "
                           f"{', '.join(g['fixed_by_task']) or '-'} | "
                           f"{', '.join(f'{k}={v}' for k, v in g['overrides'].items()) or '-'} |")
            out.append("")
        out += ["## Data", ""]
        for name, t in tasks.items():
            d = t.get("data") or {}
            where = d.get("source") or "-"
            out.append(f"- {name}: {d.get('dataset') or ''} {('(' + d['config'] + ')') if d.get('config') else ''}"
                       f" from {where}")
        out.append("")
    thr = s.get("throughput")
    if thr:
        out += ["## Requests", "",
                f"{thr['items']} items, {thr['requests_sent']} requests sent in {thr['engine_s']:.1f} s of "
                f"engine time ({_fmt(thr['items_per_s'])} items/s, {_fmt(thr['requests_per_s'])} "
                f"requests/s; {thr['elapsed_s']:.1f} s with lm-eval's task setup).", ""]
        for kind, r in (s.get("requests") or {}).items():
            out.append(f"- {kind}: {r['sent']} sent, {r['cached']} from the resume cache")
        lm = s.get("lm") or {}
        if lm.get("alignment"):
            out.append(f"- continuation alignment: {lm['alignment']}")
        out.append("")
    out.append("Per-item records: samples/*.jsonl; engine answers: requests.jsonl; "
               "lm-eval's own output: lm_eval_results.json.")
    atomic_write_text(run_dir.file("report.md"), "\n".join(out) + "\n")
