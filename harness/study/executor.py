"""Where a study's cells run. An executor gets the cells to run and calls back as each one ends;
the study reads every result from the cell's own run folder, never from the executor.

`local` runs them here in turn, each in its own process (`harness.study.cell`): the engine of
one cell is gone, its memory freed, before the next starts, and a cell that crashes cannot take
the study down. `slurm` runs the same command as the tasks of one SLURM job array
(harness/study/slurm_executor.py).
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from harness.errors import HyperbenchError
from harness.study.cell import command
from harness.study.cells import Cell

LOGS_FOLDER = "logs"


class Executor(Protocol):
    def run(self, study_dir: Path, cells: Sequence[Cell], done: Callable[[Cell, int], None]) -> None:
        """Run `cells` (each: `harness.study.cell STUDY_DIR NAME`) and call done(cell, exit code)
        as each ends. Ctrl-C must stop the running cells (they mark their folders) and re-raise."""


def _die_with_parent() -> None:
    # Linux: the cell gets SIGTERM when the study process dies, even by SIGKILL, and then tears
    # its engine down (the engine runs in a session of its own, which a kill of ours never reaches)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class LocalExecutor:
    """In turn, on this machine."""

    def run(self, study_dir: Path, cells: Sequence[Cell], done: Callable[[Cell, int], None]) -> None:
        logs = Path(study_dir) / LOGS_FOLDER
        logs.mkdir(exist_ok=True)
        for cell in cells:
            with open(logs / f"{cell.name}.log", "ab") as log:
                proc = subprocess.Popen(command(study_dir, cell.name), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
                try:
                    rc = proc.wait()
                except KeyboardInterrupt:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                    raise
            done(cell, rc)


def executor(name: str, cfg) -> Executor:
    """The executor `name`, set up from the study's config (`cfg`: a StudyConfig)."""
    if name == "local":
        return LocalExecutor()
    if name == "slurm":
        from harness.study.slurm_executor import SlurmExecutor

        return SlurmExecutor(cfg.slurm, cfg.study.max_parallel, cfg.target.launcher)
    raise HyperbenchError(f"no executor {name!r} (known: local, slurm)")
