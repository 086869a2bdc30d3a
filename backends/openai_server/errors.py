"""The one error envelope of the wire contract: `{"error": {message, type, param, code}}`.

Both in-house servers answer every failure through `ApiError`, so the same bad request gives
byte-identical bodies whichever engine serves it.
"""

from __future__ import annotations

import json
import logging

from starlette.responses import Response

log = logging.getLogger("openai_server")

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 500: "server_error"}  # fmt: skip


class ApiError(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None, type_: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param = message, status, param
        self.type = type_ or TYPES.get(status, "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.status}}  # fmt: skip

    def response(self) -> Response:
        return Response(json.dumps(self.body(), separators=(",", ":")), status_code=self.status,
                        media_type="application/json")  # fmt: skip


def install_handlers(app) -> None:
    """Every failure of `app` as one envelope: ApiError as raised, an unknown route or method
    (Starlette's own `{"detail": ...}` otherwise), and anything unexpected as a 500 whose
    traceback goes to the engine log."""
    from starlette.exceptions import HTTPException

    @app.exception_handler(ApiError)
    async def _api_error(_request, exc: ApiError):
        return exc.response()

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        if exc.status_code == 404:
            return ApiError(f"no route {request.method} {request.url.path}", 404).response()
        if exc.status_code == 405:
            return ApiError(f"method {request.method} is not allowed on {request.url.path}", 405).response()
        return ApiError(str(exc.detail), exc.status_code).response()

    @app.exception_handler(Exception)
    async def _unexpected(_request, exc: Exception):
        log.exception("request failed")
        return ApiError(f"{type(exc).__name__}: {exc}", 500).response()
