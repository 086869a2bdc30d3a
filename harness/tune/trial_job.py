"""One tune trial as a batch job: `python -m harness.tune.trial_job RUN_DIR INDEX`, or the held-out
phase: `python -m harness.tune.trial_job RUN_DIR holdout`.

What `tune --executor slurm` puts in each task of its job arrays. The job reads the run folder's
saved config and plan and the trial's parameters (trials/<i>/trial.json, written by the
controlling process before it submitted), starts its own engine (its log in trials/<i>/), measures
the dev split exactly as a local trial does (harness.tune.loop.measure_trial), and writes the
result into trials/<i>/trial.json, where the controlling process, or a resumed one, reads it and
tells Ax. A trial that already has a result is not measured again (a task that SLURM requeued).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

from harness.errors import HyperbenchError
from harness.results import RunFolder, atomic_write_json, read_json

HOLDOUT = "holdout.json"  # the held-out phase's result, written by its job


def _setup(run_dir: Path, work: Path):
    from harness.tune.config import TuneConfig
    from harness.tune.run import _lm_evaluator, _objectives
    from harness.tune.space import SearchSpace

    saved = read_json(run_dir / "config.json")
    saved.get("output", {}).pop("resume", None)
    cfg = TuneConfig(**saved)
    plan = read_json(run_dir / "plan.json")
    space = SearchSpace.from_json(plan["space"])
    # the engine's log and pid, and the task files, in this job's own folder: jobs run side by side
    evaluate, session = _lm_evaluator(cfg, plan, RunFolder(run_dir), space, work=work)
    return cfg, plan, space, evaluate, session, _objectives(plan)


def run_trial(run_dir: Path, index: int) -> dict:
    from harness.tune.loop import TrialStore, measure_trial

    store = TrialStore(run_dir)
    rec = store.read(index)
    if rec is None:
        raise HyperbenchError(f"{store.folder(index)} has no trial.json: the tune never queued trial {index}")
    if rec.get("status") in ("completed", "failed"):
        return rec
    _, plan, _, evaluate, session, (objectives, _) = _setup(run_dir, store.folder(index))
    names = [o.metric for o in objectives] + plan["tracking"]
    rec.update(status="running", attempts=rec.get("attempts", 0) + 1, node=socket.gethostname(),
               started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               slurm_task=f"{os.environ.get('SLURM_ARRAY_JOB_ID', '?')}_{os.environ.get('SLURM_ARRAY_TASK_ID', '?')}")
    store.write(index, rec)
    try:
        return measure_trial(store, rec, lambda folder, params: evaluate(folder, params, plan["dev"]), names)
    except (KeyboardInterrupt, HyperbenchError) as e:
        # cancelled, or the engine as configured cannot start: failed, with the reason (never
        # measured twice: a resumed tune reads this and tells Ax)
        why = "cancelled while measuring (SIGTERM: scancel or the time limit)" \
            if isinstance(e, KeyboardInterrupt) else str(e)
        rec.update(status="failed", error=why, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        store.write(index, rec)
        raise
    finally:
        session.close()


def run_holdout(run_dir: Path) -> dict:
    from harness.tune.loop import TrialStore
    from harness.tune.run import HOLDOUT_ALPHA
    from harness.tune.select import holdout

    cfg, plan, space, evaluate, session, (objectives, constraints) = _setup(run_dir, run_dir / "holdout")
    try:
        result = holdout(read_json(run_dir / "selection.json"), TrialStore(run_dir), run_dir, plan["test"],
                         evaluate, space, objectives, constraints, HOLDOUT_ALPHA, cfg.tune.seed,
                         lambda line: print(line, flush=True), concurrency=cfg.tune.concurrency)
    finally:
        session.close()
    atomic_write_json(run_dir / HOLDOUT, result)
    return result


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # unwind: the engine is stopped, the trial marked


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _sigterm)
    os.environ.setdefault("TQDM_DISABLE", "1")
    if len(argv) != 2 or not (argv[1].isdigit() or argv[1] == "holdout"):
        print("usage: python -m harness.tune.trial_job RUN_DIR INDEX|holdout", file=sys.stderr)
        return 2
    try:
        if argv[1] == "holdout":
            run_holdout(Path(argv[0]))
            print("held-out phase done", flush=True)
        else:
            rec = run_trial(Path(argv[0]), int(argv[1]))
            print(f"trial {rec['index']}: {rec['status']}" + (f": {rec['error']}" if rec.get("error") else ""),
                  flush=True)
            return 0 if rec["status"] == "completed" else 1
    except HyperbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
