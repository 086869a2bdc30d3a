"""One cell in its own process: `python -m harness.study.cell STUDY_DIR CELL_NAME`.

This is the whole contract between a study and an executor: the local executor runs this line
in turn; the SLURM executor puts the same line in each task of a job array. The cell's job is called
through its own Python entry point with the config the plan holds, so the cell's run folder is
exactly what `hyperbench bench/score/agree/tune` would have written.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from harness.errors import HyperbenchError


def _bench(config: dict):
    from harness.bench.run import run
    from harness.config import BenchConfig

    return run(BenchConfig(**config))


def _score(config: dict):
    from harness.score.config import ScoreConfig
    from harness.score.run import run

    return run(ScoreConfig(**config))


def _agree(config: dict):
    from harness.agree.config import build_config
    from harness.agree.run import run

    return run(build_config({}, config))


def _tune(config: dict):
    from harness.tune.config import TuneConfig
    from harness.tune.run import run

    return run(TuneConfig(**config), echo=lambda line: print(line, flush=True))


JOBS = {"bench": _bench, "score": _score, "agree": _agree, "tune": _tune}


def command(study_dir: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "harness.study.cell", str(study_dir), name]


def run_cell(study_dir: Path, name: str) -> Path:
    from harness.study.cells import load_plan

    cell = next((c for c in load_plan(study_dir) if c.name == name), None)
    if cell is None:
        raise HyperbenchError(f"{study_dir}: no cell named {name!r} in its plan")
    return JOBS[cell.job](cell.config).path


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # unwind: the job tears its engine down and marks its folder


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _sigterm)
    if len(argv) != 2:
        print("usage: python -m harness.study.cell STUDY_DIR CELL_NAME", file=sys.stderr)
        return 2
    try:
        print(f"cell folder: {run_cell(Path(argv[0]), argv[1])}", flush=True)
    except HyperbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print(str(e) or "interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug of a job: the cell fails with its reason, the study goes on
        import traceback

        traceback.print_exc()
        reason = f"cell crashed: {type(e).__name__}: {e}"
        _mark_failed(Path(argv[0]), argv[1], reason)
        print(f"error: {reason}", file=sys.stderr)
        return 1
    return 0


def _mark_failed(study_dir: Path, name: str, reason: str) -> None:
    """A job that crashed left its summary.json 'running': say failed, and why."""
    from harness.results import atomic_write_json, read_json
    from harness.study.cells import CELLS_FOLDER

    path = study_dir / CELLS_FOLDER / name / "summary.json"
    try:
        summary = read_json(path)
    except HyperbenchError:
        return
    if summary.get("status") == "running":
        atomic_write_json(path, {**summary, "status": "failed", "reason": reason})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
