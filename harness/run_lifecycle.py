"""The start and end that bench, score and tune runs share: the run folder named for the engine,
the summary header, the resolved config and environment beside the results, the closing write.

A job keeps what is its own (its scenario, its interruption message, its report); agree writes
its own config.json (every engine's resolved config) and so only uses `now`.
"""

from __future__ import annotations

import time

from harness import envinfo
from harness.results import SCHEMA_VERSION, RunFolder


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def run_label(cfg, engine) -> str:
    """The run's engine: its kind, or "external" for an engine someone else runs (whose kind the
    harness does not know; its /v1/engine may say, see compare)."""
    return engine.kind if cfg.target.launcher_class.starts_engine else "external"


def create_run(cfg, engine, kind: str, prefix: str = "") -> tuple[RunFolder, dict]:
    """A new run folder (--results-dir/--run-name, else a dated name of prefix+engine and model)
    and its summary, status running."""
    label = run_label(cfg, engine)
    run_dir = RunFolder.create(cfg.output.results_dir, cfg.output.run_name, prefix + label, engine.model)
    summary = {"schema_version": SCHEMA_VERSION, "kind": kind, "status": "running", "started": now(),
               "engine": label, "model": engine.model}
    return run_dir, summary


def write_resolved(run_dir: RunFolder, cfg, engine) -> None:
    """config.json (the config as resolved, the engine's defaults filled in, no API key) and
    env.json: what the results were measured with, saved beside them."""
    resolved = cfg.model_dump(mode="json")
    resolved["engine"] = engine.model_dump(mode="json", exclude={"api_key"})
    run_dir.write_json("config.json", resolved)
    run_dir.write_json("env.json", envinfo.capture())


def close_summary(run_dir: RunFolder, summary: dict) -> None:
    """The last write of a run's summary, however it ended: finished, and no writer any more."""
    summary.pop("process", None)
    summary["finished"] = now()
    run_dir.write_json("summary.json", summary)
