"""The hf engine's echo scoring (backends/hf/scoring.py) on the real tiny model, in-process: the
prefix a request shares with the previous one comes from the kept KV cache, and every prompt
logprob and top alternative is what a forward over the whole prompt gives."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from backends.hf import scoring

HEADER = "The following are multiple choice questions (with answers) about geography.\n\n"
QUESTIONS = [HEADER + f"Which river is longest in region {i}?\nA. Nile\nB. Amazon\nC. Yangtze\nD. Rhine\nAnswer:"
             for i in range(5)]  # fmt: skip
CHOICES = (" A", " B", " C", " D")


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    fed = []  # input tokens of every forward, to see what the cache saved
    model.register_forward_pre_hook(lambda m, a, kw: fed.append(kw["input_ids"].numel()), with_kwargs=True)
    return model, AutoTokenizer.from_pretrained(tiny_model), fed


def score(model, tok, questions, per_batch: int, cache, top: int = 1) -> dict:
    """prompt ids -> prompt logprobs, the questions' four choices scored `per_batch` questions at a time."""
    got = {}
    with torch.no_grad():
        for i in range(0, len(questions), per_batch):
            seqs = [SimpleNamespace(prompt_ids=tok(q + c).input_ids, params=SimpleNamespace(prompt_logprobs=top))
                    for q in questions[i : i + per_batch] for c in CHOICES]  # fmt: skip
            groups = scoring.shared_prefix_groups(seqs)
            for batch in scoring.forward_batches(groups, 8192, 2**28, model.config.vocab_size):
                got.update((tuple(s.prompt_ids), plp) for s, plp in scoring.score_batch(model, batch, 0, "cpu", cache))
    return got


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for ids in a:
        assert len(a[ids]) == len(b[ids]) == len(ids) and a[ids][0] is None is b[ids][0]
        for (lp_a, top_a), (lp_b, top_b) in zip(a[ids][1:], b[ids][1:]):
            assert lp_a == pytest.approx(lp_b, abs=1e-5)
            assert [t for t, _ in top_a] == [t for t, _ in top_b]


@pytest.mark.parametrize("per_batch", [1, 3])
def test_a_prefix_shared_across_requests_is_computed_once(model_and_tokenizer, per_batch):
    model, tok, fed = model_and_tokenizer
    fed.clear()
    plain = score(model, tok, QUESTIONS, per_batch, None)
    without = sum(fed)
    fed.clear()
    cache = scoring.PrefixCache()
    cached = score(model, tok, QUESTIONS, per_batch, cache)
    assert_same(plain, cached)
    header = len(tok(HEADER).input_ids)
    later = len(range(0, len(QUESTIONS), per_batch)) - 1  # forwards after the first
    assert sum(fed) <= without - later * min(per_batch, len(QUESTIONS) - per_batch) * (header - 2)
    assert cache.ids and len(cache.done) == len(cache.ids) - 1


def test_more_alternatives_than_kept_are_computed_in_full(model_and_tokenizer):
    model, tok, fed = model_and_tokenizer
    cache = scoring.PrefixCache()
    score(model, tok, QUESTIONS[:1], 1, cache, top=1)
    fed.clear()
    more = score(model, tok, QUESTIONS[1:2], 1, cache, top=3)  # the kept rows have 1 alternative
    assert fed[0] in {len(tok(QUESTIONS[1] + c).input_ids) - 1 for c in CHOICES}  # a whole prompt
    assert_same(score(model, tok, QUESTIONS[1:2], 1, None, top=3), more)
    assert all(len(top) == 3 for plp in more.values() for _, top in plp[1:])


def test_a_prompt_inside_the_kept_one_computes_only_what_follows_the_shared_part(model_and_tokenizer):
    """Its last prompt token differs from the kept prompt's next one: from the output row that
    predicts it on, rows are computed again; the rows before come from the cache."""
    model, tok, fed = model_and_tokenizer
    cache = scoring.PrefixCache()
    score(model, tok, QUESTIONS[:1], 1, cache, top=2)
    short = [HEADER.split("\n")[0]]
    fed.clear()
    cached = score(model, tok, short, 1, cache)
    longest = max(len(tok(short[0] + c).input_ids) - 1 for c in CHOICES)
    assert fed == [longest - (len(tok(short[0]).input_ids) - 1)]
    assert_same(score(model, tok, short, 1, None), cached)
