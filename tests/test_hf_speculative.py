"""Speculative decoding in the hf engine (backends/hf/speculative.py), on the tiny model.

The scheduler runs in-process with a draft model: greedy output must be token-for-token the
target's own (self-draft: every draft accepted; a draft of other weights: almost none), sampled
output must follow the target's distribution, and the counters must say what happened. Then
end to end: `hyperbench bench --speculative draft:...` reports acceptance numbers, and bad
speculative input is a one-line error.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import subprocess
import sys
import threading

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from backends.hf.engine import Scheduler, Sequence  # noqa: E402
from backends.hf.loading import LoadSettings, check_draft, load  # noqa: E402
from backends.hf.sampling import BatchFlags, SamplingParams, row_tensors, warped_probs  # noqa: E402
from backends.hf.spec import HFConfig  # noqa: E402
from backends.hf.speculative import Drafts, Speculator, accept  # noqa: E402
from harness.errors import HyperbenchError  # noqa: E402


@pytest.fixture(scope="module")
def target(tiny_model):
    return load(LoadSettings(str(tiny_model), dtype="float32", device="cpu"))


@pytest.fixture(scope="module")
def other_draft():
    """tiny-llama of another seed: the same tokenizer, other random weights."""
    from harness.models import ensure_tiny_llama

    return load(LoadSettings(str(ensure_tiny_llama(seed=1).path), dtype="float32", device="cpu"))


class Engine:
    """A scheduler thread on `target`, speculating with `draft` (a model) when given."""

    def __init__(self, target, draft=None, k=4, threshold=0.0, max_batch_size=8):
        self.spec = None
        if draft is not None:
            self.spec = Speculator(draft, k=k, confidence_threshold=threshold,
                                   vocab_size=target.vocab_size,
                                   draft_vocab_size=draft.config.get_text_config().vocab_size,
                                   eos_ids=target.eos_ids, max_len=target.max_len)  # fmt: skip
        self.s = Scheduler(target.model, eos_ids=target.eos_ids, pad_id=target.pad_id,
                           vocab_size=target.vocab_size, max_batch_size=max_batch_size,
                           max_len=target.max_len, device="cpu", speculator=self.spec)  # fmt: skip

    def __enter__(self):
        self.s.start()
        return self

    def __exit__(self, *exc):
        self.s.stop()

    def run(self, prompts, params, stagger=0):
        """Generate; returns [{ids, lps, finish}] per prompt. `stagger`: submit the prompts in
        groups of that size, each once the previous group has made tokens (rows joining a
        running batch)."""
        params = params if isinstance(params, list) else [params] * len(prompts)
        outs = [{"ids": [], "lps": [], "finish": None} for _ in prompts]
        done = [threading.Event() for _ in prompts]
        first = [threading.Event() for _ in prompts]

        def put_for(i):
            def put(ev):
                if ev[0] == "token":
                    outs[i]["ids"].append(ev[1])
                    outs[i]["lps"].append(ev[2])
                    first[i].set()
                    finish = ev[3]
                elif ev[0] in ("finish", "error"):
                    finish = ev[0] == "error" and f"error: {ev[1]}" or ev[1]
                else:
                    return
                if finish:
                    outs[i]["finish"] = finish
                    first[i].set()
                    done[i].set()

            return put

        seqs = [Sequence(p, sp, put_for(i), "cpu") for i, (p, sp) in enumerate(zip(prompts, params))]
        step = stagger or len(seqs)
        for start in range(0, len(seqs), step):
            self.s.submit(seqs[start : start + step])
            for ev in first[start : start + step]:
                assert ev.wait(120)
        for ev in done:
            assert ev.wait(300)
        assert not any(str(o["finish"]).startswith("error") for o in outs), outs
        return outs


def prompts(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = [5, 17, 1, 33, 9, 2, 64, 12, 3, 40, 7, 21]
    return [torch.randint(3, 1000, (lengths[i % len(lengths)],), generator=g).tolist() for i in range(n)]


GREEDY = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, logprobs=2)


def assert_same(spec_out, plain_out):
    for s, p in zip(spec_out, plain_out):
        assert s["ids"] == p["ids"]
        assert s["finish"] == p["finish"]
        for a, b in zip(s["lps"], p["lps"]):  # the target's logprobs, to float32 noise
            assert a[0] == pytest.approx(b[0], abs=1e-4)
            assert [i for i, _ in a[1]] == [i for i, _ in b[1]]


@pytest.fixture(scope="module")
def greedy_reference(target):
    with Engine(target) as e:
        return e.run(prompts(), GREEDY)


def test_self_draft_accepts_everything_and_changes_nothing(target, greedy_reference):
    with Engine(target, draft=target.model, k=4) as e:
        out = e.run(prompts(), GREEDY)
    assert_same(out, greedy_reference)
    c = e.spec.counters
    assert c.drafts > 0 and c.accepted_tokens == c.draft_tokens  # acceptance 100%
    # 39 tokens after the prefill's: 7 steps of 4 drafts + 1, then 3 drafts + 1 (budget)
    assert c.drafts == 8 * 8 and c.draft_tokens == 8 * (7 * 4 + 3)
    assert c.accepted_per_position == [64, 64, 64, 56]
    assert c.verify_forward_passes == 8  # a target forward per 5 tokens instead of per token


def test_other_draft_rejects_almost_everything_and_changes_nothing(target, other_draft, greedy_reference):
    with Engine(target, draft=other_draft.model, k=4) as e:
        out = e.run(prompts(), GREEDY)
    assert_same(out, greedy_reference)
    c = e.spec.counters
    assert c.draft_tokens > 1000 and c.accepted_tokens / c.draft_tokens < 0.05
    assert c.compactions >= 1  # rejected drafts' KV holes were squeezed out (and output is intact)


def test_greedy_with_penalties_stops_and_rows_joining(target, other_draft):
    """Repetition penalty (its `seen` set grows within a step), min_tokens (EOS banned by
    position), stop on EOS / stop ids, uneven max_tokens, rows joining a speculating batch."""
    ps = prompts(12, seed=1)
    eos = target.eos_ids[0]
    params = [SamplingParams(max_tokens=n, temperature=0, repetition_penalty=rep, min_tokens=mt,
                             stop_token_ids=stop, logprobs=1)  # fmt: skip
              for n, rep, mt, stop in itertools.islice(itertools.cycle([
                  (30, 1.5, 0, ()), (7, 1.0, 5, (eos,)), (25, 1.3, 20, ()), (1, 1.0, 0, ()),
                  (18, 2.0, 0, (5, 6, 7, 8, 9)), (33, 1.0, 0, ())]), 12)]  # fmt: skip
    with Engine(target, max_batch_size=5) as e:
        plain = e.run(ps, params, stagger=3)
    for draft in (target.model, other_draft.model):
        with Engine(target, draft=draft, k=3, max_batch_size=5) as e:
            assert_same(e.run(ps, params, stagger=3), plain)
    assert [len(o["ids"]) for o in plain][3] == 1


def test_confidence_threshold(target):
    """The draft stops after a token it is less sure of than the threshold (that token is
    still proposed): at 1.0 every step proposes one token; at 0, k."""
    with Engine(target, draft=target.model, k=4, threshold=1.0) as e:
        e.run(prompts(4), GREEDY)
    c = e.spec.counters
    assert c.drafts > 0 and c.draft_tokens == c.drafts == c.accepted_tokens


def test_accept_keeps_the_target_distribution():
    """Speculative sampling: whatever the draft proposes, each emitted token is distributed as
    the target's (temperature + top-k here), at every position."""
    gen = torch.Generator().manual_seed(0)
    rows, k, vocab = 200_000, 2, 6
    target_logits = torch.randn(k + 1, vocab, generator=gen)
    draft_logits = torch.randn(k, vocab, generator=gen)
    params = [SamplingParams(temperature=0.8, top_k=4)] * rows
    t = row_tensors(params, vocab, "cpu")
    f = BatchFlags.of(params, [None] * rows)
    q = torch.stack([warped_probs(draft_logits[j].expand(rows, vocab), t, f) for j in range(k)], 1)
    tokens = torch.stack([torch.multinomial(q[:, j], 1, generator=gen)[:, 0] for j in range(k)], 1)
    counts = [i % (k + 1) for i in range(rows)]  # rows proposing 0, 1 or 2 tokens
    torch.manual_seed(1)
    accepted, out = accept(target_logits.expand(rows, k + 1, vocab).contiguous(), Drafts(tokens, q, counts),
                           t, torch.zeros(rows, vocab, dtype=torch.bool), f, params, [0] * rows, [])
    p = warped_probs(target_logits, row_tensors(params[:1], vocab, "cpu"), f)
    counts_t = torch.tensor(counts)
    assert (accepted <= counts_t).all()
    for j in range(k + 1):
        emitted = out[accepted >= j, j]  # rows that reached position j
        freq = torch.bincount(emitted, minlength=vocab).float() / len(emitted)
        assert (freq - p[j]).abs().max() < 0.01, (j, len(emitted), freq, p[j])
    assert freq[p[k] == 0].sum() == 0  # top-k: tokens outside it never appear
    rate = accepted.sum().item() / counts_t.sum().item()
    assert 0.1 < rate < 0.9  # the test exercises both acceptance and rejection


def test_sampled_tokens_follow_the_target_distribution(target):
    """End to end through the scheduler: the joint distribution of tokens 2 and 3 (drafted by a
    perturbed copy of the target, then verified) matches the target's exact one."""
    draft = copy.deepcopy(target.model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        w = draft.lm_head.weight
        w.add_(torch.randn(w.shape, generator=g) * w.std() * 0.7)
    prompt = prompts(1, seed=5)[0]
    sp = SamplingParams(max_tokens=4, temperature=1.0, top_k=3, ignore_eos=True)
    n = 1500
    with Engine(target, draft=draft, k=2, max_batch_size=32) as e:  # seeded: a deterministic test
        outs = e.run([prompt] * n, [dataclasses.replace(sp, seed=i) for i in range(n)])
    c = e.spec.counters
    assert 0.1 < c.accepted_tokens / c.draft_tokens < 0.9
    assert c.accepted_per_position[1] > 0
    # exact: p(t2, t3 | prompt, t1) for the most frequent t1
    t1 = max(set(o["ids"][0] for o in outs), key=lambda x: sum(o["ids"][0] == x for o in outs))
    rest = [tuple(o["ids"][1:3]) for o in outs if o["ids"][0] == t1]
    row_t = row_tensors([sp], target.vocab_size, "cpu")
    f = BatchFlags.of([sp], [None])

    def dist(ids):
        with torch.no_grad():
            logits = target.model(torch.tensor([ids])).logits[:, -1].float()
        return warped_probs(logits, row_t, f)[0]

    p2 = dist(prompt + [t1])
    exact = {}
    for a in p2.nonzero()[:, 0].tolist():
        p3 = dist(prompt + [t1, a])
        for b in p3.nonzero()[:, 0].tolist():
            exact[(a, b)] = (p2[a] * p3[b]).item()
    seen = {pair: rest.count(pair) / len(rest) for pair in set(rest)}
    assert set(seen) <= set(exact)
    tv = 0.5 * sum(abs(seen.get(x, 0) - pe) for x, pe in exact.items())
    assert tv < 0.12, (tv, len(rest))


def test_seeded_sampling_is_reproducible(target, other_draft):
    ps = prompts(6, seed=2)
    seeded = [SamplingParams(max_tokens=20, temperature=0.9, top_p=0.9, seed=42 + i, ignore_eos=True)
              for i in range(len(ps))]  # fmt: skip
    with Engine(target, draft=other_draft.model, k=3) as e:
        together = e.run(ps, seeded)
        alone = e.run(ps[2:3], seeded[2:3])
    assert alone[0]["ids"] == together[2]["ids"]  # other rows in the batch do not matter
    assert len({tuple(o["ids"]) for o in together}) == len(ps)


@pytest.mark.parametrize("quant", ["int8", "nf4"])
def test_quantized_target_with_a_plain_draft(tiny_model, quant):
    """bitsandbytes target, draft loaded as the target would be but unquantized: the output is
    still the quantized target's own."""
    pytest.importorskip("bitsandbytes")
    from backends.hf.loading import draft_settings

    s = LoadSettings(str(tiny_model), quant=quant, dtype="float32", device="cpu", draft=str(tiny_model))
    quantized, draft = load(s), load(draft_settings(s))
    assert type(draft.model.model.layers[0].mlp.up_proj) is torch.nn.Linear
    ps = prompts(4)
    with Engine(quantized) as e:
        plain = e.run(ps, GREEDY)
    with Engine(quantized, draft=draft.model, k=4) as e:
        assert [o["ids"] for o in e.run(ps, GREEDY)] == [o["ids"] for o in plain]
    assert e.spec.counters.accepted_tokens > 0


def test_dummy_weights_are_seeded(tiny_model):
    """--load-format dummy: the same config gives the same weights, so a draft of the target's
    own folder is the target (the upper bound of speculation, on a GPU without real weights)."""
    a, b = (load(LoadSettings(str(tiny_model), dtype="float32", device="cpu", load_format="dummy"))
            for _ in range(2))  # fmt: skip
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name
    with Engine(a, draft=b.model, k=4) as e:
        e.run(prompts(2), GREEDY)
    assert e.spec.counters.accepted_tokens == e.spec.counters.draft_tokens > 0


# ---------------------------------------------------------------------------- config and errors


def test_config_errors():
    assert HFConfig(speculative="draft:tiny-llama").capabilities().speculative == ["draft:<model>"]
    with pytest.raises(HyperbenchError, match="supports none or draft:<model>.*vllm"):
        HFConfig(speculative="ngram").check()
    with pytest.raises(HyperbenchError, match="supports none or draft"):
        HFConfig(speculative="draft:").check()
    with pytest.raises(HyperbenchError, match="--num-speculative-tokens needs speculative"):
        HFConfig(num_speculative_tokens=3).check()
    with pytest.raises(HyperbenchError, match="--assistant-confidence-threshold needs"):
        HFConfig(assistant_confidence_threshold=0.1).check()
    with pytest.raises(HyperbenchError, match="does not exist"):
        HFConfig(speculative="draft:./no/such/model").check()
    HFConfig(num_speculative_tokens=4).check()  # a default passed along is no request
    cmd = HFConfig(speculative="draft:tiny-llama", num_speculative_tokens=2,
                   assistant_confidence_threshold=0).server_command("h", 1, "/m")  # fmt: skip
    draft = cmd[cmd.index("--speculative") + 1]
    assert draft.startswith("draft:/") and draft.endswith("tiny-llama-v2-seed0")  # resolved here
    assert cmd[cmd.index("--num-speculative-tokens") + 1] == "2"
    assert "--speculative" not in HFConfig().server_command("h", 1, "/m")


def test_draft_with_another_tokenizer_is_refused(tmp_path, tiny_model):
    import shutil

    other = tmp_path / "other-tokenizer"
    shutil.copytree(tiny_model, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    check_draft(str(tiny_model), str(tiny_model))
    with pytest.raises(HyperbenchError, match="another tokenizer .* 2 with other ids"):
        check_draft(str(tiny_model), str(other))


def hb(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--engine", "hf", "--speculative", "ngram"], "the hf engine supports none or draft:<model>"),
    (["--engine", "llamacpp", "--speculative", "eagle:tiny-llama"], "the llamacpp engine supports none, ngram or"),
    (["--engine", "hf", "--num-speculative-tokens", "3"], "--num-speculative-tokens needs speculative decoding"),
])  # fmt: skip
def test_bad_speculative_flags_are_one_line_errors(tmp_path, args, message):
    res = hb("bench", "--model", "tiny-llama", *args, "--results-dir", str(tmp_path), timeout=120)
    assert res.returncode == 2
    assert res.stderr.startswith("error: ") and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # refused before a run folder exists


def test_bench_reports_acceptance(tmp_path, tiny_model):
    res = hb("bench", "--engine", "hf", "--model", str(tiny_model), "--dtype", "float32",
             "--speculative", "draft:tiny-llama", "--num-speculative-tokens", "3",
             "--assistant-confidence-threshold", "0", "--concurrency", "1,4", "--input-len", "16",
             "--output-len", "17", "--num-requests", "8", "--results-dir", str(tmp_path),
             "--run-name", "spec")  # fmt: skip
    assert res.returncode == 0, res.stderr
    run = tmp_path / "spec"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete"
    for p in summary["points"]:
        assert p["completed"] == 8 and p["output_tokens"] == 8 * 17
        s = p["speculative"]  # only this point's drafts (warm-up and the other point excluded)
        # 16 tokens after the prefill's, as 4 steps of 3 drafts + 1 per request
        assert (s["drafts"], s["draft_tokens"], s["accepted_tokens"]) == (8 * 4, 8 * 12, 8 * 12)
        assert s["acceptance_rate"] == 1.0 and s["mean_accepted_length"] == 4.0
        assert s["acceptance_by_position"] == [1.0, 1.0, 1.0]
    info = json.loads((run / "engine.json").read_text())["speculative"]
    assert info["method"] == "draft" and info["num_speculative_tokens"] == 3
    assert info["draft_model"].endswith("tiny-llama-v2-seed0") and info["draft_weight_bytes"] > 0
