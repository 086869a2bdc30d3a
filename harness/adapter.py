"""The common generation adapter: one async client for every engine's OpenAI-compatible API.

It streams and returns one `RequestRecord` per request: send time, first-token time, every
chunk arrival, end time, token counts from the server's `usage` (never by re-tokenizing the
streamed text), and an error as data instead of an exception.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx


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
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=30), headers=headers, limits=limits,
            verify=ssl_context,
        )
        # Streams go through one single-connection client each, reused (keep-alive) from this
        # free list: httpcore's pool scans every connection for every queued request
        # (O(connections x requests) per assignment, encode/httpcore#1035), which at 64
        # concurrent streams cost seconds of client CPU and showed up as TTFT.
        self._stream_kwargs = dict(timeout=httpx.Timeout(timeout, connect=30), headers=headers,
                                   limits=httpx.Limits(max_connections=1), verify=ssl_context)
        self._idle_streams: list[httpx.AsyncClient] = []
        self._all_streams: list[httpx.AsyncClient] = []

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc) -> None:
        for http in self._all_streams:
            await http.aclose()
        await self._http.aclose()

    def _stream_client(self) -> httpx.AsyncClient:
        if self._idle_streams:
            return self._idle_streams.pop()
        http = httpx.AsyncClient(**self._stream_kwargs)
        self._all_streams.append(http)
        return http

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
        """Stream one request, filling `rec`. Never raises for engine/network errors."""
        path, body = self.payload(req)
        rec.expected_output_tokens = req.max_tokens if req.fixed_output else None
        chunks: list[str] = []
        http = self._stream_client()

        async def trace(event: str, info: dict) -> None:
            # `send` is when the request goes on the wire, not when this task asked for it: with
            # many streams the event loop runs other tasks between the two (tens of ms at 64
            # streams), and that is the client's queueing, not the engine's. httpcore writes the
            # body right after this event with no await in between (and yields after it).
            if event == "http11.send_request_body.started":
                rec.send = time.perf_counter()

        rec.send = time.perf_counter()  # kept if the request never leaves (connect error)
        try:
            async with http.stream("POST", self.base_url + path, json=body,
                                   extensions={"trace": trace}) as resp:
                if resp.status_code != 200:
                    detail = (await resp.aread()).decode(errors="replace")
                    rec.error = f"HTTP {resp.status_code}: {_error_message(detail)}"
                    return rec
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        rec.end = time.perf_counter()
                        # read on to the end of the body: breaking here would leave the HTTP
                        # response unfinished, and httpx would then close the connection instead
                        # of reusing it, so every request would pay a TCP connect in its TTFT
                        continue
                    now = time.perf_counter()
                    msg = json.loads(data)
                    if "error" in msg:
                        rec.error = f"stream error: {_error_message(json.dumps(msg))}"
                        break
                    for choice in msg.get("choices") or []:
                        piece = choice.get("text")
                        if piece is None:
                            piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            if rec.first_token is None:
                                rec.first_token = now
                            rec.token_times.append(now)
                            chunks.append(piece)
                        if choice.get("finish_reason"):
                            rec.finish_reason = choice["finish_reason"]
                    if msg.get("usage"):
                        rec.prompt_tokens = msg["usage"].get("prompt_tokens")
                        rec.output_tokens = msg["usage"].get("completion_tokens")
        except httpx.HTTPError as e:
            rec.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        except (json.JSONDecodeError, ValueError) as e:
            rec.error = f"bad stream from engine: {e}"
        finally:
            if rec.end is None:  # no [DONE]: the end of the stream (or the error) ends it
                rec.end = time.perf_counter()
            rec.text = "".join(chunks)
            self._idle_streams.append(http)
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
