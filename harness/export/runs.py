"""A run folder read as what every tracker takes: params, stepped metrics, tags and artifact files.

One reader per run kind, all from summary.json (canonical) and config.json (the resolved config):
bench logs one step per sweep point, score one metric per task and lm-eval metric, tune one step
per trial; every kind logs its report, plots and JSON files as artifacts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HyperbenchError
from harness.results import RunFolder

# the run folder's own views and canonical files; records.jsonl can be large and is left out
ARTIFACTS = ("summary.json", "config.json", "env.json", "engine.json", "report.md", "plan.json",
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
    if not (path / "summary.json").is_file():
        raise HyperbenchError(f"{path} is not a run folder (no summary.json)")
    summary = RunFolder.open(path).summary()  # checks the schema version
    kind = summary.get("kind")
    if kind not in READERS:
        raise HyperbenchError(f"{path} is not a run folder hyperbench can export "
                              f"(kind {kind!r}; one of {', '.join(READERS)})")
    config = _read_optional(path / "config.json")
    run = ExportRun(
        path=path, name=path.name, kind=kind, params=flatten(config), config=config,
        tags={k: str(summary[k]) for k in ("kind", "status", "engine", "model", "started") if summary.get(k)},
    )
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


def _artifact_files(path: Path) -> list[Path]:
    files = [path / n for n in ARTIFACTS if (path / n).is_file()]
    return files + sorted((path / "plots").glob("*.png"))


READERS = {"bench": _bench, "score": _score, "tune": _tune}
