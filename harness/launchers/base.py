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


def wait_healthy(base_url: str, timeout_s: float, alive, reason, api_key: str | None = None) -> None:
    """Poll GET <root>/health until 200; raise EngineError early if the engine dies."""
    root = base_url.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        if not alive():
            raise EngineError(reason())
        try:
            if httpx.get(root + "/health", timeout=2, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise EngineError(f"engine not healthy after {timeout_s:.0f}s at {root}/health")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
