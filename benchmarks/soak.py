"""Soak: one long `hyperbench bench` at a fixed Poisson rate against the synthetic engine, with the
harness process's memory (RSS) and open file descriptors sampled while it runs.

What it checks: flat descriptors and memory (no leak per request: the only growth expected is the
records the sweep point keeps in memory until it is summarized, ~1.5 KB each), and every request
accounted for (records.jsonl holds one record per planned request, completed or failed, none
lost, none twice).

    python benchmarks/soak.py --minutes 30 --rate 20 [--out soak.json]

Not part of CI (it runs as long as it is told). Prints a markdown table and a verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

SAMPLE_S = 5.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=20.0, help="Poisson arrivals, requests/s.")
    ap.add_argument("--output-len", type=int, default=16)
    ap.add_argument("--out", type=Path, help="Also write the samples and verdict as JSON.")
    args = ap.parse_args()
    planned = int(args.rate * args.minutes * 60)
    results = Path(tempfile.mkdtemp(prefix="hyperbench-soak-"))
    cmd = [sys.executable, "-m", "harness.cli", "bench", "--engine", "synthetic", "--ttft-ms", "20",
           "--itl-ms", "5", "--rate", str(args.rate), "--num-requests", str(planned), "--input-len", "32",
           "--output-len", str(args.output_len), "--no-plots", "--results-dir", str(results), "--run-name", "soak"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    harness = psutil.Process(proc.pid)
    samples = []
    records = results / "soak" / "records.jsonl"
    while proc.poll() is None:
        try:
            with harness.oneshot():
                rss, fds = harness.memory_info().rss, harness.num_fds()
        except psutil.Error:
            break
        done = records.read_bytes().count(b"\n") if records.exists() else 0
        samples.append({"t_s": round(time.monotonic() - t0, 1), "rss_mib": rss / 2**20, "fds": fds, "records": done})
        time.sleep(SAMPLE_S)
    err = proc.communicate()[1]
    wall = time.monotonic() - t0
    ids = [json.loads(line)["request_id"] for line in records.read_text().splitlines()] if records.exists() else []
    summary = json.loads((results / "soak" / "summary.json").read_text())
    point = (summary.get("points") or [{}])[0]
    # steady state: from the first sample with a tenth of the records in (start-up and warm-up
    # done, the engine and tokenizer loaded) to the last one before every record was in (after
    # that the harness summarizes, writes the report and stops the engine: not the soak)
    steady = [s for s in samples if planned / 10 <= s["records"] < planned] or samples
    first, last = steady[0], steady[-1]
    per_1k = (last["rss_mib"] - first["rss_mib"]) / max(last["records"] - first["records"], 1) * 1000
    verdict = {
        "exit_code": proc.returncode,
        "stderr_tail": err.strip().splitlines()[-1:] if err.strip() else [],
        "planned": planned,
        "records": len(ids),
        "each_request_once": sorted(ids) == list(range(planned)),
        "completed": point.get("completed"),
        "failed": point.get("failed"),
        "rss_mib_steady_first": round(first["rss_mib"], 1),
        "rss_mib_steady_last": round(last["rss_mib"], 1),
        "rss_mib_max": round(max(s["rss_mib"] for s in samples), 1),
        "rss_growth_mib_per_1k_requests": round(per_1k, 3),
        "fds_min": min(s["fds"] for s in steady),
        "fds_max": max(s["fds"] for s in steady),
        "wall_s": round(wall, 1),
        "achieved_rate": point.get("request_throughput"),
        "load_avg_1m_at_end": os.getloadavg()[0],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    print("| minutes | rate (req/s) | requests planned | records | each once | completed | failed | "
          "RSS steady first → last (MiB) | RSS growth per 1k requests (MiB) | open fds min–max |")
    print("| ---: | ---: | ---: | ---: | :---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {args.minutes:g} | {args.rate:g} | {planned} | {len(ids)} | {verdict['each_request_once']} | "
          f"{verdict['completed']} | {verdict['failed']} | {verdict['rss_mib_steady_first']} → "
          f"{verdict['rss_mib_steady_last']} | {verdict['rss_growth_mib_per_1k_requests']} | "
          f"{verdict['fds_min']}–{verdict['fds_max']} |")
    print(json.dumps(verdict, indent=2))
    if args.out:
        args.out.write_text(json.dumps({"verdict": verdict, "samples": samples}, indent=2))
    ok = proc.returncode == 0 and verdict["each_request_once"] and verdict["fds_max"] - verdict["fds_min"] <= 4
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
