"""The synthetic engine's timing model and routes: when each token is due, what it says, and how
late it left (the server's own error, reported in /v1/engine)."""

from __future__ import annotations

import collections
import json
import random
import time

from backends.synthetic.http import Connection, error_body
from backends.synthetic.spec import KNOBS, SyntheticConfig
from backends.synthetic.stream import Stream


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
                **{k: getattr(self.cfg, k) for k in KNOBS if k != "model"},
                "counters": dict(self.counters)}

    def route(self, conn: Connection, method: str, path: str, headers: dict, body: bytes, t0: float):
        if path == "/health":  # open, as vLLM's is
            conn.send_json(200, {})
        elif self.cfg.api_key and headers.get("authorization") != f"Bearer {self.cfg.api_key}":
            conn.send_json(401, error_body("invalid api key"))
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
            conn.send_json(404, error_body(f"no route {method} {path}"))

    def generate(self, conn: Connection, body: bytes, chat: bool, t0: float) -> None:
        try:
            req = json.loads(body)
            n = int(req.get("max_tokens") or 16)
            prompt_tokens = _prompt_tokens(req, chat)
            if n < 1:
                raise ValueError("max_tokens must be >= 1")
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            return conn.send_json(400, error_body(f"bad request: {e}"))
        self.counters["requests"] += 1
        if self.cfg.fail_rate and self.rng.random() < self.cfg.fail_rate:
            self.counters["failed"] += 1
            return conn.send_json(500, error_body("synthetic failure (fail_rate)"))
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
            conn.stream = Stream(self, conn, self.chunk_plan(deadlines), head, usage, chat,
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
