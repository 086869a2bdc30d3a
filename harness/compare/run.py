"""`hyperbench compare`: several engines on one workload, side by side.

Two ways in, one report:

- `compare --engines hf,llamacpp:q8_0 --model M --concurrency 1,8 [--launcher docker]` benches
  each engine in turn (one `bench` run folder each, under the comparison folder's runs/), the
  same workload and sweep for all, then writes the comparison.
- `compare RUN1 RUN2 ...` reads finished run folders (their summary.json) and writes the same
  comparison of them.

The comparison folder holds compare.json (canonical, versioned: every run's label, status and
sweep points), report.md (a table per sweep point, accuracy beside speed when score runs are
given) and plots/ (throughput and latency against load, one line per engine and quant).

Run kinds: summary.json says `"kind": "bench"` or `"kind": "score"`. Each kind has one reader in
READERS that turns a run folder into an Entry; score runs feed the accuracy table through
`score_metrics`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.config import SLO, BenchConfig, Load, Output, Target, Workload
from harness.errors import HyperbenchError
from harness.results import SCHEMA_VERSION, RunFolder, slug
from harness.slurm import SlurmJob

# workload fields that must agree for a speed comparison to mean anything
WORKLOAD_KEYS = ("input_len", "output_len", "num_requests", "dataset", "fixed_output", "temperature", "chat")


class CompareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engines: list[str] = Field(default_factory=list, description="Engines to bench in turn: kind[:quant].")
    runs: list[Path] = Field(default_factory=list, description="Finished run folders to compare.")
    engine: dict = Field(default_factory=dict, description="Engine options shared by every engine that has them.")
    target: Target = Field(default_factory=Target)
    workload: Workload = Field(default_factory=Workload)
    load: Load = Field(default_factory=Load)
    slo: SLO = Field(default_factory=SLO)
    output: Output = Field(default_factory=Output)
    executor: Literal["local", "slurm"] = Field("local", description="Where the cells run: one after another "
                                                "here, or each as a task of a SLURM job array.")
    max_parallel: int | None = Field(None, ge=1, description="With --executor slurm: cells running at once "
                                     "(default: as many as the cluster gives).")
    slurm: SlurmJob = Field(default_factory=SlurmJob)

    @field_validator("engines")
    @classmethod
    def _engines(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("an engine is listed twice")
        return v


def build_config(file_data: dict, cli_data: dict) -> CompareConfig:
    """CLI > file > env (HYPERBENCH_LAUNCHER, set by compose/docker-compose.launcher.yml) > defaults."""
    from harness.config import build

    launcher_given = "launcher" in cli_data.get("target", {}) or "launcher" in file_data.get("target", {})
    if not launcher_given and (env := os.environ.get("HYPERBENCH_LAUNCHER")):
        cli_data.setdefault("target", {})["launcher"] = env
    launcher = cli_data.get("target", {}).get("launcher") or file_data.get("target", {}).get("launcher")
    if launcher == "external":  # before the config tree asks for the --url that compare has not
        raise HyperbenchError("compare starts each engine itself: use --launcher process, docker or apptainer "
                              "(bench engines that others run one by one, then compare their run folders)")
    cfg = build(CompareConfig, file_data, cli_data)
    if cfg.engines and cfg.runs:
        raise HyperbenchError("compare needs either --engines (bench them now) or run folders, not both")
    if not cfg.engines and not cfg.runs:
        raise HyperbenchError("nothing to compare: give run folders (hyperbench compare RUN RUN...) or "
                              "--engines to bench now (e.g. --engines hf,llamacpp)")
    return cfg


# ---------------------------------------------------------------------------- benching in turn


def parse_engine(spec: str) -> dict:
    """'llamacpp:q8_0' -> {'kind': 'llamacpp', 'quant': 'q8_0'}."""
    kind, _, quant = spec.strip().partition(":")
    return {"kind": kind, **({"quant": quant} if quant else {})}


def engine_dicts(cfg: CompareConfig) -> list[dict]:
    """Each engine's config dict: its kind and quant, plus the shared options it has (an option no
    listed engine has is an error, not silently dropped)."""
    from backends import engine_class

    out, used = [], set()
    for spec in cfg.engines:
        own = parse_engine(spec)
        fields = engine_class(own["kind"]).model_fields
        if "quant" in own and "quant" not in fields:
            raise HyperbenchError(f"engine {own['kind']} has no quant option ({spec})")
        shared = {k: v for k, v in cfg.engine.items() if k in fields and k not in own}
        used |= shared.keys()
        out.append({**shared, **own})
    unused = set(cfg.engine) - used - {"kind", "quant"}
    if unused:
        raise HyperbenchError(f"--{sorted(unused)[0].replace('_', '-')} is an option of none of "
                              f"the engines compared ({', '.join(cfg.engines)})")
    return out


def label_of(engine: dict) -> str:
    return engine["kind"] + (f":{engine['quant']}" if engine.get("quant") else "")


def run(cfg: CompareConfig, progress=None) -> RunFolder:
    if cfg.runs:
        # every input read (a bench or a score run) before the comparison folder is made: a
        # refused input leaves no empty folder behind
        entries = [read_run(RunFolder.open(p)) for p in cfg.runs]
        folder = RunFolder.create(cfg.output.results_dir, cfg.output.run_name, "compare", "runs")
        write_comparison(folder, entries, plots=cfg.output.plots)
        return folder
    from harness.bench.run import run as bench_run

    engines = engine_dicts(cfg)
    for e in engines:  # every engine config valid before the first one is started
        BenchConfig(engine=e).engine_config()
    model = cfg.engine.get("model", "default-model")
    folder = RunFolder.create(cfg.output.results_dir, cfg.output.run_name, "compare", str(model))
    folder.write_json("config.json", cfg.model_dump(mode="json"))
    runs, cells = [], []
    for engine in engines:
        name = slug(label_of(engine).replace(":", "-"))
        cells.append((name, label_of(engine), BenchConfig(
            engine=engine, target=cfg.target, workload=cfg.workload, load=cfg.load, slo=cfg.slo,
            output=Output(results_dir=folder.path / "runs", run_name=name, plots=cfg.output.plots),
        )))  # fmt: skip
    if cfg.executor == "slurm":  # every cell a task of one job array; failures recorded in jobs/jobs.json
        from harness.slurm_array import run_cells

        run_cells(folder.path, [(label, b) for _, label, b in cells], cfg.slurm, cfg.max_parallel,
                  lambda text: print(text, file=sys.stderr))
    for name, label, bench_cfg in cells:
        if cfg.executor == "local":
            try:
                bench_run(bench_cfg, progress)
            except HyperbenchError as e:
                # one engine failing (cannot start, dies) leaves its run folder marked and the
                # comparison goes on: the report says what happened to it
                print(f"compare: {label} failed: {str(e).splitlines()[0]}", file=sys.stderr)
        path = folder.path / "runs" / name
        if (path / "summary.json").is_file():
            runs.append(RunFolder(path))
    write_comparison(folder, [read_run(r) for r in runs], plots=cfg.output.plots)
    return folder


# ---------------------------------------------------------------------------- reading runs


@dataclass
class Entry:
    """One run folder as the comparison sees it."""

    label: str
    path: Path
    kind: str  # bench | score
    engine: str
    model: str
    quant: str | None
    status: str
    reason: str | None = None
    workload: dict = field(default_factory=dict)
    points: list[dict] = field(default_factory=list)  # bench
    metrics: dict[str, float] = field(default_factory=dict)  # score: "task/metric" -> value
    engine_memory: dict = field(default_factory=dict)  # the engine's own view: weight / KV-cache bytes

    def key(self) -> tuple:
        return (self.engine, self.model, self.quant)


def _common(run: RunFolder, summary: dict) -> dict:
    cfg = _read_optional(run, "config.json") or {}
    engine = cfg.get("engine") or {}
    info = summary.get("engine_info") or {}
    quant = engine.get("quant") or info.get("quantization")
    kind = summary.get("engine") or engine.get("kind") or "?"
    if kind == "external" and info.get("engine"):  # benched through --url: the engine said who it is
        kind = f"{info['engine']} (external)"
    return dict(
        path=run.path, engine=str(kind),
        model=str(summary.get("model") or engine.get("model") or "?"),
        quant=str(quant) if quant not in (None, "none") else None,
        status=str(summary.get("status", "?")), reason=summary.get("reason"),
        workload=cfg.get("workload") or {},
    )  # fmt: skip


def read_bench(run: RunFolder, summary: dict) -> Entry:
    info = summary.get("engine_info") or {}
    memory = {k: info[k] for k in ("weight_bytes", "kv_cache_bytes") if _number(info.get(k))}
    return Entry(label="", kind="bench", points=list(summary.get("points") or []), engine_memory=memory,
                 **_common(run, summary))


def score_metrics(summary: dict) -> dict[str, float]:
    """Accuracy numbers of a score run, as {"task/metric": value}.

    Reads `hyperbench score`'s summary.json (`tasks` and `groups`, each metric a {value, stderr}),
    and also two shapes of other tools' files: `"metrics": {"gsm8k/exact_match": 0.41}` (flat) and
    `"results": {"gsm8k": {"exact_match,none": 0.41}}` (lm-eval's own). Non-numeric values and
    stderr entries are left out.
    """
    out: dict[str, float] = {}
    # hyperbench score's summary.json: {"tasks"|"groups": {name: {"metrics": {m: {"value", "stderr"}}}}}
    groups = summary.get("groups") or {}
    # a group's member tasks (mmlu: 57 subjects) stay in the score run's report: the group's rows here
    members = {t for g in groups.values() if isinstance(g, dict) for t in g.get("subtasks") or []}
    for section in ("tasks", "groups"):
        for task, entry in (summary.get(section) or {}).items():
            if task in members:
                continue
            for name, m in ((entry or {}).get("metrics") or {}).items():
                if isinstance(m, dict) and _number(m.get("value")):
                    out[f"{task}/{name}"] = float(m["value"])
    flat = summary.get("metrics")
    if isinstance(flat, dict):
        out.update({str(k): float(v) for k, v in flat.items() if _number(v)})
    nested = summary.get("results")
    if isinstance(nested, dict):
        for task, metrics in nested.items():
            if isinstance(metrics, dict):
                for name, v in metrics.items():
                    if _number(v) and "stderr" not in str(name):
                        out[f"{task}/{str(name).split(',')[0]}"] = float(v)
    return out


def read_score(run: RunFolder, summary: dict) -> Entry:
    return Entry(label="", kind="score", metrics=score_metrics(summary), **_common(run, summary))


READERS = {"bench": read_bench, "score": read_score}


def read_run(run: RunFolder) -> Entry:
    summary = run.summary()
    kind = summary.get("kind", "bench")
    reader = READERS.get(kind)
    if reader is None:
        raise HyperbenchError(f"{run.path}: compare reads bench and score runs, not {kind!r} runs")
    return reader(run, summary)


def label_entries(entries: list[Entry]) -> None:
    """engine[:quant], with the model when models differ, and the folder name when still ambiguous."""
    models = {e.model for e in entries}
    for e in entries:
        e.label = e.engine + (f":{e.quant}" if e.quant else "")
        if len(models) > 1:
            e.label += f" / {Path(e.model).name}"
    seen: dict[tuple, int] = {}
    for e in entries:
        k = (e.kind, e.label)
        seen[k] = seen.get(k, 0) + 1
    for e in entries:
        if seen[(e.kind, e.label)] > 1:
            e.label += f" ({e.path.name})"


# ---------------------------------------------------------------------------- the comparison


def write_comparison(folder: RunFolder, entries: list[Entry], plots: bool = True) -> dict:
    label_entries(entries)
    data = {
        "schema_version": SCHEMA_VERSION,
        "kind": "compare",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": [
            {"label": e.label, "path": _rel(e.path, folder.path), "kind": e.kind, "engine": e.engine,
             "model": e.model, "quant": e.quant, "status": e.status, "reason": e.reason,
             **({"points": e.points} if e.kind == "bench" else {"metrics": e.metrics})}
            for e in entries
        ],
        "workload_mismatch": workload_mismatch([e for e in entries if e.kind == "bench"]),
    }  # fmt: skip
    folder.write_json("compare.json", data)
    made = write_plots(folder, [e for e in entries if e.kind == "bench"]) if plots else []
    from harness.results import atomic_write_text

    atomic_write_text(folder.file("report.md"), render(entries, data, made))
    return data


def workload_mismatch(entries: list[Entry]) -> dict[str, list]:
    """Workload settings that differ between bench runs (a comparison of unlike runs is flagged)."""
    out = {}
    for key in WORKLOAD_KEYS:
        values = {str(e.workload.get(key)) for e in entries if e.workload}
        if len(values) > 1:
            out[key] = sorted(values)
    return out


SPEED_COLUMNS = (
    ("out tok/s", lambda p: p.get("output_throughput")),
    ("req/s", lambda p: p.get("request_throughput")),
    ("TTFT p50", lambda p: _d(p, "ttft_ms", "p50")),
    ("TTFT p99", lambda p: _d(p, "ttft_ms", "p99")),
    ("TPOT p50", lambda p: _d(p, "tpot_ms", "p50")),
    ("TPOT p99", lambda p: _d(p, "tpot_ms", "p99")),
    ("E2E p50", lambda p: _d(p, "e2e_ms", "p50")),
    ("E2E p99", lambda p: _d(p, "e2e_ms", "p99")),
)


def render(entries: list[Entry], data: dict, plots: list[str]) -> str:
    from harness.compare.gpu import gpu_table
    from harness.bench.report import fmt, point_label

    bench = [e for e in entries if e.kind == "bench"]
    score = [e for e in entries if e.kind == "score"]
    lines = ["# hyperbench compare", ""]
    lines += ["| run | kind | engine | quant | model | status | folder |", "|---|---|---|---|---|---|---|"]
    for e in entries:
        status = e.status + (f": {str(e.reason).splitlines()[0][:120]}" if e.reason else "")
        lines.append(f"| {e.label} | {e.kind} | {e.engine} | {e.quant or '-'} | {e.model} | {status} | "
                     f"`{_rel(e.path, None)}` |")
    if bench:
        w = bench[0].workload
        lines += ["", f"Workload: input {w.get('input_len')} tokens, output {w.get('output_len')} tokens"
                  f"{' (fixed)' if w.get('fixed_output') else ''}, {w.get('num_requests')} requests per "
                  f"point. Latencies in ms; throughput in tokens or requests per second."]
    if data["workload_mismatch"]:
        lines += ["", "> **The runs' workloads differ**, so their numbers are not directly comparable: "
                  + "; ".join(f"{k}: {', '.join(v)}" for k, v in data["workload_mismatch"].items())]
    for point in _points(bench):
        lines += ["", f"## {point_label(point)}", "",
                  "| run | ok/total | " + " | ".join(c for c, _ in SPEED_COLUMNS) + " |",
                  "|" + "---|" * (len(SPEED_COLUMNS) + 2)]
        best = _best(bench, point)
        for e in bench:
            p = _find(e, point)
            if p is None:
                lines.append(f"| {e.label} | - |" + " - |" * len(SPEED_COLUMNS))
                continue
            cells = []
            for name, f in SPEED_COLUMNS:
                v = f(p)
                cells.append(f"**{fmt(v)}**" if v is not None and best.get(name) == v else fmt(v))
            ok = f"{p.get('completed', 0)}/{p.get('requests', 0)}" + (" (partial)" if p.get("partial") else "")
            lines.append(f"| {e.label} | {ok} | " + " | ".join(cells) + " |")
    if bench:
        lines += ["", "Best per column in bold (highest throughput, lowest latency)."]
        lines += gpu_table(bench)
    if score:
        lines += ["", "## Accuracy" + (" beside speed" if bench else ""), ""] + _accuracy(bench, score)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}](plots/{p})" for p in plots]
    return "\n".join(lines) + "\n"


def _accuracy(bench: list[Entry], score: list[Entry]) -> list[str]:
    """One row per score run; the matching bench run's (same engine, model, quant) peak output
    throughput and lowest-load TPOT beside it."""
    from harness.bench.report import fmt

    metrics = sorted({m for e in score for m in e.metrics})
    speed = {e.key(): e for e in bench}
    head = ["run", *metrics, "out tok/s (peak)", "TPOT p50 (lowest load)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in score:
        b = speed.get(e.key())
        done = [p for p in (b.points if b else []) if p.get("completed")]
        peak = max((p.get("output_throughput") or 0 for p in done), default=None)
        tpot = _d(done[0], "tpot_ms", "p50") if done else None
        rows.append("| " + " | ".join([e.label, *[fmt(e.metrics.get(m)) for m in metrics], fmt(peak), fmt(tpot)]) + " |")
    if not metrics:
        rows.append("\n(no accuracy numbers found in these score runs' summary.json: see "
                    "`harness.compare.run.score_metrics`)")
    return rows


def _d(point: dict, key: str, stat: str):
    d = point.get(key)
    return d.get(stat) if isinstance(d, dict) else None


def _load_of(point: dict) -> tuple[str, float] | None:
    for k in ("concurrency", "rate", "trace"):
        if k in point:
            v = point[k]
            return k, math.inf if v == "inf" else float(v)
    return None


def _points(entries: list[Entry]) -> list[dict]:
    """Every sweep point any run has, in order (kind, value)."""
    seen: dict[tuple, dict] = {}
    for e in entries:
        for p in e.points:
            if (k := _load_of(p)) is not None:
                seen.setdefault(k, p)
    return [seen[k] for k in sorted(seen)]


def _find(e: Entry, point: dict) -> dict | None:
    want = _load_of(point)
    return next((p for p in e.points if _load_of(p) == want), None)


def _best(entries: list[Entry], point: dict) -> dict:
    best = {}
    for name, f in SPEED_COLUMNS:
        values = [v for e in entries if (p := _find(e, point)) and p.get("completed") and not p.get("partial")
                  and (v := f(p)) is not None]
        if len(values) > 1:
            best[name] = max(values) if ("tok/s" in name or "req/s" in name) else min(values)
    return best


def write_plots(folder: RunFolder, entries: list[Entry]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for e in entries:
        pts = [(lk, p) for p in e.points if p.get("completed") and (lk := _load_of(p)) is not None]
        if pts:
            series.append((e.label, pts))
    if not series:
        return []
    kind = series[0][1][0][0][0]
    finite = [lk[1] for _, pts in series for lk, _ in pts if math.isfinite(lk[1])]
    top = max(finite) * 2 if finite else 1.0
    out = folder.path / "plots"
    out.mkdir(exist_ok=True)

    def xs(pts):
        return [lk[1] if math.isfinite(lk[1]) else top for lk, _ in pts]

    has_inf = any(not math.isfinite(lk[1]) for _, pts in series for lk, _ in pts)

    def scale(ax):  # concurrency 1, 8, 64...: evenly spaced on a log axis
        if finite and min(finite) > 0 and max(finite) / min(finite) >= 4:
            ax.set_xscale("log", base=2)
        if has_inf:  # rate=inf sits at `top`: its tick says inf
            from harness.bench.report import tick_inf

            tick_inf(ax, finite, top)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for label, pts in series:
        axes[0].plot(xs(pts), [p.get("output_throughput") for _, p in pts], marker="o", label=label)
        axes[1].plot(xs(pts), [p.get("request_throughput") for _, p in pts], marker="o", label=label)
    for ax, title in zip(axes, ("output tokens/s", "requests/s")):
        ax.set_title(title)
        ax.set_xlabel(kind)
        scale(ax)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "compare_throughput.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (key, title) in zip(axes, (("ttft_ms", "TTFT p50 (ms)"), ("tpot_ms", "TPOT p50 (ms)"),
                                       ("e2e_ms", "E2E p50 (ms)"))):
        for label, pts in series:
            ax.plot(xs(pts), [_d(p, key, "p50") for _, p in pts], marker="o", label=label)
        ax.set_title(title)
        ax.set_xlabel(kind)
        scale(ax)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "compare_latency.png", dpi=100)
    plt.close(fig)
    return ["compare_throughput.png", "compare_latency.png"]


def _read_optional(run: RunFolder, name: str):
    try:
        return run.read_json(name)
    except HyperbenchError:  # missing or torn: a killed run may lack it
        return None


def _rel(path: Path, base: Path | None) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(base or Path.cwd()).resolve()))
    except ValueError:
        return str(path)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
