"""The common generation adapter: one async client for every engine's OpenAI-compatible API.

It streams and returns one `RequestRecord` per request: send time, first-token time, every
chunk arrival (stamped at the socket read: harness/sse_http.py) with the number of tokens it
carried, end time, token counts from the server's `usage` (never by re-tokenizing the streamed
text), and an error as data instead of an exception.

Tokens, not text, are timed: a token can decode to no text (a multi-byte character split across
tokens, or a tokenizer whose ids often decode to ""), and a server then sends a chunk with empty
text or no chunk at all, so the next chunk carries several tokens. Each chunk's token count comes
from the server's cumulative usage (`stream_options.continuous_usage_stats`, which vLLM and the
in-house engines honour), else from its token ids or logprobs, else one token for a chunk with
text (servers that say nothing more).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import httpx

from harness.sse_http import StreamingHTTP, TransportError

# seconds an idle pooled connection is kept: under the servers' own idle close (5 s)
KEEPALIVE_EXPIRY_S = 2.0


@dataclass
class RequestRecord:
    request_id: int
    point: str = ""  # the sweep point this request belongs to, e.g. "concurrency=4"
    send: float = 0.0  # perf_counter seconds; all times of a run share one clock
    first_token: float | None = None
    # arrival of every chunk that carried at least one output token, and how many it carried
    token_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    # where chunk_tokens came from: "usage" (cumulative, per chunk), "token_ids", "logprobs",
    # "text" (one per chunk with text), "usage_total" (no chunk had text: all on the first)
    tokens_from: str | None = None
    end: float | None = None
    # closed loop: this send minus the end of the previous request of the same stream
    send_gap: float | None = None
    # open loop (Poisson rate, trace): when the schedule said to send it, same clock as `send`;
    # send - scheduled is the client's schedule lag
    scheduled: float | None = None
    # multi-turn: the conversation (0-based) and its turn (0-based); None for single requests
    conversation: int | None = None
    turn: int | None = None
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
    at_s: float | None = None  # a trace's request: its send time, seconds from the trace's start
    # multi-turn (harness/bench/conversation.py): `prompt`/`messages` hold this turn's new user content
    # only, `earlier` the user contents of the turns before it (their answers come at run time)
    conversation: int | None = None
    turn: int | None = None
    earlier: list = field(default_factory=list)


class EngineClient:
    """Async client for one engine. Use as `async with EngineClient(url, model) as c:`."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 600):
        self.base_url = base_url.rstrip("/")
        self.model = model
        # asked for until the server refuses the option (then chunks are counted without it)
        self.continuous_usage = True
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # no connection cap: the load generator, not the HTTP pool, decides concurrency
        # an idle pooled connection is dropped before the server's own idle close (5 s in uvicorn
        # and llama-server's cpp-httplib): reused at that moment, the request meets a closed
        # socket ("Server disconnected without sending a response"), which httpx does not retry
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None,
                              keepalive_expiry=KEEPALIVE_EXPIRY_S)
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
            # cumulative usage on every chunk: the token count of each chunk, whatever its text
            body["stream_options"] = {"include_usage": True}
            if self.continuous_usage:
                body["stream_options"]["continuous_usage_stats"] = True
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
        asked = self.continuous_usage
        await self._generate(req, rec)
        if asked and _refused_continuous_usage(rec.error):
            # a server that rejects an option it does not know (OpenAI-strict ones do): without
            # it from now on, and this request again
            self.continuous_usage = False
            fresh = RequestRecord(request_id=rec.request_id, point=rec.point, scheduled=rec.scheduled,
                                  conversation=rec.conversation, turn=rec.turn)
            for f in fields(RequestRecord):
                setattr(rec, f.name, getattr(fresh, f.name))
            await self._generate(req, rec)
        return rec

    async def _generate(self, req: GenRequest, rec: RequestRecord) -> RequestRecord:
        path, body = self.payload(req)
        rec.expected_output_tokens = req.max_tokens if req.fixed_output else None
        tokens = _TokenTimes(rec)

        def sent(t: float) -> None:
            rec.send = t

        rec.send = time.perf_counter()  # kept if the request never leaves (connect error)
        try:
            status, detail, last = await self._streams.post_sse(
                path, json.dumps(body).encode(), sent, tokens.on_event)
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
            tokens.finish()
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


def _refused_continuous_usage(error: str | None) -> bool:
    return bool(error) and error.startswith(("HTTP 400", "HTTP 422")) and \
        "continuous_usage_stats" in error


class _TokenTimes:
    """Reads one stream's SSE events into its record: text, and the stamp and token count of
    every chunk that carried tokens (see the module docstring)."""

    def __init__(self, rec: RequestRecord):
        self.rec = rec
        self.pieces: list[str] = []
        self.counted = 0  # tokens assigned to chunks so far
        self.first_content: float | None = None  # first chunk with a choice that is not a role

    def on_event(self, stamp: float, data: bytes) -> bool:
        rec = self.rec
        if data == b"[DONE]":
            rec.end = stamp
            return True  # read on to the end of the body, so the connection can be reused
        msg = _json_object(data)
        if "error" in msg:
            rec.error = f"stream error: {_error_message(json.dumps(msg))}"
            return False
        usage = msg.get("usage")
        choices = msg.get("choices")
        if choices:
            # cumulative usage on the chunk: its tokens are the difference, whatever the text
            done = usage.get("completion_tokens") if usage else None
            n, source = 0, "usage"
            for choice in choices:
                piece = choice.get("text")
                if piece is None:
                    delta = choice.get("delta") or {}
                    piece = delta.get("content")
                    if not piece and "role" in delta and not choice.get("finish_reason"):
                        continue  # the role announcement of a chat stream carries no token
                if piece:
                    self.pieces.append(piece)
                reason = choice.get("finish_reason")
                if reason:
                    rec.finish_reason = reason
                if self.first_content is None:
                    self.first_content = stamp
                if done is None:
                    k, source = _tokens_of(choice, piece)
                    n += k
            if done is not None:
                n = done - self.counted
            if n > 0:
                if rec.first_token is None:
                    rec.first_token = stamp
                rec.token_times.append(stamp)
                rec.chunk_tokens.append(n)
                self.counted += n
                if rec.tokens_from != "usage":
                    rec.tokens_from = source
        if usage:
            rec.prompt_tokens = usage.get("prompt_tokens")
            rec.output_tokens = usage.get("completion_tokens")
        return True

    def finish(self) -> None:
        rec = self.rec
        rec.text = "".join(self.pieces)
        if rec.first_token is None and rec.output_tokens and rec.error is None:
            # tokens came, none with text, from a server that does not count them per chunk:
            # they arrived no later than the first chunk after the role (or the end)
            at = self.first_content if self.first_content is not None else rec.end
            rec.first_token = at
            rec.token_times, rec.chunk_tokens = [at], [rec.output_tokens]
            rec.tokens_from = "usage_total"


_scan_once = json.JSONDecoder().scan_once


def _json_object(data: bytes):
    """json.loads for one event, at half its cost: the decoder's scanner called directly skips
    the byte-encoding detection and whitespace handling around it (~1.4 µs of ~2.8 per event)."""
    text = data.decode()
    try:
        obj, end = _scan_once(text, 0)
    except StopIteration:
        end = -1
    if end != len(text):  # leading or trailing space, or not JSON: the full parser decides
        obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError(f"an event that is not a JSON object: {text[:80]!r}")
    return obj


def _tokens_of(choice: dict, piece: str | None) -> tuple[int, str]:
    """Tokens in one streamed choice when the chunk has no cumulative usage: its token ids or
    logprobs where the server sent them, else one for a piece of text."""
    ids = choice.get("token_ids")
    if ids is not None:
        return len(ids), "token_ids"
    logprobs = choice.get("logprobs")
    if logprobs:
        listed = logprobs.get("tokens") if "tokens" in logprobs else logprobs.get("content")
        if listed is not None:
            return len(listed), "logprobs"
    return (1 if piece else 0), "text"


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
