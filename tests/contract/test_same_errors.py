"""Both in-house servers (hf, llamacpp) answer the same bad request with the same status and
byte-identical error body: they share one serving layer (backends/openai_server).

Both run on the tiny model with an API key at once; every request here is refused, so nothing
is generated and the module takes the two start-ups (seconds).
"""

from __future__ import annotations

import json

import httpx
import pytest

from backends.openai_server.requests import OPTIONAL
from tests.conftest import start_server

pytestmark = pytest.mark.llamacpp

KEY = "hb-same-errors"
AUTH = {"Authorization": f"Bearer {KEY}"}
TOO_LONG = [5] * 2100  # the tiny model's context is 2048 tokens in both engines

# (method, path, body: a dict sent as JSON or raw bytes, expected status)
BAD = {
    "unknown field": ("POST", "/v1/completions", {"prompt": "Hi", "temprature": 0.5}, 400),
    "known unsupported field": ("POST", "/v1/completions", {"prompt": "Hi", "logit_bias": {"5": 1}}, 400),
    "wrong type": ("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": "many"}, 400),
    "prompt of wrong type": ("POST", "/v1/completions", {"prompt": 5}, 400),
    "out of range": ("POST", "/v1/completions", {"prompt": "Hi", "top_p": 2.0, "temperature": -1}, 400),
    "missing prompt": ("POST", "/v1/completions", {"max_tokens": 4}, 400),
    "empty prompt": ("POST", "/v1/completions", {"prompt": []}, 400),
    "token id out of range": ("POST", "/v1/completions", {"prompt": [1, 10**6]}, 400),
    "too-long prompt": ("POST", "/v1/completions", {"prompt": TOO_LONG}, 400),
    "too-long max_tokens": ("POST", "/v1/completions", {"prompt": [1, 2], "max_tokens": 5000}, 400),
    "min_tokens > max_tokens": ("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2, "min_tokens": 3}, 400),
    "stream_options without stream": (
        "POST", "/v1/completions", {"prompt": "Hi", "stream_options": {"include_usage": True}}, 400),
    "unknown stream option": (
        "POST", "/v1/completions", {"prompt": "Hi", "stream": True, "stream_options": {"x": 1}}, 400),
    "lone surrogate in prompt": ("POST", "/v1/completions", b'{"prompt": "a\\ud800b"}', 400),
    "lone surrogate in a message": (
        "POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udfff"}]}', 400),
    "not JSON": ("POST", "/v1/completions", b"{prompt: Hi", 400),
    "not an object": ("POST", "/v1/completions", b"[1, 2]", 400),
    "unknown model": ("POST", "/v1/completions", {"prompt": "Hi", "model": "nope"}, 404),
    "no messages": ("POST", "/v1/chat/completions", {"messages": []}, 400),
    "image content": ("POST", "/v1/chat/completions",
                      {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, 400),
    "top_logprobs without logprobs": (
        "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "top_logprobs": 2}, 400),
    "unknown route": ("GET", "/v1/nope", None, 404),
    "unknown route outside /v1": ("GET", "/nope", None, 404),
    "wrong method": ("POST", "/v1/models", {}, 405),
}  # fmt: skip


@pytest.fixture(scope="module")
def servers(tiny_model, tmp_path_factory):
    """{kind: root URL} of both servers, each requiring KEY."""
    log_dir = tmp_path_factory.mktemp("same-errors")
    with start_server("hf", tiny_model, log_dir, api_key=KEY) as hf:
        with start_server("llamacpp", tiny_model, log_dir, api_key=KEY) as llama:
            yield {s.kind: s.base_url.removesuffix("/v1") for s in (hf, llama)}


def send(root: str, method: str, path: str, body, headers=AUTH) -> httpx.Response:
    if body is None:
        return httpx.request(method, root + path, headers=headers, timeout=60)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.request(method, root + path, content=raw, timeout=60,
                         headers={**headers, "Content-Type": "application/json"})  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_same_bad_request_same_error_bytes(servers, case):
    method, path, body, status = BAD[case]
    hf, llama = (send(servers[k], method, path, body) for k in ("hf", "llamacpp"))
    assert hf.status_code == llama.status_code == status, (hf.text, llama.text)
    assert hf.content == llama.content, (hf.text, llama.text)
    err = hf.json()["error"]  # the one envelope, with a message that says what is wrong
    assert err["code"] == status and err["message"] and set(err) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}],
                         ids=["none", "wrong", "not bearer"])  # fmt: skip
def test_bad_auth_same_error_bytes(servers, headers):
    for method, path, body in (("GET", "/v1/models", None), ("GET", "/v1/nope", None),
                               ("POST", "/v1/completions", {"prompt": "Hi"})):  # fmt: skip
        hf, llama = (send(servers[k], method, path, body, headers) for k in ("hf", "llamacpp"))
        assert hf.status_code == llama.status_code == 401
        assert hf.content == llama.content
        assert hf.json()["error"]["type"] == "authentication_error"


def test_named_problems(servers):
    """What the messages say (the same on both servers, see above)."""
    root = servers["hf"]

    def message(case):
        return send(root, *BAD[case][:3]).json()["error"]["message"]

    assert message("unknown field") == "unknown parameter 'temprature'"
    assert "logit_bias" in message("known unsupported field")
    assert "surrogate" in message("lone surrogate in prompt") and "prompt" in message("lone surrogate in prompt")
    assert "maximum context length is 2048" in message("too-long prompt")
    assert "out of range" in message("token id out of range")


def test_optional_fields_refused_where_not_honoured(servers):
    """An optional field is honoured (200) or refused with a 400 naming it, by what the engine
    declares; never ignored."""
    from backends.hf.protocol import HONOURS as HF
    from backends.llamacpp.protocol import HONOURS as LLAMA

    values = {"n": 2, "presence_penalty": 0.5, "frequency_penalty": 0.5, "stop_token_ids": [3]}
    assert set(values) == set(OPTIONAL)
    for kind, honours in (("hf", HF), ("llamacpp", LLAMA)):
        for name, value in values.items():
            r = send(servers[kind], "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2, name: value})
            if name in honours:
                assert r.status_code == 200, (kind, name, r.text)
            else:
                assert r.status_code == 400 and f"'{name}'" in r.json()["error"]["message"], (kind, name, r.text)


def stream(root: str, path: str, body: dict) -> list[dict]:
    with httpx.stream("POST", root + path, json={**body, "stream": True}, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200, r.read()
        lines = [ln[len("data: "):] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": "Once upon a time"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
], ids=["completions", "chat"])  # fmt: skip
def test_continuous_usage_on_every_chunk(servers, path, body):
    """vLLM's continuous_usage_stats: a usage object on every chunk, counting up one token per
    token chunk, so a client can count tokens per chunk; then include_usage's final chunk."""
    opts = {"include_usage": True, "continuous_usage_stats": True}
    for kind, root in servers.items():
        chunks = stream(root, path, {**body, "max_tokens": 6, "temperature": 0, "ignore_eos": True,
                                     "stream_options": opts})  # fmt: skip
        counts = [c["usage"]["completion_tokens"] for c in chunks]
        assert all(c["usage"]["total_tokens"] == c["usage"]["prompt_tokens"] + n for c, n in zip(chunks, counts))
        assert counts == sorted(counts) and counts[-1] == 6, (kind, counts)
        assert chunks[-1]["choices"] == [] and all(c["choices"] for c in chunks[:-1]), kind
        # every generated token arrived in a chunk of its own
        assert sum(b > a for a, b in zip([0, *counts], counts[:-1])) == 6, (kind, counts)


def test_tokens_named_by_id_on_both(servers):
    """return_tokens_as_token_ids on both servers; the same fp32 weights, the same greedy ids."""
    ids = {}
    for kind, root in servers.items():
        r = send(root, "POST", "/v1/completions", {"prompt": "Hello world", "max_tokens": 8, "temperature": 0,
                                                   "ignore_eos": True, "logprobs": 2,
                                                   "return_tokens_as_token_ids": True})  # fmt: skip
        lp = r.json()["choices"][0]["logprobs"]
        assert all(t.startswith("token_id:") for t in lp["tokens"]), (kind, lp["tokens"])
        assert all(k.startswith("token_id:") for top in lp["top_logprobs"] for k in top)
        ids[kind] = lp["tokens"]
    assert ids["hf"] == ids["llamacpp"] and len(ids["hf"]) == 8
