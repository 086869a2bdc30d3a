"""Several echo prompts in one /v1/completions request (how `score` sends the choices of one
question) give each prompt the logprobs it gets alone, on the real engine servers (tiny-llama,
fp32). The prompts share a context, one is a prefix of another, one shares nothing, and one is a
single token: the cases the engines' shared-prefix shortcuts (hf: one forward per shared prefix;
llama.cpp: the KV cache and logprobs of the previous prompt's prefix) must get right."""

from __future__ import annotations

import asyncio

import pytest

from harness.adapter import EngineClient
from tests.conftest import start_server

CONTEXT = "Question: which of these is a colour of the sky on a clear day?\nAnswer:"
PROMPTS = [CONTEXT + c for c in (" red", " blue", " green", " blue sky")] + [
    "An unrelated prompt that shares nothing.", "x"]


def echo_body(prompt, max_tokens: int = 0) -> dict:
    return {"prompt": prompt, "max_tokens": max_tokens, "echo": True, "logprobs": 2, "temperature": 0.0}


def per_prompt(choice: dict) -> tuple[list, list, list]:
    lp = choice["logprobs"]
    return lp["tokens"], lp["token_logprobs"], [sorted(t) if t else t for t in lp["top_logprobs"]]


def assert_same(got: dict, want: dict) -> None:
    g_tok, g_lp, g_top = per_prompt(got)
    w_tok, w_lp, w_top = per_prompt(want)
    assert g_tok == w_tok and g_top == w_top
    assert [x is None for x in g_lp] == [x is None for x in w_lp]
    assert max(abs(a - b) for a, b in zip(g_lp, w_lp) if a is not None) < 1e-4


async def exchange(server, max_tokens: int = 0):
    async with EngineClient(server.base_url, server.model) as client:
        together = await client.complete(echo_body(PROMPTS, max_tokens))
        alone = [await client.complete(echo_body(p, max_tokens)) for p in PROMPTS]
        concurrent = await asyncio.gather(*(client.complete(echo_body(p, max_tokens)) for p in PROMPTS))
    return together, alone, concurrent


@pytest.mark.parametrize("kind", ["hf", pytest.param("llamacpp", marks=pytest.mark.llamacpp)])
def test_multi_prompt_echo_equals_single_requests(kind, tiny_model, tmp_path):
    with start_server(kind, tiny_model, tmp_path) as server:
        together, alone, concurrent = asyncio.run(exchange(server))
        # the generation path (max_tokens 1) scores prompts as the echo-only path does
        generating = asyncio.run(exchange(server, max_tokens=1))[1]
    choices = sorted(together["choices"], key=lambda c: c["index"])
    assert [c["index"] for c in choices] == list(range(len(PROMPTS)))
    assert [c["text"] for c in choices] == PROMPTS
    n_tokens = 0
    for i, choice in enumerate(choices):
        assert_same(choice, alone[i]["choices"][0])
        assert_same(concurrent[i]["choices"][0], alone[i]["choices"][0])
        n = len(alone[i]["choices"][0]["logprobs"]["tokens"])
        g_tok, g_lp, _ = per_prompt(generating[i]["choices"][0])
        assert g_tok[:n] == per_prompt(choice)[0]
        assert max(abs(a - b) for a, b in zip(g_lp[1:n], per_prompt(choice)[1][1:])) < 1e-4
        n_tokens += alone[i]["usage"]["prompt_tokens"]
    assert together["usage"]["prompt_tokens"] == n_tokens
    assert together["usage"]["completion_tokens"] == 0
