"""`hyperbench study`: plan the cells, run the missing ones through the executor, write the verdict.

Study folder: config.json (resolved, with the reference), env.json, plan.json (every cell's job
and config), tasks/ (the task YAMLs the plan checked), cells/<cell>/ (ordinary run folders of
bench/score/agree/tune: `compare` reads them), logs/<cell>.log (each cell's output),
summary.json (kind "study", canonical: every cell's status and the verdict), report.md, plots/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.errors import HyperbenchError
from harness.results import SCHEMA_VERSION, RunFolder, read_json
from harness.run_lifecycle import interruption, now, reopen, start_run, write_config
from harness.study.cells import PLANNED, Cell, load_plan, plan_cells, task_kinds
from harness.study.config import StudyConfig
from harness.study.executor import executor
from harness.study.variants import parse_variants


def run(cfg: StudyConfig, echo=lambda line: None) -> RunFolder:
    if cfg.output.resume is not None:
        return resume(cfg.output.resume, echo)
    s = cfg.study
    variants = parse_variants(s.variants, cfg.engine, cfg.target.launcher_class)
    ref = cfg.reference()
    if ref not in s.variants:
        raise HyperbenchError(f"--reference {ref} is not one of --variants ({', '.join(s.variants)})")
    if not cfg.target.launcher_class.can_restart:
        raise HyperbenchError("study starts each variant itself: use --launcher process, docker or apptainer")
    runner = executor(s.executor, cfg)
    model = str(cfg.engine.get("model") or variants[0].engine.get("model") or "model")
    folder, summary = start_run(cfg.output, "study", model, "study", model=model, reference=ref,
                                variants=s.variants, executor=s.executor)
    try:
        kinds = task_kinds(s.tasks, s.data_dir, folder.path / "tasks")
        cells = plan_cells(cfg, variants, folder.path, kinds)
    except BaseException:  # bad input before anything ran: leave no empty study folder behind
        shutil.rmtree(folder.path, ignore_errors=True)
        raise
    write_config(folder, {**cfg.model_dump(mode="json"), "reference": ref})
    folder.write_json("plan.json", {"schema_version": SCHEMA_VERSION, "cells": [c.to_json() for c in cells]})
    return _execute(folder, summary, runner, echo)


def resume(path: Path, echo=lambda line: None) -> RunFolder:
    folder = RunFolder.open(path)
    summary = folder.read_json("summary.json")
    if summary.get("kind") != "study":
        raise HyperbenchError(f"{folder.path} is not a study (kind {summary.get('kind')!r})")
    reopen(summary)
    saved = folder.read_json("config.json")
    saved.pop("reference", None)
    cfg = StudyConfig(**{k: v for k, v in saved.items() if k != "output"})
    return _execute(folder, summary, executor(summary.get("executor", "local"), cfg), echo)


def _finished(cell: Cell, study_dir: Path) -> bool:
    """Only a complete cell is kept: one killed mid-run, failed or never started runs (again)."""
    try:
        return read_json(cell.folder(study_dir) / "summary.json").get("status") == "complete"
    except HyperbenchError:
        return False


def _execute(folder: RunFolder, summary: dict, runner, echo) -> RunFolder:
    from harness.study.report import write_report

    cells = load_plan(folder.path)
    todo = [c for c in cells if c.status == PLANNED and not _finished(c, folder.path)]
    for c in todo:  # a cell killed mid-run starts again from nothing: its job's folder is its own
        if c.folder(folder.path).exists():
            shutil.rmtree(c.folder(folder.path))
    summary.update(status="running", cells_run=[c.name for c in todo])
    folder.write_json("summary.json", summary)
    skipped = [c for c in cells if c.status != PLANNED]
    for c in skipped:
        echo(f"{c.name}: skipped: {c.reason}")

    def done(cell: Cell, rc: int) -> None:
        from harness.study.verdict import cell_status

        status, reason = cell_status(cell, folder.path)
        if rc != 0 and status == "complete":
            status = "failed"
        echo(f"{cell.name}: {status}" + (f": {reason}" if reason and status != "complete" else ""))

    try:
        runner.run(folder.path, todo, done)
    except KeyboardInterrupt:
        cut = interruption(summary, "study", folder, "finished cells", "run only the missing ones")
        summary["finished"] = now()
        write_report(folder, summary)  # it writes summary.json, with the verdict of the cells kept
        raise cut from None
    from harness.study.verdict import cell_status

    bad = [(c.name, *cell_status(c, folder.path)) for c in cells if c.status == PLANNED]
    bad = [b for b in bad if b[1] != "complete"]
    summary["status"] = "incomplete" if bad else "complete"
    if bad:
        summary["reason"] = f"{len(bad)} cell(s) did not complete: " + ", ".join(f"{n} ({s})" for n, s, _ in bad)
    else:
        summary.pop("reason", None)
    summary["finished"] = now()
    write_report(folder, summary)
    return folder

