"""The engine's own view of a sweep point: its Prometheus `/metrics`, scraped while the point runs.

Each scrape is one line of `server_metrics.jsonl` in the run folder (the point, the scrape's
time on the records' clock, perf_counter, and the series below that the engine exposes), so the
engine's queue can be drawn on the same time axis as the client's requests in flight. The
point's summary gets the series' mean and max, the prefix-cache hit rate over the point, and the
engine's own TTFT histogram differenced around the point, beside the client's TTFT counted in the
same buckets: a check that both ends measure the same thing (the engine's TTFT starts when it
received the request, after the client's send, so it should be the same or a little lower).

Names: vLLM's (v1: `vllm:kv_cache_usage_perc`, `vllm:prefix_cache_queries/hits`; older:
`vllm:gpu_cache_usage_perc`, `vllm:gpu_prefix_cache_*`), llama-server's `--metrics`
(`llamacpp:requests_processing/deferred`), and the in-house engines, which expose vLLM's names
for what they have (backends/openai_server/metrics.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import time

import httpx

from backends.vllm.metrics import parse_samples

SERIES = {
    "running": ("vllm:num_requests_running", "llamacpp:requests_processing"),
    "waiting": ("vllm:num_requests_waiting", "llamacpp:requests_deferred"),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "llamacpp:kv_cache_usage_ratio"),
    # counters, in tokens: differenced over the point for its hit rate
    "prefix_cache_queries": ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries"),
    "prefix_cache_hits": ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits"),
}
TTFT_HISTOGRAM = "vllm:time_to_first_token_seconds"
GAUGES = ("running", "waiting", "kv_cache_usage")
FILE = "server_metrics.jsonl"


def read_series(text: str) -> tuple[dict, dict | None]:
    """({series: value}, TTFT histogram {"buckets": {le: cumulative count}, "count", "sum"} or
    None), each summed over label sets (several engine cores, models)."""
    wanted = {name: key for key, names in SERIES.items() for name in names}
    values: dict[str, float] = {}
    hist: dict = {"buckets": {}, "count": 0.0, "sum": 0.0}
    seen_hist = False
    for name, labels, value in parse_samples(text):
        if name.endswith("_created"):
            continue
        base = name.removesuffix("_total")
        if base in wanted and not math.isnan(value):
            key = wanted[base]
            values[key] = values.get(key, 0.0) + value
        elif name == TTFT_HISTOGRAM + "_bucket" and "le" in labels:
            le = float(labels["le"])
            hist["buckets"][le] = hist["buckets"].get(le, 0.0) + value
            seen_hist = True
        elif name == TTFT_HISTOGRAM + "_count":
            hist["count"] += value
        elif name == TTFT_HISTOGRAM + "_sum":
            hist["sum"] += value
    return values, (hist if seen_hist else None)


class ServerMetrics:
    """Scrapes `<root>/metrics` every `interval_s` while a point runs (an async context), and
    once more at its end. An engine without /metrics is noted once, not an error."""

    def __init__(self, base_url: str, api_key: str | None, point: str, sink, interval_s: float = 0.5):
        self.url = base_url.rstrip("/").removesuffix("/v1") + "/metrics"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.point, self.sink, self.interval_s = point, sink, interval_s
        self.samples: list[dict] = []
        self.hists: list[dict] = []  # the first and the latest histogram snapshot
        self.error: str | None = None
        self._task: asyncio.Task | None = None
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> ServerMetrics:
        if self.interval_s > 0:
            self._http = httpx.AsyncClient(timeout=10, headers=self.headers)
            await self._scrape()  # before the first request: the counters' and histogram's start
            if self.error is None:
                self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            await self._scrape()  # after the last answer: what the point left
        if self._http is not None:
            await self._http.aclose()

    async def _loop(self) -> None:
        while self.error is None:
            await asyncio.sleep(self.interval_s)
            await self._scrape()

    async def _scrape(self) -> None:
        t0 = time.perf_counter()
        try:
            r = await self._http.get(self.url)
            r.raise_for_status()
        except httpx.HTTPError as e:
            self.error = f"no metrics from {self.url}: {type(e).__name__}: {e}"[:300]
            return
        t = (t0 + time.perf_counter()) / 2  # the scrape's midpoint, on the records' clock
        values, hist = read_series(r.text)
        row = {"point": self.point, "t": t, **values}
        self.samples.append(row)
        if hist is not None:  # kept: the first (the point's start) and the latest
            self.hists = [self.hists[0], hist] if self.hists else [hist]
        self.sink(row)

    def summary(self, client_ttfts_s: list[float]) -> dict:
        """The point's server view: gauges (mean, max), prefix-cache hit rate, and the TTFT check."""
        if self.interval_s <= 0:
            return {"status": "off"}
        if not self.samples:
            return {"status": "unavailable", "reason": self.error}
        out: dict = {"status": "scraped", "samples": len(self.samples), "file": FILE}
        if self.error:
            out["note"] = self.error
        for key in GAUGES:
            vals = [s[key] for s in self.samples if key in s]
            if vals:
                out[key] = {"mean": sum(vals) / len(vals), "max": max(vals)}
        first, last = self.samples[0], self.samples[-1]
        if "prefix_cache_queries" in last:
            q = last["prefix_cache_queries"] - first.get("prefix_cache_queries", 0.0)
            h = last.get("prefix_cache_hits", 0.0) - first.get("prefix_cache_hits", 0.0)
            out["prefix_cache"] = {"queried_tokens": q, "hit_tokens": h, "hit_rate": h / q if q > 0 else None}
        if len(self.hists) == 2:
            out["ttft_check"] = ttft_check(self.hists[0], self.hists[1], client_ttfts_s)
        return out


def ttft_check(before: dict, after: dict, client_s: list[float]) -> dict:
    """The engine's TTFT histogram over the point (after - before) and the client's TTFTs counted
    in the same buckets (cumulative counts, as Prometheus has them), with each side's mean."""
    edges = sorted(after["buckets"])
    count = after["count"] - before["count"]
    engine = [after["buckets"][le] - before["buckets"].get(le, 0.0) for le in edges]
    client = [sum(1 for v in client_s if v <= le) for le in edges]
    return {
        "buckets_le_s": [le if math.isfinite(le) else "inf" for le in edges],
        "engine_cumulative": engine,
        "client_cumulative": client,
        "engine_count": count,
        "client_count": len(client_s),
        "engine_mean_ms": (after["sum"] - before["sum"]) / count * 1000 if count > 0 else None,
        "client_mean_ms": sum(client_s) / len(client_s) * 1000 if client_s else None,
    }


class JsonlSink:
    """Appends each scrape to the run folder's server_metrics.jsonl, flushed (as records are)."""

    def __init__(self, path):
        self.path = path

    def __call__(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
