"""A small streaming HTTP/1.1 client for the adapter's streamed POSTs, with arrival times stamped
at the transport.

Why not httpx for this: its stream is read by the coroutine that parses it, so a chunk is
stamped when that coroutine gets to run, after every other stream that was ready first has been
parsed (~100 µs of CPU each). When 64 first tokens arrive together, the last was stamped ~6 ms
late. Here each read is stamped in `asyncio.Protocol.data_received`, which the event loop calls
for every ready socket before any task resumes; the parsing (h11 for HTTP/1.1, then SSE lines,
then JSON in the caller) happens later in the coroutine, and each SSE event carries the stamp of
the read that completed its terminating blank line.

One keep-alive connection per stream (connections are pooled, never shared by two requests at
once), TLS through `ssl` for https URLs, a connect timeout and a per-read timeout, and transport
failures raised as `TransportError` with httpx's names (ConnectError, ReadTimeout, ...), which
the adapter turns into an error record.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import h11

_HIGH_WATER = 1 << 20  # bytes stamped but not yet parsed before the socket stops being read
_LOW_WATER = 1 << 18


class TransportError(Exception):
    """A connection-level failure; `kind` is the httpx exception name for the same failure."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class _Stamped(asyncio.Protocol):
    """Keeps every read with the time it came off the socket; nothing else happens here."""

    def __init__(self) -> None:
        self.reads: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.paused = False
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.exc: BaseException | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reads.append((time.perf_counter(), data))
        self.queued += len(data)
        if self.queued > _HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.exc = exc
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.done():
                w.set_result(None)


class _Connection:
    def __init__(self, transport: asyncio.Transport, proto: _Stamped):
        self.transport, self.proto = transport, proto
        self.h11 = h11.Connection(h11.CLIENT)
        self.requests = 0
        # the read timeout: one long-lived timer per connection that checks how long the
        # current wait has lasted, instead of a timer made and cancelled for every read
        self.watch: asyncio.TimerHandle | None = None
        self.wait_since = 0.0
        self.timeout = 0.0

    def reusable(self) -> bool:
        p = self.proto
        return not (p.closed or p.reads or self.transport.is_closing())

    def close(self) -> None:
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        self.transport.close()

    async def read(self, timeout: float) -> tuple[float, bytes]:
        """The next read and its stamp; b"" once the peer has closed."""
        p = self.proto
        if not p.reads:
            if p.closed:
                return self._closed()
            loop = asyncio.get_running_loop()
            fut = p.waiter = loop.create_future()
            self.wait_since, self.timeout = loop.time(), timeout
            if self.watch is None:
                self.watch = loop.call_later(timeout, self._check)
            try:
                await fut
            finally:
                p.waiter = None
            if not p.reads:
                return self._closed()
        stamp, data = p.reads.popleft()
        p.queued -= len(data)
        if p.paused and p.queued < _LOW_WATER:
            p.paused = False
            self.transport.resume_reading()
        return stamp, data

    def _check(self) -> None:
        self.watch = None
        fut = self.proto.waiter
        if fut is None or fut.done():
            return  # not waiting: the next wait arms it again
        loop = asyncio.get_running_loop()
        left = self.wait_since + self.timeout - loop.time()
        if left > 0:
            self.watch = loop.call_later(left, self._check)
        else:
            fut.set_exception(TransportError("ReadTimeout"))

    def _closed(self) -> tuple[float, bytes]:
        exc = self.proto.exc
        if exc is not None:
            raise TransportError("ReadError", str(exc) or type(exc).__name__)
        return time.perf_counter(), b""


class _SSE:
    """Splits a byte stream into SSE events (`data:` lines joined, other fields ignored)."""

    def __init__(self, on_event: Callable[[float, bytes], bool]):
        self.on_event = on_event
        self.tail = b""
        self.data: list[bytes] = []

    def feed(self, chunk: bytes, stamp: float) -> bool:
        """False once `on_event` asked to stop."""
        if self.tail:
            chunk = self.tail + chunk
        lines = chunk.split(b"\n")
        self.tail = lines.pop()
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:  # a blank line ends the event
                if self.data:
                    data = self.data[0] if len(self.data) == 1 else b"\n".join(self.data)
                    self.data = []
                    if self.on_event(stamp, data) is False:
                        return False
            elif line[:5] == b"data:":
                self.data.append(line[6:] if line[5:6] == b" " else line[5:])
        return True

    def finish(self, stamp: float) -> None:
        """The body ended: an event that lacked its blank line still counts."""
        if self.tail:
            self.feed(b"\n\n", stamp)
        elif self.data:
            self.feed(b"\n", stamp)


class StreamingHTTP:
    """POSTs whose answer is read as server-sent events, timed at the transport."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float,
                 connect_timeout: float = 30.0, ssl_context: ssl.SSLContext | None = None):
        url = urlsplit(base_url)
        # a bad scheme fails each request as a record (as httpx's UnsupportedProtocol did)
        self.bad_scheme = None if url.scheme in ("http", "https") else url.scheme
        self.tls = url.scheme == "https"
        self.host = url.hostname or "localhost"
        self.port = url.port or (443 if self.tls else 80)
        self.prefix = url.path.rstrip("/")
        self.headers = [("Host", url.netloc.rpartition("@")[2]),
                        ("User-Agent", "hyperbench"), ("Accept", "text/event-stream"),
                        ("Content-Type", "application/json"), *headers.items()]
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.ssl_context = ssl_context
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self.connections_opened = 0

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing

    async def _connect(self) -> _Connection:
        if self.bad_scheme is not None:
            raise TransportError("UnsupportedProtocol",
                                 f"the URL scheme {self.bad_scheme!r} is not http or https")
        loop = asyncio.get_running_loop()
        ssl_context = None
        if self.tls:
            ssl_context = self.ssl_context or ssl.create_default_context()
        try:
            transport, proto = await asyncio.wait_for(loop.create_connection(
                _Stamped, self.host, self.port, ssl=ssl_context,
                server_hostname=self.host if ssl_context else None), self.connect_timeout)
        except asyncio.TimeoutError:
            raise TransportError("ConnectTimeout", f"{self.host}:{self.port}") from None
        except OSError as e:  # refused, unreachable, name not resolved, TLS failures
            raise TransportError("ConnectError", str(e) or type(e).__name__) from None
        conn = _Connection(transport, proto)
        self._open.add(conn)
        self.connections_opened += 1
        return conn

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    async def post_sse(self, path: str, body: bytes, on_sent: Callable[[float], None],
                       on_event: Callable[[float, bytes], bool]) -> tuple[int, bytes, float]:
        """POST `body`; call `on_sent(t)` when it goes on the wire and `on_event(stamp, data)`
        for each SSE event of a 200 answer (return False to stop reading). Returns the status,
        the body of a non-200 answer, and the stamp of the last read."""
        while True:
            conn = None
            while self._idle:
                conn = self._idle.pop()
                if conn.reusable():
                    break
                self._discard(conn)
                conn = None
            if conn is None:
                conn = await self._connect()
            try:
                return await self._exchange(conn, path, body, on_sent, on_event)
            except _StaleConnection:
                # the server closed this idle keep-alive connection as the request went out
                # (uvicorn drops idle connections after 5 s): send it again on another one.
                # Only a reused connection raises this, so the loop ends on a fresh one.
                continue

    async def _exchange(self, conn: _Connection, path, body, on_sent, on_event):
        keep = False
        try:
            h = conn.h11
            head = h.send(h11.Request(method="POST", target=self.prefix + path,
                                      headers=[*self.headers, ("Content-Length", str(len(body)))]))
            data = head + h.send(h11.Data(data=body)) + h.send(h11.EndOfMessage())
            conn.requests += 1
            on_sent(time.perf_counter())
            conn.transport.write(data)
            status, error_body, got_any = None, b"", False
            sse = _SSE(on_event)
            while True:
                try:
                    stamp, chunk = await conn.read(self.timeout)
                except TransportError as e:
                    if e.kind == "ReadError" and not got_any and conn.requests > 1:
                        raise _StaleConnection from None
                    raise
                if not chunk and not got_any and conn.requests > 1:
                    raise _StaleConnection
                got_any = True
                h.receive_data(chunk)
                while True:
                    try:
                        event = h.next_event()
                    except h11.RemoteProtocolError as e:
                        raise TransportError("RemoteProtocolError", str(e)) from None
                    kind = type(event)
                    if event is h11.NEED_DATA:
                        break
                    if kind is h11.Data:
                        if status != 200:
                            error_body += event.data
                        elif not sse.feed(event.data, stamp):
                            return status, b"", stamp  # the caller stopped: keep is False
                    elif kind is h11.Response:
                        status = event.status_code
                    elif kind is h11.EndOfMessage:
                        if status == 200:
                            sse.finish(stamp)
                        if h.our_state is h11.DONE and h.their_state is h11.DONE:
                            h.start_next_cycle()
                            keep = True
                        return status, error_body, stamp
                    elif kind is h11.ConnectionClosed:
                        raise TransportError("RemoteProtocolError",
                                             "server disconnected without sending a response")
                    # InformationalResponse (1xx): nothing to do
        finally:
            if keep and conn.reusable():
                self._idle.append(conn)
            else:
                self._discard(conn)


class _StaleConnection(Exception):
    """A reused connection closed before any byte of the answer came back."""
