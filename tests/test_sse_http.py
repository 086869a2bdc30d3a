"""The adapter's streaming transport (harness/sse_http.py) against real servers: arrival stamps
taken per socket read, SSE framing, keep-alive reuse and a dropped idle connection, TLS, the API
key, and transport failures as error records (never exceptions)."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import threading

import pytest

from harness.adapter import EngineClient, GenRequest, RequestRecord
from harness.sse_http import _SSE, TransportError, _Answer
from backends.synthetic import SyntheticConfig, SyntheticEngine, start_in_thread
from backends.synthetic.http import Connection


def test_sse_events_carry_the_stamp_of_the_read_that_ended_them():
    got = []
    sse = _SSE(lambda stamp, data: got.append((stamp, data)))
    # vLLM ends lines with \n, sse-starlette (llama-cpp-python) with \r\n; comments and other
    # fields are skipped; an event split over reads belongs to the read with its blank line
    sse.feed(b'data: {"a": 1}\n\ndata: {"b"', 1.0)
    sse.feed(b": 2}\n", 2.0)
    sse.feed(b"\n: ping\r\n\r\nevent: x\r\ndata: two\r\ndata: lines\r\n\r\ndata: [DONE]", 3.0)
    assert got == [(1.0, b'{"a": 1}'), (3.0, b'{"b": 2}'), (3.0, b"two\nlines")]
    sse.finish(4.0)  # a last event without its blank line still counts, at the end of the body
    assert got[-1] == (4.0, b"[DONE]")


def test_stop_reading_when_asked():
    got = []
    sse = _SSE(lambda stamp, data: got.append(data) or data != b"stop")
    assert sse.feed(b"data: a\n\ndata: stop\n\ndata: b\n\n", 0.0) is False
    assert got == [b"a", b"stop"]


def _answer_events(raw: bytes, cuts) -> tuple[list, _Answer]:
    """`raw` fed to the response parser in pieces cut at `cuts`, each read stamped by its index."""
    got = []
    answer = _Answer(_SSE(lambda stamp, data: got.append((stamp, data))))
    bounds = [0, *cuts, len(raw)]
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        answer.feed(raw[a:b], float(i))
    return got, answer


def _http_chunk(data: bytes, ext: bytes = b"") -> bytes:
    return b"%X%s\r\n%s\r\n" % (len(data), ext, data)


CHUNKED = (b"HTTP/1.1 100 Continue\r\n\r\n"  # an informational answer first: skipped
           b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
           + _http_chunk(b'data: {"a":1}\n\n')  # one event, one chunk (the fast path)
           + _http_chunk(b"data: {", b";ext=1")  # an event over two chunks, a chunk extension
           + _http_chunk(b'"b": 2}\n\n')
           + _http_chunk(b"data: x\r\ndata: y\r\n\r\ndata: z\n\n")  # several events, two lines
           + b"0\r\nX-Trailer: 1\r\n\r\n")


def test_chunked_answer_split_anywhere_gives_the_same_events():
    """The HTTP/1.1 parser (no h11): whatever the reads' boundaries, the same events, each with
    the stamp of the read that completed it, and the message ends at the last chunk's trailer."""
    whole, answer = _answer_events(CHUNKED, [])
    assert [d for _, d in whole] == [b'{"a":1}', b'{"b": 2}', b"x\ny", b"z"]
    assert answer.status == 200 and answer.done and answer.keep_alive
    for cut in range(1, len(CHUNKED)):
        got, answer = _answer_events(CHUNKED, [cut])
        assert [d for _, d in got] == [d for _, d in whole] and answer.done, cut
        end = CHUNKED.index(b"data: {\"a\":1}\n\n") + len(b'data: {"a":1}\n\n')
        assert got[0][0] == (0.0 if cut >= end else 1.0), cut
    got, answer = _answer_events(CHUNKED, range(1, len(CHUNKED)))  # a byte a read
    assert [d for _, d in got] == [d for _, d in whole] and answer.done


def test_content_length_close_and_error_answers():
    body = b"data: one\n\ndata: two\n\n"
    got, answer = _answer_events(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                                 + body, [30])
    assert [d for _, d in got] == [b"one", b"two"] and answer.done and answer.keep_alive
    got, answer = _answer_events(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body, [])
    assert answer.mode == "close" and not answer.keep_alive and not answer.done
    answer.end(9.0)  # the close ends it
    assert [d for _, d in got] == [b"one", b"two"] and answer.done
    got, answer = _answer_events(b"HTTP/1.0 503 Busy\r\nContent-Length: 4\r\n\r\nbusy", [])
    assert (answer.status, bytes(answer.error_body), got, answer.keep_alive) == (503, b"busy", [], False)
    for bad in (b"HTTP/1.1 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
        with pytest.raises(TransportError) as e:
            _answer_events(bad, [])
        assert e.value.kind == "RemoteProtocolError"


# --- a scripted server, to misbehave on purpose -------------------------------------------------


def _sse_answer(n_tokens: int) -> bytes:
    events = [{"choices": [{"index": 0, "text": f" w{k}", "finish_reason": None}]}
              for k in range(n_tokens)]
    events.append({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": n_tokens}})
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    body += b"data: [DONE]\n\n"
    return body


class _Scripted(asyncio.Protocol):
    """Reads Content-Length requests; `script(server, conn_no, req_no, transport)` answers."""

    def __init__(self, server):
        self.server, self.buf, self.requests = server, b"", 0

    def connection_made(self, transport):
        self.transport = transport
        self.server.connections += 1
        self.conn_no = self.server.connections

    def data_received(self, data):
        self.buf += data
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        if len(rest) < length:
            return
        self.buf = rest[length:]
        self.requests += 1
        self.server.heads.append(head.decode())
        self.server.bodies.append(json.loads(rest[:length]) if length else None)
        self.server.script(self.server, self.conn_no, self.requests, self.transport)


class ScriptedServer:
    def __init__(self, script):
        self.script, self.connections, self.heads, self.bodies = script, 0, [], []
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def main():
            self.srv = await self.loop.create_server(lambda: _Scripted(self), "127.0.0.1", 0)
            started.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(main(), self.loop)
        started.wait(10)
        self.base_url = f"http://127.0.0.1:{self.srv.sockets[0].getsockname()[1]}/v1"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.srv.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _ok(transport, n_tokens=3, close=False):
    body = _sse_answer(n_tokens)
    transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    + (b"Connection: close\r\n" if close else b"")
                    + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    if close:
        transport.close()


def _generate(url: str, n: int = 1, **client_kw) -> list[RequestRecord]:
    async def go():
        async with EngineClient(url, "m", **client_kw) as c:
            return [await c.generate(GenRequest(prompt="hi", max_tokens=3),
                                     RequestRecord(request_id=i)) for i in range(n)]

    return asyncio.run(go())


def test_content_length_answers_and_connection_close():
    def script(server, conn_no, req_no, transport):
        _ok(transport, close=conn_no == 1)  # the first connection says close, the next keeps

    with ScriptedServer(script) as srv:
        recs = _generate(srv.base_url, n=3)
    assert [r.error for r in recs] == [None] * 3
    assert all(r.text == " w0 w1 w2" and r.output_tokens == 3 and len(r.token_times) == 3
               for r in recs)
    assert srv.connections == 2  # a new one after `Connection: close`, then kept alive
    head = srv.heads[0]
    assert head.startswith("POST /v1/completions HTTP/1.1\r\n")
    assert "content-type: application/json" in head.lower()


def test_an_idle_connection_the_server_dropped_is_not_an_error():
    # uvicorn closes idle keep-alive connections after 5 s; if that close crosses the next
    # request on the wire, the request goes again on a fresh connection
    def script(server, conn_no, req_no, transport):
        if req_no == 2:
            transport.close()  # drops the request unanswered, as a timed-out idle close does
        else:
            _ok(transport)

    with ScriptedServer(script) as srv:
        recs = _generate(srv.base_url, n=2)
    assert [r.error for r in recs] == [None, None]
    assert srv.connections == 2 and len(srv.heads) == 3


def test_a_fresh_connection_that_closes_is_an_error_record():
    with ScriptedServer(lambda s, c, r, transport: transport.close()) as srv:
        (rec,) = _generate(srv.base_url)
    assert rec.error.startswith("RemoteProtocolError")
    assert srv.connections == 1  # not retried: the request may have been the problem


def test_reset_mid_stream_keeps_what_arrived():
    def script(server, conn_no, req_no, transport):
        first = b"data: " + json.dumps({"choices": [{"text": " w0"}]}).encode() + b"\n\n"
        transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + b"%x\r\n%s\r\n" % (len(first), first))
        server.loop.call_later(0.05, transport.abort)

    with ScriptedServer(script) as srv:
        (rec,) = _generate(srv.base_url)
    assert rec.error and rec.error.split(":")[0] in ("RemoteProtocolError", "ReadError")
    assert rec.text == " w0" and len(rec.token_times) == 1
    assert rec.send < rec.first_token < rec.end


def test_silence_is_a_read_timeout():
    with ScriptedServer(lambda *a: None) as srv:
        (rec,) = _generate(srv.base_url, timeout=0.3)
    assert rec.error == "ReadTimeout" and rec.end - rec.send >= 0.3


def test_a_url_without_http_is_an_error_record():
    (rec,) = _generate("localhost:8000/v1")
    assert rec.error.startswith("UnsupportedProtocol")


def test_api_key_goes_as_a_bearer_token():
    with start_in_thread(ttft_ms=0, itl_ms=0, api_key="sekret") as srv:
        (ok,) = _generate(srv.base_url, api_key="sekret")
        (bad,) = _generate(srv.base_url, api_key="wrong")
    assert ok.error is None and ok.output_tokens == 3
    assert bad.error == "HTTP 401: invalid api key"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https(tmp_path, monkeypatch):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", key, "-out", cert, "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    engine = SyntheticEngine(SyntheticConfig(ttft_ms=0, itl_ms=0))
    loop = asyncio.new_event_loop()
    srv = loop.run_until_complete(loop.create_server(lambda: Connection(engine), "127.0.0.1", 0,
                                                     ssl=server_ctx))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = srv.sockets[0].getsockname()[1]
    try:
        # an unknown certificate is refused...
        (refused,) = _generate(f"https://localhost:{port}/v1")
        assert refused.error.startswith("ConnectError")
        assert "CERTIFICATE_VERIFY_FAILED" in refused.error
        # ...and trusted through SSL_CERT_FILE, as httpx (the non-streamed calls) trusts it
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        recs = _generate(f"https://localhost:{port}/v1", n=2)
        assert [r.error for r in recs] == [None, None]
        assert all(r.text == " t0 t1 t2" for r in recs)
        assert engine.counters["connections"] == 1  # one, kept alive (the refused never opened)
    finally:
        loop.call_soon_threadsafe(srv.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_a_server_that_refuses_continuous_usage_is_asked_without_it():
    """OpenAI-strict servers answer 400 to an option they do not know: each request sent with
    it goes again without it (concurrent ones too), and later ones are sent without it."""
    held = []  # the 400s wait until both concurrent requests are in, so both carry the option

    def script(server, conn_no, req_no, transport):
        if "continuous_usage_stats" in server.bodies[-1]["stream_options"]:
            held.append(transport)
            if len(held) < 2:
                return
            body = json.dumps({"error": {"message": "Unrecognized request argument supplied: "
                                                    "continuous_usage_stats"}}).encode()
            for t in held:
                t.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(body)
                        + body)
        else:
            _ok(transport)

    async def go(url):
        async with EngineClient(url, "m") as c:
            reqs = [GenRequest(prompt="hi", max_tokens=3)] * 2
            first = await asyncio.gather(*(c.generate(r, RequestRecord(request_id=i))
                                           for i, r in enumerate(reqs)))
            return [*first, await c.generate(reqs[0], RequestRecord(request_id=2))]

    with ScriptedServer(script) as srv:
        recs = asyncio.run(go(srv.base_url))
        asked = ["continuous_usage_stats" in b["stream_options"] for b in srv.bodies]
    assert [r.error for r in recs] == [None] * 3
    assert all(r.output_tokens == 3 and r.text == " w0 w1 w2" and r.tokens_from == "text"
               for r in recs)
    assert asked == [True, True, False, False, False]
