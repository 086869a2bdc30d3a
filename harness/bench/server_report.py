"""The report's server-side view (harness/bench/server_metrics.py): per point, the engine's queue and
KV-cache use, its prefix-cache hit rate and its own TTFT histogram beside the client's; and a
plot per point of the engine's running/waiting requests on the same time axis as the client's
requests in flight (from the records' send and end)."""

from __future__ import annotations

import json

from harness.bench.server_metrics import FILE


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def server_section(points: list[dict], label_of) -> list[str]:
    rows = [(label_of(p), p["server"]) for p in points if isinstance(p.get("server"), dict)]
    scraped = [(label, s) for label, s in rows if s.get("status") == "scraped"]
    if not scraped:
        missing = next((s.get("reason") for _, s in rows if s.get("status") == "unavailable"), None)
        return ["", "## Server view (/metrics)", "", f"Not scraped: {missing}."] if missing else []
    out = ["", "## Server view (/metrics)", "",
           f"The engine's Prometheus metrics, scraped during each point (`{FILE}`; plots: `server_*.png`).", "",
           "| point | scrapes | running mean / max | waiting mean / max | KV cache use max | prefix-cache hit rate |",
           "|---|---|---|---|---|---|"]
    for label, s in scraped:
        def mm(key):
            d = s.get(key)
            return f"{_fmt(d['mean'])} / {_fmt(d['max'])}" if d else "-"
        kv = (s.get("kv_cache_usage") or {}).get("max")
        hit = (s.get("prefix_cache") or {}).get("hit_rate")
        out.append(f"| {label} | {s['samples']} | {mm('running')} | {mm('waiting')} | "
                   f"{_fmt(kv * 100) + ' %' if kv is not None else '-'} | "
                   f"{_fmt(hit * 100) + ' %' if hit is not None else '-'} |")
    checks = [(label, s["ttft_check"]) for label, s in scraped if s.get("ttft_check")]
    if checks:
        out += ["", "TTFT check: the engine's own histogram (`vllm:time_to_first_token_seconds`, differenced "
                "around the point) beside the client's TTFTs in the same buckets. The engine's clock starts "
                "when it received the request, so its TTFT should be the same or slightly lower.", "",
                "| point | requests engine / client | mean ms engine / client | share ≤ bucket (engine / client) |",
                "|---|---|---|---|"]
        for label, c in checks:
            out.append(f"| {label} | {_fmt(c['engine_count'])} / {c['client_count']} | "
                       f"{_fmt(c['engine_mean_ms'])} / {_fmt(c['client_mean_ms'])} | {_shares(c)} |")
    return out


def _shares(c: dict) -> str:
    """Cumulative shares at the buckets where either side changes, e.g. `≤0.1 s: 40/35 %`."""
    ne, nc = c["engine_count"] or 0, c["client_count"] or 0
    cells, prev = [], (0, 0)
    for le, e, k in zip(c["buckets_le_s"], c["engine_cumulative"], c["client_cumulative"]):
        now = (e / ne if ne else 0, k / nc if nc else 0)
        if now != prev and le != "inf":
            cells.append(f"≤{le:g} s: {now[0] * 100:.0f}/{now[1] * 100:.0f} %")
        prev = now
        if now == (1, 1):
            break
    return "; ".join(cells) or "-"


def server_plots(run, out_dir) -> list[str]:
    """One PNG per scraped point: the engine's running and waiting requests, and the client's
    requests in flight, against seconds from the point's first send."""
    path = run.file(FILE)
    if not path.is_file():
        return []
    samples: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line of a killed run
        samples.setdefault(row.get("point"), []).append(row)
    spans: dict[str, list[tuple[float, float]]] = {}
    for d in run.records():
        if d.get("request_id", -1) >= 0 and d.get("end") is not None:
            spans.setdefault(d.get("point"), []).append((d["send"], d["end"]))
    import matplotlib.pyplot as plt

    made = []
    for point, rows in samples.items():
        reqs = spans.get(point)
        if not reqs or len(rows) < 2:
            continue
        t0 = min(s for s, _ in reqs)
        ts = [r["t"] - t0 for r in rows]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        # the client's in flight, as a step function over every send and end
        events = sorted([(s - t0, 1) for s, _ in reqs] + [(e - t0, -1) for _, e in reqs])
        xs, ys, n = [0.0], [0], 0
        for t, step in events:
            n += step
            xs.append(t)
            ys.append(n)
        ax.step(xs, ys, where="post", label="client: in flight", color="tab:gray")
        for key, style in (("running", "o-"), ("waiting", "s--")):
            if any(key in r for r in rows):
                ax.step(ts, [r.get(key) for r in rows], style, where="post", label=f"engine: {key} (scraped)",
                        markersize=3)
        ax.set_xlabel("seconds from the point's first send")
        ax.set_ylabel("requests")
        ax.set_title(f"{point}: client and engine")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        name = "server_" + "".join(ch if ch.isalnum() else "_" for ch in point) + ".png"
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        made.append(name)
    return made
