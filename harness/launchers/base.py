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
    """Context manager: `with launcher as endpoint: ...`; always tears down."""

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
