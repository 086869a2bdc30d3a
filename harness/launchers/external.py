from __future__ import annotations

import httpx

from harness.errors import EngineError
from harness.launchers.base import Endpoint, Launcher, wait_healthy


class ExternalLauncher(Launcher):
    """An engine someone else runs (a compose service, a cluster endpoint)."""

    starts_engine = False
    can_restart = False

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None,
                 startup_timeout_s: float = 30, **_):
        self.url = url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        self.model = model
        self.api_key = api_key
        self.timeout = startup_timeout_s

    def __enter__(self) -> Endpoint:
        wait_healthy(self.url, self.timeout, lambda: True, lambda: "", self.api_key, up_is_final=True)
        model = self.model or self._served_model()
        return Endpoint(self.url, model, self.api_key)

    def _served_model(self) -> str:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            data = httpx.get(self.url + "/models", timeout=10, headers=headers).json()
            return data["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            raise EngineError(f"{self.url}/models did not name a model: pass --model") from None

    def alive(self) -> bool:
        try:
            root = self.url.removesuffix("/v1")
            return httpx.get(root + "/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False
