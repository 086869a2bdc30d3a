"""A small streaming HTTP/1.1 client for the adapter's streamed POSTs, with arrival times stamped
at the transport.

Why not httpx for this: its stream is read by the coroutine that parses it, so a chunk is
stamped when that coroutine gets to run, after every other stream that was ready first has been
parsed (~100 µs of CPU each). When 64 first tokens arrive together, the last was stamped ~6 ms
late. Here each read is stamped in `asyncio.Protocol.data_received`, which the event loop calls
for every ready socket before any task resumes; the parsing (HTTP/1.1 framing, then SSE lines,
then JSON in the caller) happens later in the coroutine, and each SSE event carries the stamp of
the read that completed its terminating blank line.

The HTTP/1.1 answer is read by a small parser of its own (`_Answer`: status line, headers, then a
Content-Length, chunked or close-delimited body) rather than h11, whose per-chunk event objects
were 22% of the client's time at 100k tokens/s; the SSE splitter takes the common case (one
`data:` line per HTTP chunk, as vLLM and the in-house servers send) in one step.

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
        if (not self.tail and chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")
                and chunk.find(b"\n", 6) == len(chunk) - 2 and not self.data):
            # the common case: one event of one `data:` line, `\n\n`-ended
            return self.on_event(stamp, chunk[6:-2]) is not False
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
        headers = [("Host", url.netloc.rpartition("@")[2]),
                   ("User-Agent", "hyperbench"), ("Accept", "text/event-stream"),
                   ("Content-Type", "application/json"), *headers.items()]
        for name, value in headers:  # a header that could split the request is refused
            if any(c in f"{name}{value}" for c in "\r\n\0"):
                raise ValueError(f"bad HTTP header {name!r}")
        self.head = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")
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
            data = b"".join((b"POST ", (self.prefix + path).encode(), b" HTTP/1.1\r\n",
                             self.head, b"Content-Length: %d\r\n\r\n" % len(body), body))
            conn.requests += 1
            on_sent(time.perf_counter())
            conn.transport.write(data)
            answer = _Answer(_SSE(on_event))
            got_any = False
            while True:
                try:
                    stamp, chunk = await conn.read(self.timeout)
                except TransportError as e:
                    if e.kind == "ReadError" and not got_any and conn.requests > 1:
                        raise _StaleConnection from None
                    raise
                if not chunk:
                    if not got_any and conn.requests > 1:
                        raise _StaleConnection
                    if answer.status is None:
                        raise TransportError("RemoteProtocolError",
                                             "server disconnected without sending a response")
                    if answer.mode != "close":
                        raise TransportError("RemoteProtocolError", "peer closed connection "
                                             "without sending complete message body")
                    answer.end(stamp)
                    return answer.status, bytes(answer.error_body), stamp
                got_any = True
                if not answer.feed(chunk, stamp):
                    return answer.status, b"", stamp  # the caller stopped: keep is False
                if answer.done:
                    keep = answer.keep_alive and not conn.proto.reads
                    return answer.status, bytes(answer.error_body), stamp
        finally:
            if keep and conn.reusable():
                self._idle.append(conn)
            else:
                self._discard(conn)


class _Answer:
    """One HTTP/1.1 response, fed the bytes of successive reads: the status and headers, then a
    body by Content-Length, chunked transfer coding or the connection's close. A 200 body goes to
    the SSE splitter (with the stamp of the read that brought it), any other to `error_body`."""

    def __init__(self, sse: _SSE):
        self.sse = sse
        self.status: int | None = None
        self.mode = ""  # "length", "chunked" or "close", once the head is read
        self.keep_alive = True
        self.done = False
        self.error_body = bytearray()
        self.buf = b""  # bytes not yet consumed: a head or a chunk-size line cut by a read
        self.left = 0  # of a Content-Length body; of a chunk, its data plus the CRLF after it
        self.trailer = False  # after the last chunk: trailer lines up to a blank one

    def feed(self, data: bytes, stamp: float) -> bool:
        """False once the SSE consumer asked to stop."""
        buf = self.buf + data if self.buf else data
        self.buf = b""
        pos = 0
        if not self.mode:
            pos = self._head(buf)
            if pos < 0:
                self.buf = buf
                return True
            if self.mode == "length" and self.left == 0:  # an empty body
                self.done = True
                if self.status == 200:
                    self.sse.finish(stamp)
                return True
        if self.mode == "chunked":
            return self._chunked(buf, pos, stamp)
        piece = buf[pos:pos + self.left] if self.mode == "length" else buf[pos:]
        if self.mode == "length":
            self.left -= len(piece)
            self.done = self.left == 0
        return self._body(piece, stamp) if piece else True

    def end(self, stamp: float) -> None:
        """The connection closed: the end of a close-delimited body."""
        self.done = True
        if self.status == 200:
            self.sse.finish(stamp)

    def _body(self, piece: bytes, stamp: float) -> bool:
        if self.status != 200:
            self.error_body += piece
            return True
        if not self.sse.feed(piece, stamp):
            return False
        if self.done:
            self.sse.finish(stamp)
        return True

    def _head(self, buf: bytes) -> int:
        """Parses a complete head at the start of `buf` (1xx answers skipped); the position after
        it, or -1 while it is incomplete."""
        pos = 0
        while True:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if len(buf) - pos > 65536:
                    raise TransportError("RemoteProtocolError", "response head too large")
                return -1
            status_line, *lines = buf[pos:end].split(b"\r\n")
            version, _, rest = status_line.partition(b" ")
            try:
                status = int(rest[:3])
            except ValueError:
                raise TransportError("RemoteProtocolError",
                                     f"bad status line {status_line[:80]!r}") from None
            pos = end + 4
            if 100 <= status < 200:
                continue  # an informational answer: the real one follows
            headers = {}
            for line in lines:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip().lower()
            self.status = status
            connection = headers.get(b"connection", b"")
            self.keep_alive = (b"close" not in connection if version == b"HTTP/1.1"
                               else b"keep-alive" in connection)
            if b"chunked" in headers.get(b"transfer-encoding", b""):
                self.mode = "chunked"
            elif b"content-length" in headers:
                self.mode = "length"
                try:
                    self.left = int(headers[b"content-length"])
                except ValueError:
                    raise TransportError("RemoteProtocolError", "bad Content-Length") from None
            else:
                self.mode, self.keep_alive = "close", False
            return pos

    def _chunked(self, buf: bytes, pos: int, stamp: float) -> bool:
        n = len(buf)
        deliver = self._body
        while pos < n:
            if self.left:  # inside a chunk that an earlier read began: its data, then its CRLF
                take = self.left if self.left < n - pos else n - pos
                data = take if take < self.left - 2 else self.left - 2
                if data > 0 and not deliver(buf[pos:pos + data], stamp):
                    return False
                self.left -= take
                pos += take
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if n - pos > 4096:
                    raise TransportError("RemoteProtocolError", "chunk size line too long")
                self.buf = buf[pos:]
                return True
            if self.trailer:
                if eol == pos:  # the blank line that ends the message
                    self.done = True
                    if self.status == 200:
                        self.sse.finish(stamp)
                    return True
                pos = eol + 2
                continue
            try:
                size = int(buf[pos:eol], 16)
            except ValueError:  # a chunk extension (";name=value"), or not a size at all
                try:
                    size = int(buf[pos:eol].split(b";", 1)[0], 16)
                except ValueError:
                    raise TransportError("RemoteProtocolError",
                                         f"bad chunk size {buf[pos:eol][:40]!r}") from None
            pos = eol + 2
            if size == 0:
                self.trailer = True
            elif pos + size + 2 <= n:  # the whole chunk is here: the common case
                if not deliver(buf[pos:pos + size], stamp):
                    return False
                pos += size + 2
            else:
                self.left = size + 2
        return True


class _StaleConnection(Exception):
    """A reused connection closed before any byte of the answer came back."""
