"""The start and end that every job's run shares: the run folder, the summary header, the
resolved config and environment beside the results, the line Ctrl-C leaves, the closing write.

bench, score and tune use `create_run` / `write_resolved` (one engine per run); agree and study
(several engines) start theirs with `start_run` / `write_config`. The engine itself is brought up
and down by harness/engine_session.py. A job keeps what is its own: its scenario, its report.
"""

from __future__ import annotations

import asyncio
import time

from harness import envinfo
from harness.errors import Interrupted
from harness.results import SCHEMA_VERSION, RunFolder


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def run_label(cfg, engine) -> str:
    """The run's engine: its kind, or "external" for an engine someone else runs (whose kind the
    harness does not know; its /v1/engine may say, see compare)."""
    return engine.kind if cfg.target.launcher_class.starts_engine else "external"


def start_run(output, label: str, model: str, kind: str, /, **header) -> tuple[RunFolder, dict]:
    """A new run folder (--results-dir/--run-name, else a dated name of label and model) and its
    summary, status running, with the job's own header fields after the common ones."""
    run_dir = RunFolder.create(output.results_dir, output.run_name, label, model)
    summary = {"schema_version": SCHEMA_VERSION, "kind": kind, "status": "running", "started": now(), **header}
    return run_dir, summary


def create_run(cfg, engine, kind: str, prefix: str = "") -> tuple[RunFolder, dict]:
    """The run folder of a one-engine job, named for prefix+engine and model."""
    label = run_label(cfg, engine)
    return start_run(cfg.output, prefix + label, engine.model, kind, engine=label, model=engine.model)


def write_config(run_dir: RunFolder, config: dict) -> None:
    """config.json (as resolved, no API key: the caller's to leave out) and env.json: what the
    results were measured with, saved beside them."""
    run_dir.write_json("config.json", config)
    run_dir.write_json("env.json", envinfo.capture())


def write_resolved(run_dir: RunFolder, cfg, engine) -> None:
    """write_config of a one-engine job: its config with the engine's defaults filled in."""
    resolved = cfg.model_dump(mode="json")
    resolved["engine"] = engine.model_dump(mode="json", exclude={"api_key"})
    write_config(run_dir, resolved)


def interruption(summary: dict, job: str, run_dir: RunFolder, kept: str, next_step: str = "finish it") -> Interrupted:
    """Ctrl-C's end of a job with --resume: the summary marked incomplete, and the one line the CLI
    prints, saying what was kept and the command that goes on from there. Raise it `from None`."""
    summary.update(status="incomplete", reason="interrupted")
    return Interrupted(f"{job} interrupted: {kept} kept in {run_dir.path}, marked incomplete; "
                       f"{next_step}: hyperbench {job} --resume {run_dir.path}")


def reopen(summary: dict) -> None:
    """A cut run's summary as --resume goes on with it: running again, the resume dated (`resumed`
    keeps the history), the cut's reason gone."""
    summary.update(status="running", resumed=[*summary.get("resumed", []), now()])
    summary.pop("reason", None)


def close_summary(run_dir: RunFolder, summary: dict) -> None:
    """The last write of a run's summary, however it ended: finished, and no writer any more."""
    summary.pop("process", None)
    summary["finished"] = now()
    run_dir.write_json("summary.json", summary)


def run_stoppable(main):
    """asyncio.run(main()), where SIGTERM (a scheduler's stop, `docker stop`; `hyperbench` maps it
    to Ctrl-C) cancels the main task and ends in KeyboardInterrupt, as asyncio itself does for
    Ctrl-C. The process-wide handler raising KeyboardInterrupt at whatever line the loop is on
    can land inside the loop's own machinery or a task's step: that task's exception is left
    unread (a traceback at exit), and asyncio.run's clean-up then waited on tasks that could no
    longer finish (a bench hung after SIGTERM, once in a full test run). Returns what main() returns."""
    import signal

    installed = []

    async def outer():
        task = asyncio.current_task()
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
            installed.append(True)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no unix
            pass
        return await main()

    old = signal.getsignal(signal.SIGTERM)
    try:
        return asyncio.run(outer())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        if installed and old is not None:  # the loop's close reset SIGTERM to the default
            signal.signal(signal.SIGTERM, old)
