"""`study --executor slurm`: every missing cell is a task of one SLURM job array (the array
machinery of `compare --executor slurm`, harness/slurm_array.py), running the same line the local
executor runs (`python -m harness.study.cell STUDY_DIR CELL`), all at once up to --max-parallel.

The study folder is a local study's: each cell writes its run folder under cells/ on the shared
filesystem, and its task's log becomes logs/<cell>.log, where the verdict looks for a failed
cell's error. A cell whose task fails or is cancelled is recorded with the task's state (jobs/
jobs.json, as compare's), the others finish.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.slurm import SlurmJob
from harness.slurm_array import follow, python_on_node, submit_array, task_record
from harness.study.cells import Cell
from harness.study.executor import LOGS_FOLDER


def _exit_code(rec: dict) -> int:
    """SLURM's ExitCode is 'code:signal'; a task stopped from outside (cancelled: 0:15) or one
    that never wrote it is not a success."""
    code, _, sig = (rec.get("exit_code") or "1:0").partition(":")
    if rec["state"] == "COMPLETED":
        return 0
    return int(code) if code.isdigit() and int(code) else 128 + (int(sig) if sig.isdigit() and int(sig) else 1)


class SlurmExecutor:
    def __init__(self, job: SlurmJob, max_parallel: int | None, launcher: str, poll_s: float = 1.0):
        self.job, self.max_parallel, self.launcher, self.poll_s = job, max_parallel, launcher, poll_s

    def run(self, study_dir: Path, cells: Sequence[Cell], done: Callable[[Cell, int], None]) -> None:
        if not cells:
            return
        study_dir = Path(study_dir).resolve()
        jobs_dir, logs = study_dir / "jobs", study_dir / LOGS_FOLDER
        jobs_dir.mkdir(exist_ok=True)
        logs.mkdir(exist_ok=True)
        for i, cell in enumerate(cells):  # the task's cell, by its index
            (jobs_dir / f"{i}.cell").write_text(cell.name)
        # the engines whose SIF a task needs (an agree cell starts two)
        kinds = sorted({str(e).split(":")[0] for c in cells
                        for e in [c.config.get("engine", {}).get("kind"), *c.config.get("engines", [])] if e}) \
            if self.launcher == "apptainer" else []
        command = f'{python_on_node(self.job)} -m harness.study.cell {shlex.quote(str(study_dir))} ' \
                  '"$(cat "$SLURM_ARRAY_TASK_ID.cell")"'
        array = submit_array(jobs_dir, list(range(len(cells))), self.job, self.max_parallel, kinds,
                             self.job.job_name or "hyperbench-study", command,
                             "hyperbench study --executor slurm: one task per cell (jobs/<i>.cell names it).")
        echo = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
        echo(f"study: job array {array}, {len(cells)} cells"
             + (f", at most {self.max_parallel} at once" if self.max_parallel else ""))
        tasks = follow(array, {i: c.name for i, c in enumerate(cells)}, echo, "study", self.poll_s,
                       f"; then: hyperbench study --resume {study_dir}")
        records = []
        for i, cell in enumerate(cells):
            rec = task_record(jobs_dir, array, i, cell.name, tasks[i])
            if Path(rec["log"]).is_file():
                shutil.copyfile(rec["log"], logs / f"{cell.name}.log")
            records.append(rec)
            done(cell, _exit_code(rec))
        (jobs_dir / "jobs.json").write_text(json.dumps(records, indent=2))
