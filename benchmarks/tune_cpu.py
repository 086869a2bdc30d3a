"""`hyperbench tune` for real on CPU: smollm2-135m on GSM8K, one tune per engine, then the results.

Runs the real CLI once per engine (each tune starts its engine, searches, scores the held-out
split, stops the engine), then prints, per engine, from the run folder's summary.json: every
trial, the Pareto front, the best configuration(s), and the held-out comparison with the baseline
(confidence intervals, p-values, verdict). GSM8K comes from the offline staging (the hub is off).

    python benchmarks/tune_cpu.py [--engines hf,llamacpp,vllm] [--trials 8] [--dev-limit 16] ...

The default budget is sized for a shared 2-core machine: 4-12 min per engine (notes in the
README's tune section). Engines that are not installed fail in one line and are reported so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# engine -> extra flags. llama-cpp-python decodes one sequence at a time: more requests in flight
# would only measure queueing, so it is tuned at concurrency 1 (the others at --concurrency).
EXTRA = {"llamacpp": ["--quant", "q8_0"]}
CONCURRENCY = {"llamacpp": "1"}
METRICS = [("accuracy", "accuracy", "{:.3f}"), ("tpot_ms", "TPOT ms", "{:.1f}"),
           ("ttft_ms", "TTFT ms", "{:.0f}"), ("output_tok_s", "out tok/s", "{:.1f}")]


def _params(p: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items())


def _fmt(m: dict | None, fmt: str) -> str:
    if not m or m.get("mean") is None:
        return "-"
    s = fmt.format(m["mean"])
    return f"{s} ± {fmt.format(m['sem'])}" if m.get("sem") is not None else s


def _num(x: float) -> str:
    return f"{x:+.3f}" if abs(x) < 10 else f"{x:+.0f}"


def table(summary: dict) -> list[str]:
    """Markdown: trials, front, picks, held-out comparison."""
    sel = summary.get("selection") or {}
    front, picks = set(sel.get("front") or []), set(sel.get("picks") or [])
    out = ["| trial | how | parameters | " + " | ".join(h for _, h, _ in METRICS) + " | |",
           "|---|---|---|" + "---|" * len(METRICS) + "---|"]
    for t in summary["trials"]:
        mark = ", ".join(x for x, on in (("front", t["index"] in front), ("picked", t["index"] in picks)) if on)
        how = "baseline" if t["index"] == 0 else t.get("generator", "")
        if t["status"] != "completed":
            out.append(f"| {t['index']} | {how} | {_params(t['params'])} | {t['status']} |" + " |" * len(METRICS))
            continue
        m = t.get("metrics") or {}
        out.append(f"| {t['index']} | {how} | {_params(t['params'])} | "
                   + " | ".join(_fmt(m.get(k), f) for k, _, f in METRICS) + f" | {mark} |")
    out.append("")
    out.append("(dev split; ± standard error; out tok/s: all output tokens over the trial's busy time)")
    out.append("")
    out.append(f"Pareto front (dev): trials {', '.join(map(str, sorted(front))) or '-'}; "
               f"taken to the held-out split: {', '.join(map(str, sel.get('picks') or [])) or '-'}"
               + (f" ({sel['note']})" if sel.get("note") else ""))
    h = summary.get("holdout") or {}
    if h.get("why"):
        out += ["", f"Held-out: not run: {h['why']}"]
        return out
    out += ["", f"Held-out split: {h.get('items')} items, paired per item, {round(100 * h.get('level', 0.95))}% "
            "bootstrap CIs (Bonferroni over the picks):", "",
            "| configuration | metric | baseline | candidate | difference (CI) | p | |",
            "|---|---|---|---|---|---|---|"]
    for c in h.get("comparisons") or []:
        for name, m in (c.get("metrics") or {}).items():
            lo, hi = m["ci"]
            name = "output_tok_s per stream" if name == "output_tok_s" else name
            out.append(f"| {c['label']} | {name} | {m['baseline']:.4g} | {m['candidate']:.4g} | "
                       f"{_num(m['diff'])} ({_num(lo)} to {_num(hi)}) | {m['p']:.3g} ({m['test']}) | "
                       f"{'significant' if m['significant'] else ''} |")
    for c in h.get("comparisons") or []:
        res = (h.get("results") or {}).get(c["label"]) or {}
        out.append(f"\n**{c['label']}** ({_params(res.get('params') or {})}): {c['verdict']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="hf,llamacpp,vllm")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--params", default="temperature,top_p,top_k,min_p")
    ap.add_argument("--objectives", default="accuracy,-tpot")
    ap.add_argument("--trials", default="6")
    ap.add_argument("--dev-limit", default="12")
    ap.add_argument("--test-limit", default="24")
    ap.add_argument("--holdout-top", default="1")
    ap.add_argument("--num-fewshot", default="1", help="GSM8K's default is 5; 1 keeps prompts short on CPU")
    ap.add_argument("--max-gen-toks", default="160",
                    help="GSM8K's default is 256; this model's right answers are far shorter")
    ap.add_argument("--concurrency", default="4", help="Requests in flight (llamacpp: always 1)")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--out", type=Path, default=Path("results") / f"tune-cpu-{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument("--report-only", action="store_true", help="Print the tables of existing run folders in --out.")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs = []
    for kind in args.engines.split(","):
        folder = args.out / kind
        cmd = [sys.executable, "-m", "harness.cli", "tune", "--engine", kind, "--model", args.model,
               "--task", "gsm8k", "--params", args.params, "--objectives", args.objectives,
               "--trials", args.trials, "--dev-limit", args.dev_limit, "--test-limit", args.test_limit,
               "--holdout-top", args.holdout_top, "--num-fewshot", args.num_fewshot,
               "--max-gen-toks", args.max_gen_toks, "--seed", args.seed,
               "--concurrency", CONCURRENCY.get(kind, args.concurrency),
               *EXTRA.get(kind, []), "--results-dir", str(args.out), "--run-name", kind]
        shown = "hyperbench " + " ".join(cmd[3:-4])
        if args.report_only:
            runs.append((kind, shown, None, None, None, None))
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        print(f"$ {shown}", file=sys.stderr, flush=True)
        load0, t0 = os.getloadavg(), time.monotonic()
        with open(args.out / f"{kind}.log", "w") as log:
            # the tune prints one line per trial on stderr: keep it, and show it as it comes
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.PIPE, text=True, env=env)
            for line in proc.stderr:
                log.write(line)
                print(f"  [{kind}] {line}", end="", file=sys.stderr, flush=True)
            rc = proc.wait()
        runs.append((kind, shown, rc, time.monotonic() - t0, load0, os.getloadavg()))
    print(f"\n{args.model} on GSM8K; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d')}; run folders in {args.out}")
    for kind, shown, rc, wall, load0, load1 in runs:
        print(f"\n#### {kind}\n\n```\n{shown}\n```\n")
        if wall is not None:
            print(f"exit {rc}, {wall / 60:.1f} min, load average (1 min) {load0[0]:.1f} before, {load1[0]:.1f} after\n")
        path = args.out / kind / "summary.json"
        if not path.exists():
            log = args.out / f"{kind}.log"
            last = (log.read_text().strip().splitlines() or ["no output"])[-1] if log.exists() else "not run"
            print(f"no result: {last} (log: {log})")
            continue
        summary = json.loads(path.read_text())
        print(f"status {summary['status']}; report: {args.out / kind / 'report.md'}\n")
        print("\n".join(table(summary)))


if __name__ == "__main__":
    main()
