"""GET /metrics of the in-house engines: Prometheus text with vLLM's metric names for what they
have, so the harness scrapes every engine the same way (harness/bench/server_metrics.py).

The serving layer measures what every engine has: requests in its generation routes
(`vllm:num_requests_running`, unless the engine tells running and waiting apart itself through
`ServedEngine.gauges()`), and the server's own TTFT (`vllm:time_to_first_token_seconds`, vLLM's
buckets): from when the request reached the app to when the first response chunk that carries
output text left it. A pure ASGI middleware, as the auth is: the streaming body passes through.
"""

from __future__ import annotations

import bisect
import json
import time

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")
# vLLM's buckets of vllm:time_to_first_token_seconds (vllm/v1/metrics/loggers.py)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)


class ServerStats:
    """The counters the middleware keeps; `render(gauges)` is the /metrics body."""

    def __init__(self):
        self.in_flight = 0
        self.requests = 0
        self.ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)  # the last: above every bucket (+Inf only)
        self.ttft_sum = 0.0

    def observe_ttft(self, seconds: float) -> None:
        self.ttft_counts[bisect.bisect_left(TTFT_BUCKETS, seconds)] += 1
        self.ttft_sum += seconds

    def render(self, model: str, gauges: dict[str, float]) -> str:
        label = '{model_name="%s"}' % model.replace("\\", "\\\\").replace('"', '\\"')
        gauges = {"vllm:num_requests_running": float(self.in_flight), **gauges}
        lines = []
        for name, value in gauges.items():
            lines += [f"# TYPE {name} gauge", f"{name}{label} {float(value)}"]
        lines += ["# TYPE vllm:request_success counter", f"vllm:request_success_total{label} {float(self.requests)}"]
        name = "vllm:time_to_first_token_seconds"
        lines.append(f"# TYPE {name} histogram")
        cumulative = 0
        inner = label[1:-1]
        for le, n in zip([*TTFT_BUCKETS, float("inf")], self.ttft_counts):
            cumulative += n
            edge = "+Inf" if le == float("inf") else repr(le)
            lines.append(f'{name}_bucket{{{inner},le="{edge}"}} {float(cumulative)}')
        lines += [f"{name}_count{label} {float(cumulative)}", f"{name}_sum{label} {self.ttft_sum}"]
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Counts generation requests in flight and stamps each one's first chunk with output text."""

    def __init__(self, app, stats: ServerStats):
        self.app, self.stats = app, stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        stats, t0 = self.stats, time.perf_counter()
        first = False

        async def watch(message):
            nonlocal first
            if not first and message["type"] == "http.response.body" and _carries_text(message.get("body", b"")):
                first = True
                stats.observe_ttft(time.perf_counter() - t0)
            await send(message)

        stats.in_flight += 1
        try:
            await self.app(scope, receive, watch)
        finally:
            stats.in_flight -= 1
            stats.requests += 1


def _carries_text(body: bytes) -> bool:
    """Whether an SSE body chunk (or a whole JSON body) has output text: a chat stream's first
    chunk announces the role with empty content and is not a token."""
    for line in body.split(b"\n"):
        line = line.removeprefix(b"data: ").strip()
        if not line.startswith(b"{"):
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        for choice in msg.get("choices") or []:
            if choice.get("text") or (choice.get("delta") or {}).get("content") or \
                    (choice.get("message") or {}).get("content"):
                return True
    return False
