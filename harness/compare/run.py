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

from harness.compare.plots import write_plots
from harness.compare.report import relative_path, render, workload_mismatch
from harness.config import SLO, BenchConfig, Load, Output, Target, Workload
from harness.errors import HyperbenchError
from harness.compare.repeats import run_interleaved, significance, significance_section
from harness.results import SCHEMA_VERSION, RunFolder, slug
from harness.summary_schema import BenchSummary, ScoreSummary, Summary
from harness.slurm import SlurmJob


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
    from harness.launchers import LAUNCHERS

    launcher_given = "launcher" in cli_data.get("target", {}) or "launcher" in file_data.get("target", {})
    if not launcher_given and (env := os.environ.get("HYPERBENCH_LAUNCHER")):
        cli_data.setdefault("target", {})["launcher"] = env
    launcher = cli_data.get("target", {}).get("launcher") or file_data.get("target", {}).get("launcher")
    if launcher in LAUNCHERS and not LAUNCHERS[launcher].can_restart:  # before the config tree asks for the --url
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
    if cfg.executor == "local" and cfg.load.repeats > 1:  # A rep 1, B rep 1, A rep 2, ...
        run_interleaved(cells, cfg.load.repeats, bench_run, progress)
    for name, label, bench_cfg in cells:
        if cfg.executor == "local" and cfg.load.repeats == 1:
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


def _common(run: RunFolder, summary: Summary) -> dict:
    cfg = _read_optional(run, "config.json") or {}
    engine = cfg.get("engine") or {}
    info = summary.engine_info or {}
    quant = engine.get("quant") or info.get("quantization")
    kind = summary.engine or engine.get("kind") or "?"
    if kind == "external" and info.get("engine"):  # benched through --url: the engine said who it is
        kind = f"{info['engine']} (external)"
    return dict(
        path=run.path, engine=str(kind),
        model=str(summary.model or engine.get("model") or "?"),
        quant=str(quant) if quant not in (None, "none") else None,
        status=summary.status or "?", reason=summary.reason,
        workload=cfg.get("workload") or {},
    )  # fmt: skip


def read_bench(run: RunFolder, summary: BenchSummary) -> Entry:
    info = summary.engine_info or {}
    memory = {k: info[k] for k in ("weight_bytes", "kv_cache_bytes") if _number(info.get(k))}
    points = [p.model_dump(exclude_unset=True) for p in summary.points]  # as written: the tables' view
    return Entry(label="", kind="bench", points=points, engine_memory=memory, **_common(run, summary))


def score_metrics(summary: ScoreSummary | dict) -> dict[str, float]:
    """Accuracy numbers of a score run, as {"task/metric": value}.

    Reads `hyperbench score`'s summary.json (`tasks` and `groups`, each metric a {value, stderr}),
    and also two shapes of other tools' files: `"metrics": {"gsm8k/exact_match": 0.41}` (flat) and
    `"results": {"gsm8k": {"exact_match,none": 0.41}}` (lm-eval's own). Non-numeric values and
    stderr entries are left out.
    """
    if isinstance(summary, dict):  # a summary read by someone's script
        summary = ScoreSummary.model_validate(summary)
    out: dict[str, float] = {}
    # hyperbench score's summary.json: {"tasks"|"groups": {name: {"metrics": {m: {"value", "stderr"}}}}}
    # a group's member tasks (mmlu: 57 subjects) stay in the score run's report: the group's rows here
    members = {t for g in summary.groups.values() for t in g.subtasks}
    for section in (summary.tasks, summary.groups):
        for task, entry in section.items():
            if task in members:
                continue
            for name, m in entry.metrics.items():
                if _number(m.value):
                    out[f"{task}/{name}"] = float(m.value)
    extra = summary.model_extra or {}  # other tools' shapes, kept as written
    flat = extra.get("metrics")
    if isinstance(flat, dict):
        out.update({str(k): float(v) for k, v in flat.items() if _number(v)})
    nested = extra.get("results")
    if isinstance(nested, dict):
        for task, metrics in nested.items():
            if isinstance(metrics, dict):
                for name, v in metrics.items():
                    if _number(v) and "stderr" not in str(name):
                        out[f"{task}/{str(name).split(',')[0]}"] = float(v)
    return out


def read_score(run: RunFolder, summary: ScoreSummary) -> Entry:
    return Entry(label="", kind="score", metrics=score_metrics(summary), **_common(run, summary))


READERS = {"bench": read_bench, "score": read_score}


def read_run(run: RunFolder) -> Entry:
    summary = run.typed_summary()
    kind = summary.kind
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
            {"label": e.label, "path": relative_path(e.path, folder.path), "kind": e.kind, "engine": e.engine,
             "model": e.model, "quant": e.quant, "status": e.status, "reason": e.reason,
             **({"points": e.points} if e.kind == "bench" else {"metrics": e.metrics})}
            for e in entries
        ],
        "workload_mismatch": workload_mismatch([e for e in entries if e.kind == "bench"]),
        "significance": significance(entries),  # runs with repeats: Welch's t between each pair
    }  # fmt: skip
    folder.write_json("compare.json", data)
    made = write_plots(folder, [e for e in entries if e.kind == "bench"]) if plots else []
    from harness.results import atomic_write_text

    atomic_write_text(folder.file("report.md"), render(entries, data, made))
    return data

def _read_optional(run: RunFolder, name: str):
    try:
        return run.read_json(name)
    except HyperbenchError:  # missing or torn: a killed run may lack it
        return None



def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
