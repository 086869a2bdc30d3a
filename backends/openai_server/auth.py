"""Bearer-key auth for /v1 routes (/health stays open for probes)."""

from __future__ import annotations

import secrets

from backends.openai_server.errors import ApiError


class BearerAuth:
    """401 for /v1 requests without `Authorization: Bearer KEY`, compared in constant time.

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware would hide client disconnects from
    the routes and add a hop to every streamed chunk."""

    def __init__(self, app, key: str):
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                await ApiError("invalid or missing API key", 401).response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
