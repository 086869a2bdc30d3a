from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from harness.errors import EngineError


@dataclass
class Endpoint:
    base_url: str  # ends in /v1
    model: str  # the served model name
    api_key: str | None = None


class Launcher:
    """Context manager: `with launcher as endpoint: ...`; always tears down.

    What a launcher can do is said by its class, so that jobs ask the capability instead of the
    launcher's name (a new launcher then needs no edit in the jobs):
    - `starts_engine`: the harness starts the engine (False: someone else runs it, at a URL); the
      run folder then names the engine kind, and the harness knows its settings.
    - `can_restart`: the harness can restart the engine with other settings (a speculation-off
      baseline, tune's engine options, one engine after another in agree/compare/study).
    - `holds_process`: the harness holds the engine's OS process, so a dead engine refuses
      connections a moment before alive() sees it exit (others answer alive() at once).
    - `uses_host_install`: the engine runs from this machine's Python install (not an image), so it
      must be installed here.
    """

    starts_engine: bool = True
    can_restart: bool = True
    holds_process: bool = False
    uses_host_install: bool = False

    def __enter__(self) -> Endpoint:  # pragma: no cover - abstract
        raise NotImplementedError

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        pass

    def alive(self) -> bool:
        return True

    def death_reason(self) -> str:
        return "engine stopped answering"

    log_path: Path | None = None


# answers that waiting will not change: a server that is up but is not an engine of the wire
# contract (or wants a key): said at once, not after the start-up timeout as "not healthy"
_FINAL = {401: "wants an API key (give --api-key)", 403: "refused the API key (check --api-key)",
          404: "has no /health route: is it an engine of the wire contract, and is the URL its base "
               "(…/v1)?"}


def wait_healthy(base_url: str, timeout_s: float, alive, reason, api_key: str | None = None,
                 up_is_final: bool = False) -> None:
    """Poll GET <root>/health until 200; raise EngineError early if the engine dies, or (an engine
    that is already up: `up_is_final`) if it answers what waiting will not change."""
    root = base_url.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        if not alive():
            raise EngineError(reason())
        status = None
        try:
            status = httpx.get(root + "/health", timeout=2, headers=headers).status_code
            if status == 200:
                return
        except httpx.HTTPError:
            pass
        if up_is_final and status in _FINAL:
            raise EngineError(f"{root} answered HTTP {status} on /health: it {_FINAL[status]}")
        if time.monotonic() > deadline:
            said = f" (last answer: HTTP {status})" if status else " (no answer)"
            raise EngineError(f"engine not healthy after {timeout_s:.0f}s at {root}/health{said}")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
