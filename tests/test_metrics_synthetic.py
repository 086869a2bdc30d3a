"""Metrics and load generation: the harness's real client against an engine whose timing is known
(backends.synthetic, in a subprocess so its event loop neither shares the client's GIL nor
distorts its timings), plus unit tests of the metrics, the load patterns and the request
payloads that need no server."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from harness.adapter import EngineClient, GenRequest, RequestRecord, _TokenTimes
from harness.config import SLO
from harness.launchers.process import free_port
from harness.bench.loadgen import poisson_gaps, rate_fields, run_point
from harness.bench.metrics import distribution, e2e, itls, summarize, token_itls, ttft, tpot
from backends.synthetic import launch, start_in_thread

TTFT_MS, ITL_MS, OUT = 100.0, 20.0, 16


def tolerance(ms: float) -> float:
    return max(1.0, 0.02 * ms)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    log = tmp_path_factory.mktemp("synthetic") / "engine.log"
    with launch(log_path=log, ttft_ms=TTFT_MS, itl_ms=ITL_MS) as endpoint:
        yield endpoint


async def _bench(endpoint, concurrency: int, n: int, chat: bool = False):
    """One sweep point through the real client and load generator, plus the server's counters."""
    if chat:
        reqs = [GenRequest(messages=[{"role": "user", "content": f"hi number {i}"}],
                           max_tokens=OUT, fixed_output=True) for i in range(n)]
    else:
        reqs = [GenRequest(prompt=f"one two three {i}", max_tokens=OUT, fixed_output=True)
                for i in range(n)]
    async with EngineClient(endpoint.base_url, endpoint.model) as client:
        before = (await client.get("/engine"))["counters"]
        # one warm-up request, as `bench` does
        await client.generate(reqs[0], RequestRecord(request_id=-1))
        records = await run_point(client, reqs, "concurrency", concurrency, 0, lambda r: None)
        after = (await client.get("/engine"))["counters"]
        trace = (await client.get("/engine/trace"))["requests"]
    return records, {k: after[k] - before[k] for k in before}, trace


# --- the client's measurement against known timing -------------------------------------------

REQUESTS = {1: 6, 64: 128}  # about 2.5 s and 1 s per attempt
ATTEMPTS = 3


class Measurements:
    """Sweep points measured on demand and kept, so each test takes the best of up to three
    attempts: a busy shared machine delays single runs, while a bias of the harness (a TCP
    connect or client-side queueing counted in TTFT) shows in every attempt."""

    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.runs: dict[int, list[dict]] = {1: [], 64: []}

    def best(self, concurrency: int, metric: str, injected_ms: float) -> float:
        errors = []
        for i in range(ATTEMPTS):
            if i == len(self.runs[concurrency]):
                self.runs[concurrency].append(self.measure(concurrency))
            run = self.runs[concurrency][i]
            errors.append(run["summary"][metric]["p50"] - injected_ms)
            if abs(errors[-1]) <= tolerance(injected_ms):
                return errors[-1]
        late = [round(r["server_first_token_late_ms"], 3) for r in self.runs[concurrency]]
        pytest.fail(f"{metric} p50 - injected at concurrency {concurrency}: "
                    f"{[round(e, 3) for e in errors]} ms per attempt, tolerance "
                    f"{tolerance(injected_ms)} ms (the engine's own mean first-token lateness: "
                    f"{late} ms; TTFT error by share, p50 ms: "
                    f"{[r['shares'] for r in self.runs[concurrency]]}; "
                    f"load average {os.getloadavg()})")

    def measure(self, concurrency: int) -> dict:
        n = REQUESTS[concurrency]
        records, server, trace = asyncio.run(_bench(self.endpoint, concurrency, n))
        s = summarize(records)
        assert s["completed"] == n, s.get("first_error")
        assert s["output_tokens"] == n * OUT and s["output_len_mismatch"] == 0
        assert s["prompt_tokens"] == n * 4  # word count of "one two three i"
        assert all(r.text == "".join(f" t{k}" for k in range(OUT)) for r in records)
        assert all(len(r.token_times) == OUT for r in records)
        # keep-alive: one connection per stream, not one per request (a `break` on [DONE]
        # used to drop every connection, so each request paid a TCP connect in its TTFT)
        assert server["connections"] <= concurrency + 1, server
        late = 1000 * server["first_token_late_s_sum"] / max(server["requests"], 1)
        return {"summary": s, "server_first_token_late_ms": late, "shares": _shares(records, trace)}


def _shares(records, trace) -> dict:
    """Each request's TTFT error split at the engine's own clock stamps (CLOCK_MONOTONIC, which
    perf_counter reads too on Linux), as p50s in ms: send to the engine's read of the request,
    the engine's lateness in sending the first token, and its send to the client's stamp."""
    by_prompt = {t["prompt"]: t for t in trace}
    parts = {"to_engine": [], "engine_late": [], "to_client_stamp": []}
    for r in records:
        t = by_prompt[_prompt_of(r)]
        parts["to_engine"].append(t["arrived"] - r.send)
        parts["engine_late"].append(t["first_token_sent"] - t["first_token_due"])
        parts["to_client_stamp"].append(r.first_token - t["first_token_sent"])
    return {k: round(1000 * float(np.median(v)), 3) for k, v in parts.items()}


def _prompt_of(r: RequestRecord) -> str:
    return f"one two three {r.request_id}"  # the prompts of _bench


@pytest.fixture(scope="module")
def measured(synthetic):
    return Measurements(synthetic)


@pytest.mark.parametrize("concurrency", [1, 64])
@pytest.mark.parametrize("metric", ["itl_ms", "tpot_ms"])
def test_itl_and_tpot_match_injected(measured, concurrency, metric):
    measured.best(concurrency, metric, ITL_MS)


def test_ttft_matches_injected_one_stream(measured):
    measured.best(1, "ttft_ms", TTFT_MS)


@pytest.mark.xfail(strict=False, reason=(
    "passes at load ~2 (5 runs in 5; the httpx client 0 in 5) but not reliably on a shared "
    "2-core machine under other load: the client's share is now small (arrivals stamped at the "
    "socket read: 0.1 to 0.6 ms from the engine's send to the client's stamp, p50, see "
    "test_client_stamps_the_first_token_when_it_arrives; 1.2 to 4.3 ms with httpx), and the rest "
    "is the synthetic engine's: 64 requests sent in a burst reach its loop 0.5 to 1.4 ms after "
    "they leave (it is busy sending other streams' last tokens; up to 3 ms at load 5) and its "
    "first tokens leave 0.3 to 0.5 ms late (up to 4 ms at load 5). Single-run p50 error: +1.5 to "
    "+2.7 ms at load 1.6, +1.7 to +5.8 ms at load 4-5 (best of 3 passed 1 time in 9)"))
def test_ttft_matches_injected_64_streams(measured):
    measured.best(64, "ttft_ms", TTFT_MS)


@pytest.mark.skipif(sys.platform != "linux", reason="needs perf_counter on CLOCK_MONOTONIC, "
                    "which the engine process reads too (Linux)")
@pytest.mark.parametrize("concurrency", [1, 64])
def test_client_stamps_the_first_token_when_it_arrives(measured, concurrency):
    """The client's own share of the TTFT error, from the engine's send of the first token to
    the client's stamp, within 1 ms (p50): the part of the error the harness is answerable for,
    whatever the engine's own scheduling adds. Stamping in the coroutine that parses (httpx)
    made this 1.2 to 2.6 ms at 64 streams on a loaded 2-core machine; stamping at the socket
    read, 0.1 to 0.9 ms."""
    shares = []
    for i in range(ATTEMPTS):
        if i == len(measured.runs[concurrency]):
            measured.runs[concurrency].append(measured.measure(concurrency))
        shares.append(measured.runs[concurrency][i]["shares"])
        if shares[-1]["to_client_stamp"] <= 1.0:
            return
    pytest.fail(f"p50 ms per attempt: {shares}; load average {os.getloadavg()}")


def test_ttft_at_64_streams_has_no_client_queueing(measured):
    """A looser guard that holds today: the connection pool and the early send stamp, fixed in
    the adapter, added +15 ms to +3 s to the p50 TTFT at 64 streams on this machine."""
    errors = [r["summary"]["ttft_ms"]["p50"] - TTFT_MS for r in measured.runs[64]]
    while len(errors) < ATTEMPTS and min(errors, default=99) >= 15:
        errors.append(measured.measure(64)["summary"]["ttft_ms"]["p50"] - TTFT_MS)
    assert 0 < min(errors) < 15, errors


def test_chat_role_chunk_is_not_the_first_token(synthetic):
    # the synthetic engine sends {"role": "assistant", "content": ""} at once, as vLLM does
    records, _, _ = asyncio.run(_bench(synthetic, 1, 2, chat=True))
    s = summarize(records)
    assert s["completed"] == 2 and s["output_tokens"] == 2 * OUT
    assert s["prompt_tokens"] == 2 * 3
    assert TTFT_MS - 1 < s["ttft_ms"]["p50"] < TTFT_MS + 10


def test_engine_route_says_what_it_is(synthetic):
    async def get():
        async with EngineClient(synthetic.base_url, synthetic.model) as c:
            return await c.get("/engine"), await c.get("/models")

    info, models = asyncio.run(get())
    assert info["engine"] == "synthetic"
    assert (info["ttft_ms"], info["itl_ms"]) == (TTFT_MS, ITL_MS)
    assert models["data"][0]["id"] == synthetic.model == "synthetic"


# --- tokens, not text: empty-text and multi-token chunks (issue 15) ----------------------------

# knobs of the synthetic engine -> (TTFT, ITL per chunk, ITL per token, tokens per chunk) in ms
# as the client must report them (TTFT_MS 100, ITL_MS 20, 16 tokens). Token 0 is one of the
# empty ones, so a client that timed the first text would report TTFT 120 and per-chunk ITL 40.
CHUNKING = {
    "empty-text chunks": (dict(empty_text_every=2), (100, 20, 20, 1)),
    "no chunk for empty text": (dict(empty_text_every=2, empty_chunks="skip"), (120, 40, 20, 2)),
    "four tokens a chunk": (dict(tokens_per_chunk=4), (160, 80, 20, 4)),
    "only empty text": (dict(empty_text_every=1), (100, 20, 20, 1)),
}


@pytest.mark.parametrize("case", sorted(CHUNKING))
def test_tokens_are_timed_not_text(case, tmp_path):
    knobs, want = CHUNKING[case]
    per_chunk = want[3]
    misses = []
    with launch(log_path=tmp_path / "engine.log", ttft_ms=TTFT_MS, itl_ms=ITL_MS, **knobs) as ep:
        for _ in range(ATTEMPTS):  # a busy shared machine delays single runs; a bias shows in all
            records, _, _ = asyncio.run(_bench(ep, 1, 3))
            s = summarize(records)
            assert s["completed"] == 3 and s["output_tokens"] == 3 * OUT, s.get("first_error")
            for r in records:
                assert sum(r.chunk_tokens) == OUT and r.tokens_from == "usage"
                assert set(r.chunk_tokens) == {per_chunk} and r.first_token is not None
            if case == "only empty text":
                assert all(r.text == "" for r in records)  # and still a TTFT, at the first token
            assert s["tokens_per_chunk"] == {"mean": per_chunk, "counted_from": ["usage"]}
            # the best TTFT of the 3 (a delay never hastens one) and the ITLs' p50, each within
            # max(1 ms, 2%) + 1 ms
            got = (s["ttft_ms"]["min"], s["itl_ms"]["p50"], s["itl_token_ms"]["p50"])
            if all(abs(g - w) <= tolerance(w) + 1 for g, w in zip(got, want)):
                return
            misses.append([round(g, 2) for g in got])
    pytest.fail(f"TTFT min, ITL per chunk p50, ITL per token p50 (ms) per attempt: {misses}, "
                f"wanted {want[:3]}; load average {os.getloadavg()}")


def _events(*msgs) -> list[bytes]:
    return [json.dumps(m).encode() for m in msgs] + [b"[DONE]"]


def _read(events) -> RequestRecord:
    """The adapter's reading of a stream's events, stamped 1.0, 2.0, ...; no server."""
    rec = RequestRecord(request_id=0)
    tokens = _TokenTimes(rec)
    for t, data in enumerate(events, 1):
        tokens.on_event(float(t), data)
    tokens.finish()
    return rec


def _choice(text, **extra):
    return {"choices": [{"index": 0, "text": text, "finish_reason": None, **extra}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 5}}


def test_token_counts_without_usage_per_chunk():
    """A server without continuous usage: token ids, else logprobs, else one per text chunk."""
    rec = _read(_events(_choice("", token_ids=[7, 8]), _choice("ab", token_ids=[9, 10, 11]), USAGE))
    assert (rec.token_times, rec.chunk_tokens, rec.tokens_from) == ([1.0, 2.0], [2, 3], "token_ids")
    rec = _read(_events(_choice("a", logprobs={"tokens": ["a", ""], "token_logprobs": [0, 0]}),
                        _choice("b", logprobs={"tokens": ["b"]}), USAGE))
    assert (rec.chunk_tokens, rec.tokens_from) == ([2, 1], "logprobs")
    rec = _read(_events(_choice("a"), _choice(""), _choice("b"), USAGE))
    assert (rec.token_times, rec.chunk_tokens, rec.tokens_from) == ([1.0, 3.0], [1, 1], "text")
    assert rec.output_tokens == 5 and rec.text == "ab"


def test_only_empty_text_without_usage_per_chunk_still_has_a_ttft():
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    empty = {"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": None}]}
    rec = _read(_events(role, empty, empty, USAGE))
    assert rec.first_token == 2.0  # the first chunk after the role, not the role itself
    assert (rec.chunk_tokens, rec.tokens_from) == ([5], "usage_total")
    assert tpot(rec) == pytest.approx((5.0 - 2.0) / 4)  # [DONE] at 5.0


def test_usage_per_chunk_counts_tokens_of_chunks_without_text():
    def chunk(text, done):
        return {**_choice(text), "usage": {"prompt_tokens": 2, "completion_tokens": done}}

    rec = _read(_events(chunk("", 0), chunk("", 2), chunk("x", 3), chunk("yz", 7), USAGE))
    assert (rec.token_times, rec.chunk_tokens, rec.tokens_from) == ([2.0, 3.0, 4.0], [2, 1, 4], "usage")
    assert rec.first_token == 2.0 and rec.output_tokens == 5  # the last usage is the server's word
    assert itls(rec) == [1.0, 1.0] and token_itls(rec) == [1.0] + [0.25] * 4


def test_an_event_that_is_not_a_json_object_is_refused():
    for bad in (b"[1, 2]", b"{not json", b" 7 "):
        with pytest.raises(ValueError):  # generate() makes it the record's error
            _read([bad])


# --- errors are data ---------------------------------------------------------------------------


def test_closed_port_is_a_record_with_an_error():
    async def go():
        async with EngineClient(f"http://127.0.0.1:{free_port()}/v1", "m") as c:
            return await c.generate(GenRequest(prompt="hi"), RequestRecord(request_id=0))

    rec = asyncio.run(go())
    assert rec.error and "ConnectError" in rec.error
    assert rec.first_token is None and rec.token_times == [] and rec.end >= rec.send > 0


def test_http_errors_are_records_and_counted():
    with start_in_thread(ttft_ms=0, itl_ms=0, fail_rate=1.0) as srv:
        async def go():
            async with EngineClient(srv.base_url, "synthetic") as c:
                reqs = [GenRequest(prompt="hi", max_tokens=4)] * 3
                return await run_point(c, reqs, "concurrency", 2, 0, lambda r: None)

        records = asyncio.run(go())
    assert len(records) == 3 and all(r.error == "HTTP 500: synthetic failure (fail_rate)"
                                     for r in records)
    s = summarize(records)
    assert (s["requests"], s["completed"], s["failed"]) == (3, 0, 3)
    assert s["first_error"].startswith("HTTP 500")


# --- metrics on hand-made records ---------------------------------------------------------------


def _rec(i, send, ttft_s, itl_s, n, ok=True, expected=None) -> RequestRecord:
    first = send + ttft_s
    times = [first + k * itl_s for k in range(n)]
    return RequestRecord(request_id=i, send=send, first_token=first, token_times=times,
                         end=times[-1], prompt_tokens=10, output_tokens=n,
                         expected_output_tokens=expected, error=None if ok else "boom")


def test_per_request_formulas():
    r = _rec(0, send=1.0, ttft_s=0.1, itl_s=0.02, n=16)
    assert ttft(r) == pytest.approx(0.1)
    assert e2e(r) == pytest.approx(0.1 + 15 * 0.02)
    assert tpot(r) == pytest.approx(0.02)  # (E2E - TTFT) / (output tokens - 1)
    assert itls(r) == pytest.approx([0.02] * 15)
    one = _rec(1, send=0.0, ttft_s=0.1, itl_s=0.02, n=1)
    assert tpot(one) is None and itls(one) == []
    # TPOT uses the server's usage count, not the number of chunks
    r.output_tokens = 31
    assert tpot(r) == pytest.approx(15 * 0.02 / 30)


def test_distribution_percentiles_in_ms():
    d = distribution(np.arange(1, 101) / 1000.0)  # 1..100 ms
    assert d["mean"] == pytest.approx(50.5) and d["min"] == 1 and d["max"] == 100
    assert (d["p50"], d["p90"], d["p99"]) == pytest.approx((50.5, 90.1, 99.01))
    assert distribution([]) is None


def test_summary_goodput_failures_and_length_mismatch():
    records = [
        _rec(0, 0.0, 0.10, 0.02, 16, expected=16),  # meets the SLOs
        _rec(1, 0.0, 0.10, 0.02, 16, expected=16),  # meets the SLOs
        _rec(2, 0.5, 0.90, 0.02, 16, expected=16),  # TTFT too slow
        _rec(3, 1.0, 0.10, 0.05, 12, expected=16),  # TPOT too slow and 4 tokens short
        RequestRecord(request_id=4, send=0.2, end=2.0, error="HTTP 500: x"),
    ]
    s = summarize(records, SLO(ttft_ms=500, tpot_ms=30))
    assert (s["requests"], s["completed"], s["failed"]) == (5, 4, 1)
    assert s["first_error"] == "HTTP 500: x"
    duration = 2.0  # first send (0.0) to last end, the failed request's included
    assert s["duration_s"] == pytest.approx(duration)
    assert s["output_tokens"] == 16 * 3 + 12 and s["prompt_tokens"] == 40
    assert s["request_throughput"] == pytest.approx(4 / duration)
    assert s["output_throughput"] == pytest.approx(60 / duration)
    assert s["total_token_throughput"] == pytest.approx(100 / duration)
    assert s["goodput"] == pytest.approx(2 / duration)
    assert s["slo_attainment"] == pytest.approx(2 / 5)  # failed requests count against it
    assert s["output_len_mismatch"] == 1
    assert s["ttft_ms"]["max"] == pytest.approx(900)
    assert s["itl_ms"]["p50"] == pytest.approx(20)
    assert len(records) == 5  # summarizing keeps every record


def test_summary_without_slo_or_successes():
    ok = [_rec(0, 0.0, 0.1, 0.02, 4)]
    assert "goodput" not in summarize(ok) and "goodput" not in summarize(ok, SLO())
    failed = [RequestRecord(request_id=0, send=0.0, end=0.1, error="x")]
    assert summarize(failed) == {"requests": 1, "completed": 0, "failed": 1, "first_error": "x"}


# --- load patterns (a stand-in client: no server, no network) -----------------------------------


class _InstantClient:
    """Records the send time and how many requests are in flight."""

    def __init__(self, hold_s: float = 0.0):
        self.hold_s = hold_s
        self.in_flight = self.peak = 0

    async def generate(self, req, rec):
        rec.send = time.perf_counter()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(self.hold_s)
        self.in_flight -= 1
        rec.end = time.perf_counter()
        return rec


def _sends(kind, value, n, hold_s=0.0, max_concurrency=None, seed=0):
    client = _InstantClient(hold_s)
    records = asyncio.run(run_point(client, [GenRequest()] * n, kind, value, seed,
                                    lambda r: None, max_concurrency))
    assert [r.request_id for r in records] == list(range(n))
    assert all(r.point.startswith(kind + "=") for r in records)
    return np.array([r.send for r in records]), client


def test_poisson_mean_gap_is_one_over_rate():
    rate, n = 100.0, 100
    sends, _ = _sends("rate", rate, n)
    gaps = np.diff(np.sort(sends))
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.25)
    assert 0.5 < gaps.std() / gaps.mean() < 1.5  # exponential gaps: CV near 1, not a metronome


def test_poisson_schedule_is_seeded():
    a, _ = _sends("rate", 50.0, 30, seed=7)
    b, _ = _sends("rate", 50.0, 30, seed=7)
    c, _ = _sends("rate", 50.0, 30, seed=8)
    same = np.corrcoef(np.diff(a), np.diff(b))[0, 1]
    other = np.corrcoef(np.diff(a), np.diff(c))[0, 1]
    assert same > 0.95 > other  # the same draws, timer noise aside


def test_infinite_rate_sends_everything_at_once():
    sends, client = _sends("rate", math.inf, 50, hold_s=0.05)
    assert sends.max() - sends.min() < 0.02
    assert client.peak == 50


def test_rate_sweep_respects_max_concurrency():
    _, client = _sends("rate", math.inf, 20, hold_s=0.01, max_concurrency=4)
    assert client.peak == 4


def test_closed_loop_keeps_exactly_n_streams():
    _, client = _sends("concurrency", 3, 12, hold_s=0.01)
    assert client.peak == 3


def test_closed_loop_reports_each_streams_gap_before_its_next_send():
    client = _InstantClient(hold_s=0.002)
    written = []
    records = asyncio.run(run_point(client, [GenRequest()] * 12, "concurrency", 3, 0,
                                    written.append))
    gaps = [r.send_gap for r in records]
    assert gaps[:3] == [None] * 3 and all(g is not None and 0 <= g < 0.05 for g in gaps[3:])
    # on_record sees each record after its stream's next send, with its gap already set
    assert sorted((r.request_id, r.send_gap) for r in written) == list(enumerate(gaps))
    assert summarize(records)["send_gap_ms"]["max"] < 50
    rate = asyncio.run(run_point(_InstantClient(), [GenRequest()] * 4, "rate", 100.0, 0,
                                 lambda r: None))
    assert all(r.send_gap is None for r in rate) and "send_gap_ms" not in summarize(rate)


def test_rate_fields_say_what_the_seeded_schedule_drew():
    sends, _ = _sends("rate", 50.0, 20, seed=3)
    records = [RequestRecord(request_id=i, send=t) for i, t in enumerate(sends)]
    f = rate_fields(records, 50.0, seed=3)
    drawn = poisson_gaps(20, 50.0, seed=3)
    assert f["schedule_rate"] == pytest.approx(20 / drawn.sum())
    assert f["send_rate"] == pytest.approx(f["schedule_rate"], rel=0.2)  # the client kept up
    assert rate_fields(records, math.inf, seed=3)["schedule_rate"] == math.inf


def test_summary_has_the_schedule_rate_of_every_rate_point(tmp_path):
    """`hyperbench bench --rate`: each point says its target, the seeded schedule's own rate and
    the rates sent and completed, so a short draw is not read as client lag."""
    data = tmp_path / "prompts.jsonl"  # text prompts: no tokenizer to load
    data.write_text("".join(json.dumps({"prompt": f"prompt {i}"}) + "\n" for i in range(12)))
    with start_in_thread(ttft_ms=0, itl_ms=0) as srv:
        res = subprocess.run(
            [sys.executable, "-m", "harness.cli", "bench", "--url", srv.base_url, "--model",
             "synthetic", "--dataset", str(data), "--rate", "40,80", "--num-requests", "12",
             "--output-len", "2",
             "--warmup", "0", "--no-plots", "--results-dir", str(tmp_path), "--run-name", "r"],
            capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    points = json.loads((tmp_path / "r" / "summary.json").read_text())["points"]
    assert [p["rate"] for p in points] == [40, 80]
    for p in points:
        drawn = poisson_gaps(12, p["rate"], seed=0)  # the workload's default seed
        assert p["schedule_rate"] == pytest.approx(12 / drawn.sum())
        assert p["send_rate"] == pytest.approx(p["schedule_rate"], rel=0.25)
        assert p["request_throughput"] > 0


# --- request payloads, without a server: the payload builders are pure -----------------------------------------------------


@pytest.fixture
def client():
    c = EngineClient("http://engine:8000/v1/", "tiny")
    yield c
    asyncio.run(c.__aexit__(None, None, None))


# every chunk carries the usage so far: tokens are counted per chunk whatever their text
STREAM_OPTIONS = {"include_usage": True, "continuous_usage_stats": True}


def test_completions_payload(client):
    path, body = client.payload(GenRequest(prompt="Hello", max_tokens=8,
                                           sampling={"temperature": 0.0, "seed": 1}))
    assert path == "/completions"
    assert body == {"model": "tiny", "max_tokens": 8, "temperature": 0.0, "seed": 1,
                    "stream": True, "stream_options": STREAM_OPTIONS, "prompt": "Hello"}
    assert client.base_url == "http://engine:8000/v1"


def test_fixed_output_payload_forces_the_length(client):
    _, body = client.payload(GenRequest(prompt=[1, 2, 3], max_tokens=32, fixed_output=True))
    assert body == {"model": "tiny", "max_tokens": 32, "min_tokens": 32, "ignore_eos": True,
                    "stream": True, "stream_options": STREAM_OPTIONS,
                    "prompt": [1, 2, 3]}


def test_chat_payload_and_unstreamed(client):
    messages = [{"role": "user", "content": "hi"}]
    path, body = client.payload(GenRequest(messages=messages, max_tokens=4), stream=False)
    assert path == "/chat/completions"
    assert body == {"model": "tiny", "max_tokens": 4, "messages": messages}
