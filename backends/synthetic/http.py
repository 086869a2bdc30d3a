"""The synthetic engine's HTTP/1.1 side: one connection's request parsing (Content-Length bodies,
keep-alive, pipelining), JSON answers and SSE chunk framing. Stdlib only."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backends.synthetic.engine import SyntheticEngine
    from backends.synthetic.stream import Stream

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            411: "Length Required", 431: "Request Header Fields Too Large",
            500: "Internal Server Error"}

class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: parses requests (Content-Length bodies), keep-alive."""

    def __init__(self, engine: SyntheticEngine):
        self.engine = engine
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a response is under way; a pipelined request waits in buf
        self.keep = True
        self.paused = False
        self.stream: Stream | None = None
        self.read_at: float | None = None  # loop time of the latest read not yet parsed
        self.parse_scheduled = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.engine.counters["connections"] += 1

    def data_received(self, data: bytes) -> None:
        # stamp the read now and parse it later: the loop runs every ready socket's callback
        # before anything it schedules, so 64 requests that arrive together are all stamped
        # within microseconds, where parsing each here (~100 µs) stamped the last ~6 ms late
        self.read_at = self.loop.time()
        self.buf += data
        if not self.parse_scheduled:
            self.parse_scheduled = True
            self.loop.call_soon(self._parse_reads)

    def _parse_reads(self) -> None:
        self.parse_scheduled = False
        self._next_request()

    def _next_request(self) -> None:
        if self.busy or self.transport.is_closing():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 65536:
                self.keep = False
                self.send_json(431, error_body("request head too large"))
            return
        start_line, *lines = self.buf[:end].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:
            self.keep = False
            return self.send_json(411, error_body("chunked request bodies are not supported"))
        length = int(headers.get("content-length") or 0)
        if len(self.buf) < end + 4 + length:
            return  # the body is still on its way
        # the request is complete: its clock starts at the read that completed it, or now for a
        # pipelined request that waited for the one before it
        t0, self.read_at = self.read_at or self.loop.time(), None
        body = bytes(self.buf[end + 4:end + 4 + length])
        del self.buf[:end + 4 + length]
        method, target, version = (start_line.split(" ", 2) + ["", ""])[:3]
        self.keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        self.engine.route(self, method, target.split("?", 1)[0].rstrip("/"), headers, body, t0)

    def close_header(self) -> bytes:
        return b"" if self.keep else b"Connection: close\r\n"

    def send_json(self, status: int, obj: dict) -> None:
        if self.transport.is_closing():
            return
        body = json.dumps(obj).encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n%s\r\n%s"
                             % (status, REASONS[status].encode(), len(body), self.close_header(),
                                body))
        self.finished()

    def finished(self) -> None:
        self.busy = False
        if not self.keep:
            self.transport.close()
        elif self.buf:
            self.read_at = None  # a pipelined request: its clock starts when it is parsed
            self.loop.call_soon(self._next_request)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.stream is not None and self.stream.timer is None:
            self.stream.pump()

    def connection_lost(self, exc) -> None:
        if self.stream is not None:
            self.stream.cancel()
            self.stream = None

def error_body(message: str) -> dict:
    return {"error": {"message": message, "type": "synthetic"}}


def sse_chunk(data: bytes, sse: bool = True) -> bytes:
    """One SSE event as one HTTP chunk."""
    event = b"data: " + data + b"\n\n" if sse else data
    return b"%x\r\n%s\r\n" % (len(event), event)
