"""One engine per tune, kept up across trials; restarted only when a trial changes an engine
option (e.g. num_speculative_tokens), or after it died.

The process launcher makes the engine die with the harness and writes its pid beside engine.log;
a resumed tune still stops an engine an older run left behind (stop_orphan, only if the pid
still runs that exact command line).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from harness.errors import EngineError

log = logging.getLogger("hyperbench.tune")


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
        from harness.engine_session import engine_up

        engine = self.cfg.engine_config(**overrides)
        self._stack = contextlib.ExitStack()
        try:
            self.endpoint, self.launcher = self._stack.enter_context(
                engine_up(self.cfg, engine, self.model_path, self.folder / "engine.log"))
            self.overrides = dict(overrides)
            self.starts += 1
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
            finally:  # (the process launcher removes its pid file when it stops the engine)
                self._stack, self.endpoint, self.launcher, self.overrides = None, None, None, None


def engine_failure(session: EngineSession, err: Exception) -> EngineError:
    """A trial's engine error, with the death reason when the engine is gone."""
    if not session.alive():
        return EngineError(f"engine died: {session.death_reason()}")
    return err if isinstance(err, EngineError) else EngineError(str(err))
