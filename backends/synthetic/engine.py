"""A synthetic engine whose timing is known, to test the harness client's measurement.

It is not an LLM. It speaks the wire contract (OpenAI-compatible streaming `/v1/completions` and
`/v1/chat/completions`, `/health`, `/v1/models`, `GET /v1/engine` -> {"engine": "synthetic"}) and
emits exactly `max_tokens` tokens (whatever `min_tokens`/`ignore_eos` say), one per SSE chunk:
token k is due `ttft_ms + k * itl_ms` after the request arrived. To test how a client times
tokens rather than text, tokens can travel several to a chunk (`tokens_per_chunk`, the chunk due
with its last token), every Nth token can decode to empty text (`empty_text_every`), and a chunk
of empty text only can be sent or skipped (`empty_chunks`, skipped tokens ride in the next
chunk); with `stream_options.continuous_usage_stats` every chunk carries the usage so far, as
vLLM's do. Deadlines are absolute, so timer
errors never accumulate. The request's arrival is stamped in the protocol callback, before any
other connection's work, and tokens leave from timer callbacks (no coroutine per token; tokens
due together go out in one write, so `itl_ms 0` streams as fast as the client reads). The loop
waits in select(2), whose timeout has microsecond resolution where epoll's rounds up to a
millisecond (select caps the server near 1000 connections). `/v1/engine` reports how late tokens
left, so a benchmark can tell the server's scheduling error from the client's measurement error;
`GET /v1/engine/trace` gives, per streamed request, when it arrived and when its first token left
(monotonic clock, which is the harness's perf_counter on Linux).

Stdlib only: it runs in the base harness install (uvicorn is an engine extra).

    python -m backends.synthetic.engine --port 8000 --ttft-ms 50 --itl-ms 10
    with start_in_thread(ttft_ms=50, itl_ms=10) as srv: ...srv.base_url...   # in-process
    with launch(ttft_ms=50, itl_ms=10) as endpoint: ...                      # subprocess
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import selectors
import sys
import threading
import time
from typing import Literal

from pydantic import Field

from backends.base import (ALL_SAMPLING_PARAMS, Capabilities, EngineConfig, api_key_arg_default,
                           exit_with_parent, python_module_cmd)


class SyntheticConfig(EngineConfig):
    """The synthetic engine as an engine config, so the process launcher can start it."""

    kind: Literal["synthetic"] = "synthetic"
    model: str = Field("synthetic", description="Name served in /v1/models.")
    ttft_ms: float = Field(50.0, ge=0, description="Delay before the first token (ms).")
    itl_ms: float = Field(10.0, ge=0, description="Delay between tokens (ms).")
    jitter_ms: float = Field(0.0, ge=0, description="Add uniform [0, jitter] ms to each deadline.")
    fail_rate: float = Field(0.0, ge=0, le=1, description="Fraction of requests answered HTTP 500.")
    jitter_seed: int = Field(0, description="Seed of the synthetic jitter and failures.")
    capacity_rps: float = Field(0.0, ge=0, description=(
        "Requests it starts per second at most, one every 1/capacity s in arrival order (a queue "
        "that grows without bound above it: a known capacity for --find-max-rate); 0: no limit."))
    tokens_per_chunk: int = Field(1, ge=1, description=(
        "Tokens sent together in one chunk, when the last of them is due (a multi-token chunk)."))
    empty_text_every: int = Field(0, ge=0, description=(
        "Every Nth token (0, N, 2N, ...) decodes to empty text, as split multi-byte characters "
        "do; 0: none."))
    empty_chunks: Literal["send", "skip"] = Field("send", description=(
        "A chunk whose tokens all have empty text: send it with empty text, or skip it so its "
        "tokens ride in the next chunk (the last chunk is always sent)."))

    probe_module = "harness"
    needs_weights = False
    prompt_tokenizer = "tiny-llama"  # built offline in a second: exact prompt lengths, no download

    def capabilities(self) -> Capabilities:
        return Capabilities(sampling_params=list(ALL_SAMPLING_PARAMS), quantizations=["none"],
                            prompt_logprobs=False)

    def server_command(self, host: str, port: int, model_path: str = "") -> list[str]:
        args = ["--host", host, "--port", str(port)]
        for name in _KNOBS:
            args += ["--" + name.replace("_", "-"), str(getattr(self, name))]
        if self.api_key:
            args += ["--api-key", self.api_key]
        return python_module_cmd("backends.synthetic.engine", *args)


_KNOBS = ("model", "ttft_ms", "itl_ms", "jitter_ms", "fail_rate", "jitter_seed", "capacity_rps", "tokens_per_chunk",
          "empty_text_every", "empty_chunks")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            411: "Length Required", 431: "Request Header Fields Too Large",
            500: "Internal Server Error"}
_BURST = 256  # most tokens written per callback, so one fast stream cannot starve the others


class SyntheticEngine:
    def __init__(self, cfg: SyntheticConfig):
        self.cfg = cfg
        self.rng = random.Random(cfg.jitter_seed)
        # lateness = when a token left - its deadline, in seconds (the server's own error)
        self.counters = {"connections": 0, "requests": 0, "failed": 0, "output_tokens": 0,
                         "first_token_late_s_sum": 0.0, "first_token_late_s_max": 0.0,
                         "token_late_s_sum": 0.0, "token_late_s_max": 0.0}
        # per streamed request: its prompt (text, cut), when it arrived and when its first
        # token left, on the monotonic clock that the harness's perf_counter also reads (Linux):
        # a test can then split a TTFT error into engine and client shares
        self.trace: collections.deque[dict] = collections.deque(maxlen=4096)
        self.next_start = 0.0  # capacity_rps: when the next request may start

    def info(self) -> dict:
        return {"engine": "synthetic", "version": "1", "model": self.cfg.model, "device": "none",
                "note": "synthetic engine with known timing, not an LLM",
                **{k: getattr(self.cfg, k) for k in _KNOBS if k != "model"},
                "counters": dict(self.counters)}

    def route(self, conn: _Conn, method: str, path: str, headers: dict, body: bytes, t0: float):
        if path == "/health":  # open, as vLLM's is
            conn.send_json(200, {})
        elif self.cfg.api_key and headers.get("authorization") != f"Bearer {self.cfg.api_key}":
            conn.send_json(401, _err("invalid api key"))
        elif path == "/v1/models":
            conn.send_json(200, {"object": "list", "data": [
                {"id": self.cfg.model, "object": "model", "owned_by": "hyperbench"}]})
        elif path == "/v1/engine" and method == "GET":
            conn.send_json(200, self.info())
        elif path == "/v1/engine/trace" and method == "GET":
            conn.send_json(200, {"clock": "CLOCK_MONOTONIC (Python's perf_counter on Linux)",
                                 "requests": list(self.trace)})
        elif path in ("/v1/completions", "/v1/chat/completions") and method == "POST":
            self.generate(conn, body, path.endswith("chat/completions"), t0)
        else:
            conn.send_json(404, _err(f"no route {method} {path}"))

    def generate(self, conn: _Conn, body: bytes, chat: bool, t0: float) -> None:
        try:
            req = json.loads(body)
            n = int(req.get("max_tokens") or 16)
            prompt_tokens = _prompt_tokens(req, chat)
            if n < 1:
                raise ValueError("max_tokens must be >= 1")
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            return conn.send_json(400, _err(f"bad request: {e}"))
        self.counters["requests"] += 1
        if self.cfg.fail_rate and self.rng.random() < self.cfg.fail_rate:
            self.counters["failed"] += 1
            return conn.send_json(500, _err("synthetic failure (fail_rate)"))
        cfg = self.cfg
        if cfg.capacity_rps:  # queued behind the requests before it: its timing starts later
            t0 = max(t0, self.next_start)
            self.next_start = t0 + 1.0 / cfg.capacity_rps
        deadlines = [t0 + (cfg.ttft_ms + k * cfg.itl_ms + (self.rng.uniform(0, cfg.jitter_ms)
                     if cfg.jitter_ms else 0.0)) / 1000.0 for k in range(n)]
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{self.counters['requests']}",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": cfg.model}
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                 "total_tokens": prompt_tokens + n}
        if req.get("stream"):
            options = req.get("stream_options") or {}
            include_usage = bool(options.get("include_usage"))
            continuous = include_usage and bool(options.get("continuous_usage_stats"))
            conn.stream = _Stream(self, conn, self.chunk_plan(deadlines), head, usage, chat,
                                  include_usage, continuous)
            conn.stream.trace = {"prompt": str(req.get("prompt"))[:64], "arrived": t0,
                                 "first_token_due": deadlines[0]}
            self.trace.append(conn.stream.trace)
            conn.stream.start()
        else:
            text = "".join(self.token_text(k) for k in range(n))
            choice = ({"message": {"role": "assistant", "content": text}} if chat
                      else {"text": text, "logprobs": None})
            full = {**head, "object": "chat.completion" if chat else "text_completion",
                    "choices": [{"index": 0, **choice, "finish_reason": "length"}], "usage": usage}
            self.counters["output_tokens"] += n
            conn.busy = True
            conn.loop.call_at(deadlines[-1], conn.send_json, 200, full)

    def token_text(self, k: int) -> str:
        every = self.cfg.empty_text_every
        return "" if every and k % every == 0 else _token(k)

    def chunk_plan(self, deadlines: list[float]) -> list[tuple[float, list[int]]]:
        """(when it is due, its tokens) for each chunk: `tokens_per_chunk` tokens a chunk, due
        with its last token; with `empty_chunks` skip, a chunk of empty text only joins the next."""
        n, m, cfg = len(deadlines), self.cfg.tokens_per_chunk, self.cfg
        plan, carry = [], []
        for start in range(0, n, m):
            toks = carry + list(range(start, min(start + m, n)))
            last = toks[-1]
            if (cfg.empty_chunks == "skip" and last < n - 1
                    and not any(self.token_text(k) for k in toks)):
                carry = toks
                continue
            plan.append((deadlines[last], toks))
            carry = []
        return plan

    def late(self, late: float, first: bool) -> None:
        c = self.counters
        c["token_late_s_sum"] += late
        c["token_late_s_max"] = max(c["token_late_s_max"], late)
        if first:
            c["first_token_late_s_sum"] += late
            c["first_token_late_s_max"] = max(c["first_token_late_s_max"], late)


class _Stream:
    """One streamed answer: writes every token that is due, then sleeps until the next one."""

    def __init__(self, engine, conn, plan, head, usage, chat, include_usage, continuous):
        self.engine, self.conn, self.plan, self.chat = engine, conn, plan, chat
        self.k = 0  # the next chunk of the plan
        self.n_tokens = plan[-1][1][-1] + 1
        # continuous_usage_stats: every chunk carries the usage so far, as vLLM's do
        self.usage = usage if continuous else None
        self.trace: dict = {}
        self.timer: asyncio.TimerHandle | None = None
        self.prefix = json.dumps(head)[:-1].encode() + b', "choices": [{"index": 0, '
        self.tail = [b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode()
                     + b"\n\n"] if include_usage else []
        self.tail.append(b"data: [DONE]\n\n")

    def start(self) -> None:
        self.conn.busy = True
        self.conn.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                  b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
                                  + self.conn.close_header() + b"\r\n")
        if self.chat:  # the role comes first, at once: a client must not count it as a token
            self.conn.transport.write(_chunk(self.prefix + b'"delta": {"role": "assistant", '
                                             b'"content": ""}, "finish_reason": null}]'
                                             + self.usage_so_far(0) + b"}"))
        self.pump()

    def pump(self) -> None:
        self.timer = None
        conn, n, loop = self.conn, len(self.plan), self.conn.loop
        if conn.transport.is_closing():  # the client went away
            return
        now = loop.time()
        out = []
        while self.k < n and self.plan[self.k][0] <= now and len(out) < _BURST:
            self.engine.late(now - self.plan[self.k][0], first=self.k == 0)
            out.append(self.token_chunk(self.plan[self.k][1]))
            self.k += 1
        if self.k == n:
            out += [_chunk(event, sse=False) for event in self.tail] + [b"0\r\n\r\n"]
            self.engine.counters["output_tokens"] += self.n_tokens
        if out:
            if "first_token_sent" not in self.trace:
                self.trace["first_token_sent"] = time.monotonic()
            conn.transport.write(b"".join(out))
        if self.k == n:
            conn.stream = None
            conn.finished()
        elif not conn.paused:  # else resume_writing pumps again
            if self.plan[self.k][0] <= now:
                loop.call_soon(self.pump)
            else:
                self.timer = loop.call_at(self.plan[self.k][0], self.pump)

    def token_chunk(self, toks: list[int]) -> bytes:
        piece = json.dumps("".join(self.engine.token_text(k) for k in toks)).encode()
        content = (b'"delta": {"content": ' + piece + b"}" if self.chat
                   else b'"text": ' + piece + b', "logprobs": null')
        last = toks[-1] == self.n_tokens - 1
        return _chunk(self.prefix + content + b', "finish_reason": '
                      + (b'"length"' if last else b"null") + b"}]"
                      + self.usage_so_far(toks[-1] + 1) + b"}")

    def usage_so_far(self, done: int) -> bytes:
        if self.usage is None:
            return b""
        p = self.usage["prompt_tokens"]
        return b', "usage": {"prompt_tokens": %d, "completion_tokens": %d, "total_tokens": %d}' % (
            p, done, p + done)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection: parses requests (Content-Length bodies), keep-alive."""

    def __init__(self, engine: SyntheticEngine):
        self.engine = engine
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a response is under way; a pipelined request waits in buf
        self.keep = True
        self.paused = False
        self.stream: _Stream | None = None
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
                self.send_json(431, _err("request head too large"))
            return
        start_line, *lines = self.buf[:end].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:
            self.keep = False
            return self.send_json(411, _err("chunked request bodies are not supported"))
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
                             % (status, _REASONS[status].encode(), len(body), self.close_header(),
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


def _token(k: int) -> str:
    return f" t{k}"


def _prompt_tokens(req: dict, chat: bool) -> int:
    """len of a token-id prompt, else the word count of the text (no tokenizer here)."""
    if chat:
        return sum(len(str(m.get("content") or "").split()) for m in req["messages"])
    prompt = req.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list):
        if not all(isinstance(t, int) for t in prompt):
            raise ValueError("prompt must be a string or a list of token ids (one prompt only)")
        return len(prompt)
    return len(str(prompt).split())


def _err(message: str) -> dict:
    return {"error": {"message": message, "type": "synthetic"}}


def _chunk(data: bytes, sse: bool = True) -> bytes:
    """One SSE event as one HTTP chunk."""
    event = b"data: " + data + b"\n\n" if sse else data
    return b"%x\r\n%s\r\n" % (len(event), event)


async def serve(cfg: SyntheticConfig, host: str, port: int) -> asyncio.Server:
    """Start listening (port 0: any free port) and return the server; it serves until closed."""
    engine = SyntheticEngine(cfg)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Conn(engine), host, port, backlog=1024)


def run_loop(coro):
    """asyncio.run on a select(2) loop: microsecond timer resolution (see the docstring)."""
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


class ServerThread:
    """The synthetic engine on its own event loop in a daemon thread. It shares the caller's GIL:
    prefer `launch` (a subprocess) where the caller's timings matter."""

    def __init__(self, cfg: SyntheticConfig, host: str = "127.0.0.1", port: int = 0):
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self.base_url = ""
        self._thread = threading.Thread(target=run_loop, args=(self._main(cfg, host, port),),
                                        name="synthetic-engine", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._loop is None:
            raise RuntimeError(f"synthetic engine did not start: {self._error}")

    async def _main(self, cfg, host, port) -> None:
        try:
            server = await serve(cfg, host, port)
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._stop = asyncio.Event()
        self.base_url = f"http://{host}:{server.sockets[0].getsockname()[1]}/v1"
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        async with server:
            await self._stop.wait()

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_in_thread(host: str = "127.0.0.1", port: int = 0, **knobs) -> ServerThread:
    """Start in-process; `.base_url` (…/v1) and `.stop()` (or use it as a context manager)."""
    return ServerThread(SyntheticConfig(**knobs), host, port)


def launch(log_path=None, **knobs):
    """The synthetic engine as a subprocess, through the process launcher (free port, health
    wait, early-death check, log, teardown): `with launch(ttft_ms=100) as endpoint: ...`."""
    from harness.launchers.process import ProcessLauncher

    return ProcessLauncher(engine=SyntheticConfig(**knobs), model_path="", log_path=log_path,
                           startup_timeout_s=30)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m backends.synthetic.engine",
                                description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (printed).")
    p.add_argument("--api-key", default=api_key_arg_default(),
                   help="Require this bearer key [default: $HYPERBENCH_API_KEY].")
    for name in _KNOBS:  # flags derived from the config class
        f = SyntheticConfig.model_fields[name]
        kind = f.annotation if f.annotation in (int, float) else str
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=f.default,
                       help=f.description)
    args = vars(p.parse_args(argv))
    exit_with_parent()
    host, port = args.pop("host"), args.pop("port")
    cfg = SyntheticConfig(**args)

    async def run() -> None:
        server = await serve(cfg, host, port)
        bound = server.sockets[0].getsockname()[1]
        print(f"synthetic engine on http://{host}:{bound}/v1 (ttft {cfg.ttft_ms} ms, "
              f"itl {cfg.itl_ms} ms)", file=sys.stderr, flush=True)
        async with server:
            await server.serve_forever()

    try:
        run_loop(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
