"""The common generation adapter: one async client for every engine's OpenAI-compatible API.

It streams and returns one `RequestRecord` per request: send time, first-token time, every
chunk arrival (stamped at the socket read: harness/sse_http.py), end time, token counts from the
server's `usage` (never by re-tokenizing the streamed text), and an error as data instead of an
exception.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from harness.sse_http import StreamingHTTP, TransportError


@dataclass
class RequestRecord:
    request_id: int
    point: str = ""  # the sweep point this request belongs to, e.g. "concurrency=4"
    send: float = 0.0  # perf_counter seconds; all times of a run share one clock
    first_token: float | None = None
    token_times: list[float] = field(default_factory=list)  # arrival of every content chunk
    end: float | None = None
    prompt_tokens: int | None = None  # from the server's usage
    output_tokens: int | None = None  # from the server's usage
    expected_output_tokens: int | None = None
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class GenRequest:
    """What to send. `prompt` is text (or token ids); `messages` switches to chat."""

    prompt: str | list[int] | None = None
    messages: list[dict] | None = None
    max_tokens: int = 16
    sampling: dict[str, Any] = field(default_factory=dict)
    fixed_output: bool = False


class EngineClient:
    """Async client for one engine. Use as `async with EngineClient(url, model) as c:`."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 600):
        self.base_url = base_url.rstrip("/")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # no connection cap: the load generator, not the HTTP pool, decides concurrency
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        ssl_context = httpx.create_ssl_context()  # ~35 ms each: made once, shared
        # non-streamed calls (score, agree, /engine) go through httpx
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=30), headers=headers, limits=limits,
            verify=ssl_context,
        )
        # streamed requests go through a client that stamps each read where it comes off the
        # socket (harness/sse_http.py): parsed by the coroutine that awaits it, as httpx does,
        # a chunk that arrived with 63 others was stamped up to ~6 ms late
        self._streams = StreamingHTTP(self.base_url, headers, timeout=timeout, connect_timeout=30,
                                      ssl_context=ssl_context)

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self._streams.aclose()
        await self._http.aclose()

    def payload(self, req: GenRequest, stream: bool = True) -> tuple[str, dict]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": req.max_tokens, **req.sampling}
        if req.fixed_output:
            body["min_tokens"] = req.max_tokens
            body["ignore_eos"] = True
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if req.messages is not None:
            body["messages"] = req.messages
            return "/chat/completions", body
        body["prompt"] = req.prompt
        return "/completions", body

    async def generate(self, req: GenRequest, rec: RequestRecord) -> RequestRecord:
        """Stream one request, filling `rec`. Never raises for engine/network errors.

        `send` is when the request goes on the wire (not when this task asked for it: with many
        streams the event loop runs other tasks between the two), and every arrival time is the
        stamp of the socket read that completed that SSE event."""
        path, body = self.payload(req)
        rec.expected_output_tokens = req.max_tokens if req.fixed_output else None
        chunks: list[str] = []

        def sent(t: float) -> None:
            rec.send = t

        def on_event(stamp: float, data: bytes) -> bool:
            if data == b"[DONE]":
                rec.end = stamp
                # read on to the end of the body, so the connection can be reused
                return True
            msg = json.loads(data)
            if "error" in msg:
                rec.error = f"stream error: {_error_message(json.dumps(msg))}"
                return False
            for choice in msg.get("choices") or []:
                piece = choice.get("text")
                if piece is None:
                    piece = (choice.get("delta") or {}).get("content")
                if piece:
                    if rec.first_token is None:
                        rec.first_token = stamp
                    rec.token_times.append(stamp)
                    chunks.append(piece)
                if choice.get("finish_reason"):
                    rec.finish_reason = choice["finish_reason"]
            if msg.get("usage"):
                rec.prompt_tokens = msg["usage"].get("prompt_tokens")
                rec.output_tokens = msg["usage"].get("completion_tokens")
            return True

        rec.send = time.perf_counter()  # kept if the request never leaves (connect error)
        try:
            status, detail, last = await self._streams.post_sse(
                path, json.dumps(body).encode(), sent, on_event)
            if status != 200:
                rec.error = f"HTTP {status}: {_error_message(detail.decode(errors='replace'))}"
            elif rec.end is None:  # no [DONE]: the end of the body ends it
                rec.end = last
        except TransportError as e:
            rec.error = str(e)
        except (json.JSONDecodeError, ValueError) as e:
            rec.error = f"bad stream from engine: {e}"
        finally:
            if rec.end is None:
                rec.end = time.perf_counter()
            rec.text = "".join(chunks)
        if rec.error is None and rec.output_tokens is None:
            rec.error = "engine sent no usage (stream_options.include_usage unsupported?)"
        return rec

    async def complete(self, body: dict, chat: bool = False) -> dict:
        """Non-streamed call returning the JSON body (for scoring, agreement...)."""
        body = {"model": self.model, **body}
        path = "/chat/completions" if chat else "/completions"
        resp = await self._http.post(self.base_url + path, json=body)
        if resp.status_code != 200:
            raise EngineHTTPError(resp.status_code, _error_message(resp.text))
        return resp.json()

    async def get(self, path: str) -> dict:
        resp = await self._http.get(self.base_url + path)
        resp.raise_for_status()
        return resp.json()


class EngineHTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _error_message(text: str) -> str:
    try:
        data = json.loads(text)
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)[:300]
        return str(err)[:300]
    except (json.JSONDecodeError, AttributeError):
        return text.strip().replace("\n", " ")[:300]
