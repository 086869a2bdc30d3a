"""The wire contract: the same assertions against every engine that runs here.

`engine_server` (tests/conftest.py) starts a real engine server on the tiny model and yields
`.base_url` (ends in /v1), `.model` (served name), `.model_path` (HF folder of the same weights)
and `.kind`. Plain sync httpx; nothing here knows how an engine is built.

The tiny model is random: its text is gibberish, so tests compare an engine with itself (greedy
vs greedy, stream vs non-stream, batched vs alone) or with a transformers forward pass, never
with expected words.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from harness.adapter import KEEPALIVE_EXPIRY_S

PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog",
    "Once upon a time",
    "1 2 3 4",
    "What is the capital of France? The capital is",
    "a",
    "Write a story about a small robot who learns to paint, in three sentences.",
    "The",
]


@pytest.fixture(scope="module")
def client(engine_server):
    # idle connections dropped before the server's idle close, as the harness's own client does
    limits = httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S)
    with httpx.Client(base_url=engine_server.base_url, timeout=120, limits=limits) as c:
        yield c


@pytest.fixture(scope="module")
def tokenizer(engine_server):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(engine_server.model_path)


def complete(client, engine_server, **payload) -> dict:
    try:
        r = client.post("/completions", json={"model": engine_server.model, **payload})
    except httpx.RemoteProtocolError:
        # a kept-alive connection the server closed as the request went out (no byte of a
        # response: llama-server's cpp-httplib did so once in CI, on its 6th request): once more,
        # on a new connection; a server that really died fails this second try too
        r = client.post("/completions", json={"model": engine_server.model, **payload})
    assert r.status_code == 200, r.text
    return r.json()


def greedy(client, engine_server, prompt, max_tokens=16, **extra) -> dict:
    return complete(client, engine_server, prompt=prompt, max_tokens=max_tokens, temperature=0,
                    ignore_eos=True, **extra)  # fmt: skip


def stream_events(client, path, payload) -> list:
    """The `data:` payloads of an SSE response, parsed (the final "[DONE]" kept as a string)."""
    events = []
    with client.stream("POST", path, json={**payload, "stream": True}) as r:
        assert r.status_code == 200, r.read().decode()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                data = line[len("data:") :].strip()
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def check_usage(usage: dict, completion_tokens: int | None = None) -> None:
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if completion_tokens is not None:
        assert usage["completion_tokens"] == completion_tokens


# --- discovery --------------------------------------------------------------------------------


def test_health(engine_server):
    root = engine_server.base_url.removesuffix("/v1")
    assert httpx.get(f"{root}/health", timeout=10).status_code == 200


def test_models_lists_served_name(client, engine_server):
    body = client.get("/models").json()
    assert engine_server.model in [m["id"] for m in body["data"]]


def test_engine_info(client, engine_server):
    info = client.get("/engine").json()
    assert info["engine"] == engine_server.kind
    for key in ("model", "dtype", "quantization", "device", "weight_bytes", "counters"):
        assert key in info, key
    assert isinstance(info["weight_bytes"], int) and info["weight_bytes"] > 0
    assert isinstance(info["counters"], dict)
    # the precision that runs, after the engine's own defaults, in one shape for every engine
    assert set(info["precision"]) == {"weights", "activations", "kv_cache"}
    assert all(isinstance(v, str) and v for v in info["precision"].values())


# --- completions ------------------------------------------------------------------------------


def test_completion_text_prompt(client, engine_server):
    body = greedy(client, engine_server, "Hello world", max_tokens=8)
    assert body["object"] == "text_completion"
    (choice,) = body["choices"]
    assert choice["index"] == 0 and isinstance(choice["text"], str)
    assert choice["finish_reason"] == "length"
    check_usage(body["usage"], 8)


def test_completion_token_id_prompt_matches_text(client, engine_server, tokenizer):
    ids = tokenizer("Hello world").input_ids
    by_text = greedy(client, engine_server, "Hello world")
    by_ids = greedy(client, engine_server, ids)
    assert by_ids["usage"]["prompt_tokens"] == len(ids) == by_text["usage"]["prompt_tokens"]
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]


def test_batch_of_prompts(client, engine_server, tokenizer):
    prompts = PROMPTS[:4]
    body = greedy(client, engine_server, prompts, max_tokens=10)
    choices = sorted(body["choices"], key=lambda c: c["index"])
    assert [c["index"] for c in choices] == list(range(len(prompts)))
    alone = [greedy(client, engine_server, p, max_tokens=10)["choices"][0]["text"] for p in prompts]
    assert [c["text"] for c in choices] == alone  # padding in a batch changes nothing
    check_usage(body["usage"], 10 * len(prompts))
    # a batch of token-id prompts too
    ids = [tokenizer(p).input_ids for p in prompts]
    by_ids = greedy(client, engine_server, ids, max_tokens=10)
    assert [c["text"] for c in sorted(by_ids["choices"], key=lambda c: c["index"])] == alone
    assert by_ids["usage"]["prompt_tokens"] == sum(len(x) for x in ids)


def test_streaming_completion(client, engine_server):
    payload = {"model": engine_server.model, "prompt": "Once upon a time", "max_tokens": 12,
               "temperature": 0, "ignore_eos": True, "stream_options": {"include_usage": True}}  # fmt: skip
    events = stream_events(client, "/completions", payload)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    check_usage(usage_chunk["usage"], 12)
    text_chunks = [c for c in chunks[:-1] if c["choices"]]
    assert len(text_chunks) >= 2, "tokens must arrive as several chunks, not one"
    assert all(c["object"] == "text_completion" for c in text_chunks)
    assert all(c["choices"][0]["index"] == 0 for c in text_chunks)
    assert text_chunks[-1]["choices"][0]["finish_reason"] == "length"
    streamed = "".join(c["choices"][0]["text"] for c in text_chunks)
    plain = greedy(client, engine_server, "Once upon a time", max_tokens=12)
    assert streamed == plain["choices"][0]["text"]


# --- chat -------------------------------------------------------------------------------------


def test_chat_completion(client, engine_server):
    payload = {"model": engine_server.model, "max_tokens": 8, "temperature": 0,
               "messages": [{"role": "user", "content": "Say hello."}]}  # fmt: skip
    r = client.post("/chat/completions", json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    check_usage(body["usage"])
    assert 1 <= body["usage"]["completion_tokens"] <= 8

    events = stream_events(client, "/chat/completions",
                           {**payload, "stream_options": {"include_usage": True}})  # fmt: skip
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content == message["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == body["choices"][0]["finish_reason"]
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert events[-2]["choices"] == []
    assert [events[-2]["usage"][k] for k in counts] == [body["usage"][k] for k in counts]


# --- logprobs and echo (the loglikelihood path of lm-eval) --------------------------------------


def reference_prompt_logprobs(model_path: Path, ids: list[int]):
    """(logprob of token i given tokens < i, top-1 logprob) for i >= 1, from transformers in fp32."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if not (Path(model_path) / "config.json").exists():
        pytest.skip("model_path is not a transformers folder")
    model = transformers.AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    lp = logits[:-1].log_softmax(-1)
    chosen = lp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    return chosen.tolist(), lp.max(-1).values.tolist()


def check_prompt_logprobs(logprobs: dict, n_prompt_entries: int, ref_chosen, ref_top):
    values = logprobs["token_logprobs"][:n_prompt_entries]
    tops = logprobs["top_logprobs"][:n_prompt_entries]
    assert values[0] is None, "the first prompt token has no logprob"
    got = [v for v in values if v is not None]
    got_top = [max(t.values()) for t in tops if t]
    # align from the end: an engine may leave out a leading BOS (llama.cpp does)
    assert len(got) >= len(ref_chosen) - 1
    n = min(len(got), len(ref_chosen))
    assert got[-n:] == pytest.approx(ref_chosen[-n:], abs=1e-4)
    assert got_top[-n:] == pytest.approx(ref_top[-n:], abs=1e-4)


def test_echo_logprobs_match_forward_pass(client, engine_server, tokenizer):
    prompt = "The quick brown fox jumps over the lazy dog"
    ids = tokenizer(prompt).input_ids
    ref_chosen, ref_top = reference_prompt_logprobs(engine_server.model_path, ids)
    body = complete(client, engine_server, prompt=prompt, max_tokens=1, temperature=0,
                    logprobs=1, echo=True)  # fmt: skip
    choice, usage = body["choices"][0], body["usage"]
    assert choice["text"].startswith(prompt)
    lp = choice["logprobs"]
    n_all = len(lp["tokens"])
    assert len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == n_all
    assert lp["text_offset"] == sorted(lp["text_offset"])
    check_prompt_logprobs(lp, n_all - usage["completion_tokens"], ref_chosen, ref_top)


def test_echo_with_max_tokens_zero_scores_the_prompt(client, engine_server, tokenizer):
    ids = tokenizer("Once upon a time there was").input_ids
    ref_chosen, ref_top = reference_prompt_logprobs(engine_server.model_path, ids)
    body = complete(client, engine_server, prompt=ids, max_tokens=0, logprobs=1, echo=True)
    # vLLM generates (and counts) one hidden token for max_tokens 0; it returns none of it
    check_usage(body["usage"], 1 if engine_server.kind == "vllm" else 0)
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(ids)
    check_prompt_logprobs(lp, len(ids), ref_chosen, ref_top)


def test_generated_logprobs(client, engine_server):
    body = greedy(client, engine_server, "Hello world", max_tokens=6, logprobs=3)
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == 6
    for value, top in zip(lp["token_logprobs"], lp["top_logprobs"]):
        assert 3 <= len(top) <= 4 and value <= 0
        assert value == pytest.approx(max(top.values()), abs=1e-4)  # greedy took the top token


# --- sampling controls ------------------------------------------------------------------------


def test_greedy_is_deterministic(client, engine_server):
    first = greedy(client, engine_server, PROMPTS[1], max_tokens=20)["choices"][0]["text"]
    again = greedy(client, engine_server, PROMPTS[1], max_tokens=20)["choices"][0]["text"]
    assert first == again


def test_stop_string_cuts_text(client, engine_server):
    full = greedy(client, engine_server, PROMPTS[4], max_tokens=24)["choices"][0]["text"]
    words = [w for w in full.split() if len(w) >= 2]
    assert words, f"no usable stop string in {full!r}"
    stop = words[len(words) // 2][:2]
    expected = full[: full.index(stop)]
    body = greedy(client, engine_server, PROMPTS[4], max_tokens=24, stop=[stop, "\x00never"])
    choice = body["choices"][0]
    assert choice["text"] == expected
    assert choice["finish_reason"] == "stop"
    # streamed: the same text, and no piece of the stop string leaks out
    events = stream_events(client, "/completions", {
        "model": engine_server.model, "prompt": PROMPTS[4], "max_tokens": 24, "temperature": 0,
        "ignore_eos": True, "stop": stop})  # fmt: skip
    chunks = [e for e in events[:-1] if e["choices"]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("control", ["ignore_eos", "min_tokens"])
def test_length_control_gives_exact_token_counts(client, engine_server, control):
    for seed in range(3):
        extra = {"ignore_eos": True} if control == "ignore_eos" else {"min_tokens": 20}
        body = complete(client, engine_server, prompt=PROMPTS[seed], max_tokens=20,
                        temperature=1.0, seed=seed, **extra)  # fmt: skip
        check_usage(body["usage"], 20)


def test_seed_reproducibility(client, engine_server):
    def sampled(seed):
        body = complete(client, engine_server, prompt="Once upon a time", max_tokens=16,
                        temperature=1.0, seed=seed, ignore_eos=True)  # fmt: skip
        return body["choices"][0]["text"]

    reference = sampled(1234)
    assert sampled(1234) == reference
    assert any(sampled(seed) != reference for seed in (1, 2, 3, 4))
    # a seeded request is reproducible while other requests share its batch
    with ThreadPoolExecutor(4) as pool:
        others = [pool.submit(complete, client, engine_server, prompt=p, max_tokens=16,
                              temperature=1.0, ignore_eos=True) for p in PROMPTS[:3]]  # fmt: skip
        mine = pool.submit(sampled, 1234)
        assert mine.result() == reference
        for f in others:
            f.result()


def test_sampling_parameters_accepted(client, engine_server):
    body = complete(client, engine_server, prompt="Hello", max_tokens=8, temperature=0.8,
                    top_p=0.9, top_k=20, min_p=0.05, repetition_penalty=1.1, seed=7)  # fmt: skip
    check_usage(body["usage"])
    assert body["usage"]["completion_tokens"] <= 8


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [{"top_p": 2.0}, {"max_tokens": -1}, {"temperature": -0.5}, {"logprobs": "many"}]
)
def test_bad_parameter_is_400(client, engine_server, bad):
    r = client.post("/completions", json={"model": engine_server.model, "prompt": "Hi", **bad})
    assert r.status_code == 400, r.text
    assert "error" in r.json() or "detail" in r.json()


def test_unknown_parameter_is_400(client, engine_server):
    if engine_server.kind == "vllm":
        pytest.skip("vLLM accepts and ignores unknown fields")
    r = client.post("/completions", json={"model": engine_server.model, "prompt": "Hi",
                                          "temprature": 0.5})  # fmt: skip
    assert r.status_code == 400
    assert "temprature" in r.json()["error"]["message"]
    if engine_server.kind == "hf":  # the others support n > 1
        r = client.post("/completions", json={"model": engine_server.model, "prompt": "Hi", "n": 2})
        assert r.status_code == 400


# --- concurrency ------------------------------------------------------------------------------


def test_concurrent_requests_match_sequential(client, engine_server):
    sequential = [greedy(client, engine_server, p, max_tokens=24)["choices"][0]["text"] for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        bodies = list(pool.map(lambda p: greedy(client, engine_server, p, max_tokens=24), PROMPTS))
    assert [b["choices"][0]["text"] for b in bodies] == sequential
    for b in bodies:
        check_usage(b["usage"], 24)


# --- the server's own view (GET /metrics) -----------------------------------------------------


def test_metrics_scraped_around_a_point(engine_server):
    """GET /metrics under vLLM's names, read the way bench reads it: a scrape before, during and
    after a point. Every engine shows its requests; those with a TTFT histogram (vLLM and the
    in-house engines; llama-server has none) count each streamed request once; vLLM's prefix cache
    hits a prompt sent again."""
    import asyncio

    from harness.adapter import EngineClient, GenRequest
    from harness.bench.loadgen import run_point
    from harness.bench.server_metrics import ServerMetrics

    prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * 6)  # > 3 vLLM blocks of 16
    reqs = [GenRequest(prompt=prompt, max_tokens=24, sampling={"temperature": 0}, fixed_output=True)] * 4
    rows = []

    async def go():
        async with EngineClient(engine_server.base_url, engine_server.model) as c:
            async with ServerMetrics(engine_server.base_url, None, "p", rows.append, 0.02) as srv:
                recs = await run_point(c, reqs, "concurrency", 1, 0, lambda r: None)
            return srv, recs

    srv, recs = asyncio.run(go())
    assert all(r.ok for r in recs), recs[0].error
    summary = srv.summary([r.first_token - r.send for r in recs])
    assert summary["status"] == "scraped" and summary["samples"] == len(rows) >= 2
    assert "running" in rows[0] and rows[-1]["running"] == 0  # idle before and after the point
    if engine_server.kind == "llama-server":
        assert "ttft_check" not in summary
        return
    check = summary["ttft_check"]
    assert check["engine_count"] == 4 == check["client_count"]
    # the engine's clock starts after the client's send and stops before the client reads
    assert check["engine_mean_ms"] <= check["client_mean_ms"] + 1
    if engine_server.kind == "vllm":
        assert "kv_cache_usage" in summary
        assert summary["prefix_cache"]["hit_tokens"] >= 3 * 32  # requests 2..4 find the prompt cached
