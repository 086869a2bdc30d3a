"""One streamed answer of the synthetic engine: chunks leave from timer callbacks when due."""

from __future__ import annotations

import asyncio
import json
import time

from backends.synthetic.http import sse_chunk

BURST = 256  # most tokens written per callback, so one fast stream cannot starve the others

class Stream:
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
            self.conn.transport.write(sse_chunk(self.prefix + b'"delta": {"role": "assistant", '
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
        while self.k < n and self.plan[self.k][0] <= now and len(out) < BURST:
            self.engine.late(now - self.plan[self.k][0], first=self.k == 0)
            out.append(self.tokensse_chunk(self.plan[self.k][1]))
            self.k += 1
        if self.k == n:
            out += [sse_chunk(event, sse=False) for event in self.tail] + [b"0\r\n\r\n"]
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

    def tokensse_chunk(self, toks: list[int]) -> bytes:
        piece = json.dumps("".join(self.engine.token_text(k) for k in toks)).encode()
        content = (b'"delta": {"content": ' + piece + b"}" if self.chat
                   else b'"text": ' + piece + b', "logprobs": null')
        last = toks[-1] == self.n_tokens - 1
        return sse_chunk(self.prefix + content + b', "finish_reason": '
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
