"""One engine per tune, kept up across trials; restarted only when a trial changes an engine
option (e.g. num_speculative_tokens), or after it died.

The process launcher starts the engine in a session of its own, so a tune killed with SIGKILL
leaves it running. The engine's pid and command line are written to the run folder; a resumed
tune stops that orphan first (only if the pid still runs that exact command line).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path

from harness.errors import EngineError

log = logging.getLogger("hyperbench.tune")
PID_FILE = "engine.pid.json"


class EngineSession:
    def __init__(self, cfg, model_path: str | None, folder: Path):
        self.cfg = cfg
        self.model_path = model_path
        self.folder = Path(folder)
        self.overrides: dict | None = None
        self.endpoint = None
        self.launcher = None
        self._stack: contextlib.ExitStack | None = None
        self.starts = 0

    def ensure(self, overrides: dict):
        """The endpoint of an engine running with `overrides`; (re)started when needed. Raises
        EngineError when it cannot start."""
        if self.endpoint is not None and overrides == self.overrides and self.alive():
            return self.endpoint
        self.close()
        from harness.bench import engine_up

        engine = self.cfg.engine_config(**overrides)
        self._stack = contextlib.ExitStack()
        try:
            self.endpoint, self.launcher = self._stack.enter_context(
                engine_up(self.cfg, engine, self.model_path, self.folder / "engine.log"))
            self.overrides = dict(overrides)
            self.starts += 1
            self._write_pid()
            self._warm_up()
        except BaseException:
            self.close()
            raise
        return self.endpoint

    def _warm_up(self) -> None:
        """A fresh engine's first requests pay one-off costs (allocation, kernel selection, JIT):
        without a warm-up they would count against whichever trial comes first, the baseline."""
        import asyncio

        from harness.adapter import EngineClient, GenRequest, RequestRecord

        prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 40)

        async def go():
            async with EngineClient(self.endpoint.base_url, self.endpoint.model, self.endpoint.api_key,
                                    timeout=self.cfg.tune.timeout_s) as c:
                recs = await asyncio.gather(*(c.generate(GenRequest(prompt=prompt, max_tokens=8),
                                                         RequestRecord(request_id=-1, point="warmup"))
                                              for _ in range(self.cfg.tune.concurrency)))
            return [r.error for r in recs if r.error]

        errors = asyncio.run(go())
        if errors:
            raise EngineError(f"warm-up request failed: {errors[0]}")

    def alive(self) -> bool:
        return self.launcher is not None and self.launcher.alive()

    def death_reason(self) -> str:
        return self.launcher.death_reason() if self.launcher is not None else "engine not started"

    def close(self) -> None:
        if self._stack is not None:
            try:
                self._stack.close()
            finally:
                self._stack, self.endpoint, self.launcher, self.overrides = None, None, None, None
                (self.folder / PID_FILE).unlink(missing_ok=True)

    def _write_pid(self) -> None:
        proc = getattr(self.launcher, "proc", None)
        if proc is None:
            return
        try:
            import psutil

            p = psutil.Process(proc.pid)
            info = {"pid": proc.pid, "cmdline": p.cmdline(), "create_time": p.create_time()}
        except Exception:  # gone already: nothing to clean up later
            return
        (self.folder / PID_FILE).write_text(json.dumps(info))


def stop_orphan(folder: Path) -> str | None:
    """Stop the engine a killed tune left running (its process group), if it is still the same
    process; returns what was done, for the run's notes."""
    path = Path(folder) / PID_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
        import psutil

        p = psutil.Process(info["pid"])
        same = p.cmdline() == info["cmdline"] and abs(p.create_time() - info["create_time"]) < 1e-3
    except Exception:  # no such process, unreadable file: nothing of ours is running
        path.unlink(missing_ok=True)
        return None
    path.unlink(missing_ok=True)
    if not same:
        return None
    try:
        os.killpg(info["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 15
        while p.is_running() and p.status() != "zombie" and time.monotonic() < deadline:
            time.sleep(0.2)
        if p.is_running() and p.status() != "zombie":
            os.killpg(info["pid"], signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return None
    return f"stopped the engine (pid {info['pid']}) that the interrupted run left running"


def engine_failure(session: EngineSession, err: Exception) -> EngineError:
    """A trial's engine error, with the death reason when the engine is gone."""
    if not session.alive():
        return EngineError(f"engine died: {session.death_reason()}")
    return err if isinstance(err, EngineError) else EngineError(str(err))
