"""Locating the continuation in echoed prompt logprobs, and mapping generation kwargs onto the
wire: pure functions over response payloads shaped as the engines really send them."""

from __future__ import annotations

import pytest

from harness.score import align
from harness.score.lm import wire_params

PROMPT = "The capital of France is Paris."
CONTEXT = "The capital of France is"  # continuation " Paris."


def response(tokens, offsets, logprobs, completion_tokens=0, prompt_tokens=None):
    top = [None if lp is None else {"x": lp - 1.0, t: lp} for t, lp in zip(tokens, logprobs)]
    return {"choices": [{"text": PROMPT, "logprobs": {"tokens": tokens, "text_offset": offsets,
                                                      "token_logprobs": logprobs, "top_logprobs": top}}],
            "usage": {"prompt_tokens": prompt_tokens or len(tokens), "completion_tokens": completion_tokens}}


WORDS = [" The", " capital", " of", " France", " is", " Paris", "."]
LPS = [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0]


def test_vllm_style_bos_counted_in_offsets():
    # vLLM keeps BOS with a null logprob and counts its text "<s>" in the offsets
    toks = ["<s>", "The", " capital", " of", " France", " is", " Paris", "."]
    offs, o = [], 0
    for t in toks:
        offs.append(o)
        o += len(t)
    lp = align.prompt_logprobs(response(toks, offs, [None, *LPS]))
    first = align.split_by_offsets(lp, PROMPT, len(CONTEXT))
    assert toks[first] == " Paris"
    assert align.score(lp, first) == (-13.0, True, 2)


def test_llamacpp_style_bos_without_width_and_virtual_space():
    # our llama.cpp engine: BOS kept with "" or "<s>" at offset 0 and no width; SentencePiece's
    # virtual space makes the first token " The" at offset 0 of "The ..."
    toks = ["<s>", *WORDS]
    offs = [0, 0, 3, 11, 14, 21, 24, 30]
    lp = align.prompt_logprobs(response(toks, offs, [None, *LPS]))
    assert align.split_by_offsets(lp, PROMPT, len(CONTEXT)) == 6


def test_no_bos_first_token_unscored():
    toks = ["The", " capital", " of", " France", " is", " Paris", "."]
    offs = [0, 3, 11, 14, 21, 24, 30]
    lp = align.prompt_logprobs(response(toks, offs, [None, *LPS[1:]]))
    assert align.split_by_offsets(lp, PROMPT, len(CONTEXT)) == 5
    with pytest.raises(align.AlignmentError):  # an empty context cannot score the first token
        align.score(lp, 0)


def test_offsets_that_do_not_describe_the_prompt_are_refused_then_counts_split():
    # token texts that lost their leading spaces: cumulative offsets drift from the prompt
    toks = ["<s>", "The", "capital", "of", "France", "is", "Paris", "."]
    offs, o = [], 0
    for t in toks:
        offs.append(o)
        o += len(t)
    lp = align.prompt_logprobs(response(toks, offs, [None, *LPS]))
    assert align.split_by_offsets(lp, PROMPT, len(CONTEXT)) is None
    # usage: whole prompt 8 tokens (with BOS), context alone 6 -> continuation from index 6
    assert align.split_by_count(lp, 8, 6) == 6


def test_count_split_when_the_echo_dropped_bos():
    lp = align.prompt_logprobs(response(WORDS, [0, 3, 11, 14, 21, 24, 30], [None, *LPS[1:]]))
    assert align.split_by_count(lp, whole_tokens=8, context_tokens=6) == 5
    with pytest.raises(align.AlignmentError):
        align.split_by_count(lp, whole_tokens=10, context_tokens=6)


def test_a_generated_token_is_cut_from_the_echo():
    # a server that refuses max_tokens 0 generates one token, listed after the prompt's
    toks = ["<s>", *WORDS, " It"]
    offs = [0, 0, 3, 11, 14, 21, 24, 30, 31]
    lp, first = align.locate(align.prompt_logprobs(response(toks, offs, [None, *LPS, -0.5], 1)),
                             PROMPT, len(CONTEXT))
    assert lp.tokens[-1] == "." and first == 6
    assert align.score(lp, first)[0] == -13.0


def test_a_generated_eos_that_is_not_listed():
    # vLLM with max_tokens 1: usage counts a generated EOS that the logprobs do not list
    prompt = "Q: The capital of France is Paris."
    toks = ["Q", ":", *WORDS]
    offs = [0, 1, 2, 6, 14, 17, 24, 27, 33]
    lp = align.prompt_logprobs(response(toks, offs, [None, -0.1, *LPS], completion_tokens=1))
    part, first = align.locate(lp, prompt, len("Q: The capital of France is"))
    assert part.tokens == toks and toks[first] == " Paris"
    assert align.prompt_tokens_of(lp, 9).tokens == toks  # by counts: usage's 9 prompt tokens


def test_not_greedy_when_another_token_was_likelier():
    toks = ["<s>", *WORDS]
    resp = response(toks, [0, 0, 3, 11, 14, 21, 24, 30], [None, *LPS])
    resp["choices"][0]["logprobs"]["top_logprobs"][6] = {" Lyon": -0.1, " Paris": -6.0}
    lp = align.prompt_logprobs(resp)
    assert align.score(lp, 6)[1] is False


def test_response_without_logprobs():
    assert align.prompt_logprobs({"choices": [{"text": "x"}]}) is None
    assert align.prompt_logprobs({"error": "nope"}) is None


def test_wire_params_greedy_task():
    body, ignored = wire_params({"until": ["Question:", "</s>"], "do_sample": False, "temperature": 0.0})
    assert body == {"max_tokens": 256, "temperature": 0.0, "stop": ["Question:", "</s>"]}
    assert ignored == []


def test_wire_params_user_sampling_applied():
    body, _ = wire_params({"until": ["\n\n"], "do_sample": True, "temperature": 0.7, "top_p": 0.9,
                           "top_k": 5, "min_p": 0.05, "repetition_penalty": 1.1, "seed": 3,
                           "max_gen_toks": 12})  # fmt: skip
    assert body == {"max_tokens": 12, "temperature": 0.7, "stop": ["\n\n"], "top_p": 0.9, "top_k": 5,
                    "min_p": 0.05, "repetition_penalty": 1.1, "seed": 3}


def test_wire_params_do_sample_false_stays_greedy_and_unknown_reported():
    body, ignored = wire_params({"do_sample": False, "temperature": 0.8, "num_beams": 4})
    assert body["temperature"] == 0.0
    assert ignored == ["num_beams"]
