"""A run folder read as what every tracker takes: params, stepped metrics, tags and artifact files.

One reader per run kind, all from summary.json (canonical) and config.json (the resolved config):
bench logs one step per sweep point, score one metric per task and lm-eval metric, tune one step
per trial, agree one metric per engine and agreement number, compare each run's points (or
scores) under its label; every kind logs its report, plots and JSON files as artifacts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HyperbenchError
from harness.results import RunFolder

# the run folder's own views and canonical files; records.jsonl can be large and is left out
ARTIFACTS = ("summary.json", "compare.json", "config.json", "env.json", "engine.json", "report.md", "plan.json",
             "selection.json", "lm_eval_results.json")
POINT_STATS = ("p50", "p90", "p99", "mean")


@dataclass
class Metric:
    key: str
    value: float
    step: int


@dataclass
class ExportRun:
    path: Path
    name: str
    kind: str
    params: dict[str, str]  # the resolved config, flattened: engine.kind -> "hf"
    config: dict  # the same config as a tree, typed (trackers that take one)
    tags: dict[str, str]
    metrics: list[Metric] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)  # relative to path


def read_run(path: Path) -> ExportRun:
    path = Path(path)
    if not path.is_dir():
        raise HyperbenchError(f"{path} is not a run folder (no such folder)")
    canonical = "compare.json" if (path / "compare.json").is_file() else "summary.json"
    if not (path / canonical).is_file():
        raise HyperbenchError(f"{path} is not a run folder (no summary.json)")
    # summary(): refuses another schema version; a compare folder has compare.json instead
    summary = RunFolder.open(path).summary() if canonical == "summary.json" else RunFolder(path).read_json(canonical)
    kind = summary.get("kind")
    if kind not in READERS:
        raise HyperbenchError(f"{path} is not a run folder hyperbench can export "
                              f"(kind {kind!r}; one of {', '.join(READERS)})")
    config = _read_optional(path / "config.json")
    run = ExportRun(
        path=path, name=path.name, kind=kind, params=flatten(config), config=config,
        tags={k: str(summary[k]) for k in ("kind", "status", "engine", "model", "started") if summary.get(k)},
    )
    if kind == "compare":  # compare.json is written once, when the comparison is done
        run.tags.setdefault("status", "complete")
    run.metrics = [m for m in READERS[kind](summary) if _finite(m.value)]
    run.artifacts = [p.relative_to(path) for p in _artifact_files(path)]
    return run


def _read_optional(file: Path) -> dict:
    from harness.results import read_json

    return read_json(file) if file.is_file() else {}


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """{'engine': {'kind': 'hf'}} -> {'engine.kind': 'hf'}: trackers take flat string params."""
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = "" if v is None else str(v)
    return out


def metric_key(*parts: str) -> str:
    """MLflow accepts letters, digits, _ - . / and spaces in a key; W&B takes the same key as is."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", "/".join(parts))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bench(summary: dict) -> list[Metric]:
    out = []
    for step, point in enumerate(summary.get("points") or []):
        for k, v in point.items():
            if _finite(v):
                out.append(Metric(metric_key(k), float(v), step))  # concurrency / rate, throughputs
            elif isinstance(v, dict) and k.endswith("_ms"):
                out += [Metric(metric_key(k, s), float(v[s]), step) for s in POINT_STATS if _finite(v.get(s))]
    return out


def _score(summary: dict) -> list[Metric]:
    out = []
    for task, entry in (summary.get("tasks") or {}).items():
        for name, m in (entry.get("metrics") or {}).items():
            value = m.get("value") if isinstance(m, dict) else m
            if _finite(value):
                out.append(Metric(metric_key(task, name), float(value), 0))
            if isinstance(m, dict) and _finite(m.get("stderr")):
                out.append(Metric(metric_key(task, name + "_stderr"), float(m["stderr"]), 0))
    return out


def _tune(summary: dict) -> list[Metric]:
    out = []
    for trial in summary.get("trials") or []:
        step = int(trial.get("index", len(out)))
        out += [Metric(metric_key("param", k), float(v), step)
                for k, v in (trial.get("params") or {}).items() if _finite(v)]
        out += [Metric(metric_key(k), float(v["mean"]), step)
                for k, v in (trial.get("metrics") or {}).items() if _finite((v or {}).get("mean"))]
    return out


def _agree(summary: dict) -> list[Metric]:
    """Each engine against the reference: greedy, prompt-logprob and next-token numbers."""
    out = []
    for label, numbers in (summary.get("agreement") or {}).items():
        for section, values in numbers.items():
            if isinstance(values, dict):
                out += [Metric(metric_key(label, section, k), float(v), 0) for k, v in values.items() if _finite(v)]
    return out


def _compare(data: dict) -> list[Metric]:
    """Each compared run under its label: bench points as steps, score metrics at step 0."""
    out = []
    for r in data.get("runs") or []:
        label = r.get("label", "?")
        points = {"points": r["points"]} if r.get("points") else None
        out += [Metric(metric_key(label, m.key), m.value, m.step) for m in _bench(points or {})]
        out += [Metric(metric_key(label, k), float(v), 0) for k, v in (r.get("metrics") or {}).items() if _finite(v)]
    return out


def _artifact_files(path: Path) -> list[Path]:
    files = [path / n for n in ARTIFACTS if (path / n).is_file()]
    return files + sorted((path / "plots").glob("*.png"))


READERS = {"bench": _bench, "score": _score, "tune": _tune, "agree": _agree, "compare": _compare}
