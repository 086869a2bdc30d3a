"""The hf engine's static-KV decode step (backends/hf/graphs.py), on the tiny model, on a CPU.

On a GPU that step is captured once per (rows, columns) bucket as a CUDA graph and replayed;
here the same step runs without capture (`capture=False`), so what is checked is everything but
the capture: the static buffer, homing the cache after rows join or leave, bucket padding of
rows and columns, the column mask, the eager fallback when a batch outgrows the buffer. The
output must be token-for-token (and logprob-for-logprob, to float32 noise) the eager engine's.
The graphs themselves are measured on the H100 (benchmarks/gpu/run.sh hf).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from backends.hf import graphs  # noqa: E402
from backends.hf.engine import Scheduler  # noqa: E402
from backends.hf.loading import LoadSettings, load  # noqa: E402
from backends.hf.sampling import SamplingParams  # noqa: E402
from backends.hf.speculative import Speculator  # noqa: E402
from tests.test_hf_speculative import Engine, assert_same, prompts  # noqa: E402


@pytest.fixture(scope="module")
def target(tiny_model):
    return load(LoadSettings(str(tiny_model), dtype="float32", device="cpu"))


class StaticEngine(Engine):
    def __init__(self, target, decoder, max_batch_size=8):
        self.spec = None
        self.s = Scheduler(target.model, eos_ids=target.eos_ids, pad_id=target.pad_id,
                           vocab_size=target.vocab_size, max_batch_size=max_batch_size,
                           max_len=target.max_len, device="cpu", graphs=decoder)  # fmt: skip


GREEDY = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, logprobs=2)


@pytest.mark.parametrize("stagger", [0, 3])
def test_static_decode_gives_the_eager_tokens(target, monkeypatch, stagger):
    assert graphs.unsupported(target.model) is None
    monkeypatch.setattr(graphs, "COL_STEP", 32)  # small buckets: a run crosses several
    with Engine(target) as e:
        want = e.run(prompts(), GREEDY, stagger=stagger)
    # 96 columns: the 64-token prompt's row outgrows it (eager steps), then leaves (static again)
    decoder = graphs.StaticDecoder(target.model, max_batch=8, max_cols=96, capture=False)
    with StaticEngine(target, decoder) as e:
        got = e.run(prompts(), GREEDY, stagger=stagger)
    assert_same(got, want)
    assert decoder.steps > 20 and decoder.eager_steps > 0, decoder.info()


def test_sampled_rows_and_penalties_match_too(target, monkeypatch):
    monkeypatch.setattr(graphs, "COL_STEP", 32)
    params = [SamplingParams(max_tokens=24, temperature=0.8, top_p=0.9, seed=7 + i, ignore_eos=True,
                             repetition_penalty=1.3) for i in range(6)]  # fmt: skip
    with Engine(target) as e:
        want = e.run(prompts(6, seed=1), params)
    decoder = graphs.StaticDecoder(target.model, max_batch=8, max_cols=128, capture=False)
    with StaticEngine(target, decoder) as e:
        got = e.run(prompts(6, seed=1), params)
    assert [o["ids"] for o in got] == [o["ids"] for o in want]
    assert decoder.eager_steps == 0 and decoder.steps >= 23


def test_what_decodes_eagerly_says_why(target):
    decoder, why = graphs.StaticDecoder.for_model(target.model, max_batch=4, max_len=target.max_len,
                                                  device="cpu", capture=False)  # fmt: skip
    assert why is None and decoder.max_cols % graphs.COL_STEP == 0
    assert decoder.info()["enabled"] and not decoder.info()["cuda_graphs"]
    cfg = target.model.config
    old = cfg.model_type
    try:
        cfg.model_type = "gpt2"
        assert "architecture gpt2" in graphs.unsupported(target.model)
    finally:
        cfg.model_type = old


def test_nf4_weights_take_the_static_step_int8_does_not(tiny_model, monkeypatch):
    """bitsandbytes NF4 layers decode through the static step too (their projections unfused:
    packed 4-bit blocks do not concatenate), token-for-token the eager NF4 engine; LLM.int8()
    stays eager (its outlier split has data-dependent shapes) and says so."""
    pytest.importorskip("bitsandbytes")
    monkeypatch.setattr(graphs, "COL_STEP", 32)
    nf4 = load(LoadSettings(str(tiny_model), dtype="float32", device="cpu", quant="nf4"))
    assert graphs.unsupported(nf4.model) is None
    with Engine(nf4) as e:
        want = e.run(prompts(), GREEDY, stagger=3)
    decoder = graphs.StaticDecoder(nf4.model, max_batch=8, max_cols=128, capture=False)
    assert not decoder.fused
    with StaticEngine(nf4, decoder) as e:
        got = e.run(prompts(), GREEDY, stagger=3)
    assert_same(got, want)
    assert decoder.steps > 20 and decoder.eager_steps == 0, decoder.info()
    int8 = load(LoadSettings(str(tiny_model), dtype="float32", device="cpu", quant="int8"))
    assert "8-bit bitsandbytes" in graphs.unsupported(int8.model)


class SpecStaticEngine(Engine):
    """Speculating with `draft`, the target verifying and the draft proposing through static
    decoders (as the server builds them on a GPU: the target `k + 1` tokens wide, the draft 2)."""

    def __init__(self, target, draft, k, target_cols, draft_cols, capture=False, device="cpu", **compiling):
        self.target_decoder = graphs.StaticDecoder(target.model, max_batch=8, max_cols=target_cols,
                                                   capture=capture, max_width=k + 1, **compiling)  # fmt: skip
        self.draft_decoder = graphs.StaticDecoder(draft.model, max_batch=8, max_cols=draft_cols,
                                                  capture=capture, max_width=2, **compiling)  # fmt: skip
        self.spec = Speculator(draft.model, k=k, confidence_threshold=0.0, vocab_size=target.vocab_size,
                               draft_vocab_size=draft.vocab_size, eos_ids=target.eos_ids,
                               max_len=target.max_len, graphs=self.draft_decoder)  # fmt: skip
        self.s = Scheduler(target.model, eos_ids=target.eos_ids, pad_id=target.pad_id,
                           vocab_size=target.vocab_size, max_batch_size=8, max_len=target.max_len,
                           device=device, speculator=self.spec, graphs=self.target_decoder)  # fmt: skip


@pytest.fixture(scope="module")
def other_draft():
    """tiny-llama of another seed: the same tokenizer, other weights (few drafts accepted)."""
    from harness.models import ensure_tiny_llama

    return load(LoadSettings(str(ensure_tiny_llama(seed=1).path), dtype="float32", device="cpu"))


@pytest.mark.parametrize("stagger", [0, 3])
def test_speculation_through_static_decoders_gives_the_target_tokens(target, other_draft, monkeypatch, stagger):
    """Greedy speculation is the target's own greedy text: with a draft that is mostly wrong
    (rejected drafts leave holes, compaction rebuilds the caches, rows join and leave), through
    the target's k+1-wide verification step and the draft's 1- and 2-wide steps; 96 target
    columns: the 64-token prompt's row outgrows them (eager verification), then leaves."""
    monkeypatch.setattr(graphs, "COL_STEP", 32)
    with Engine(target) as e:
        want = e.run(prompts(), GREEDY, stagger=stagger)
    with SpecStaticEngine(target, other_draft, k=3, target_cols=96, draft_cols=128) as e:
        got = e.run(prompts(), GREEDY, stagger=stagger)
    assert_same(got, want)
    c, t, d = e.spec.counters, e.target_decoder, e.draft_decoder
    assert c.compactions > 0 and c.draft_tokens > c.accepted_tokens, c.as_dict()
    assert t.steps >= 5 and t.eager_steps > 0, t.info()  # both ways of verifying ran
    groups = 1 if stagger == 0 else -(-len(prompts()) // stagger)  # a group's draft prefill is eager
    assert d.steps + d.eager_steps == c.draft_forward_passes - groups and d.steps > 20, d.info()


def test_self_draft_through_static_decoders_accepts_everything(target):
    """The target as its own draft: every draft kept, the verification 5 tokens wide."""
    with Engine(target) as e:
        want = e.run(prompts(), GREEDY)
    with SpecStaticEngine(target, target, k=4, target_cols=128, draft_cols=128) as e:
        got = e.run(prompts(), GREEDY)
    assert_same(got, want)
    c = e.spec.counters
    assert c.accepted_tokens == c.draft_tokens and c.verify_forward_passes == 8
    assert e.target_decoder.eager_steps == 0 and e.draft_decoder.eager_steps == 0


def test_sampled_speculation_through_static_decoders_matches_eager_speculation(target, other_draft):
    params = [SamplingParams(max_tokens=24, temperature=0.8, top_p=0.9, seed=7 + i, ignore_eos=True,
                             repetition_penalty=1.3) for i in range(6)]  # fmt: skip
    with Engine(target, draft=other_draft.model, k=3) as e:
        want = e.run(prompts(6, seed=1), params)
    with SpecStaticEngine(target, other_draft, k=3, target_cols=128, draft_cols=128) as e:
        got = e.run(prompts(6, seed=1), params)
    assert [o["ids"] for o in got] == [o["ids"] for o in want]
    assert e.target_decoder.eager_steps == 0 and e.draft_decoder.eager_steps == 0


def test_no_step_waits_for_the_compiler(target, monkeypatch):
    """torch.compile specializes dimensions of size 1, so a step of 8 rows x 2 tokens after
    start-up saw only 1-row, 1-token steps recompiled mid-run (7.5 s on the H100). Start-up
    compiles every specialization; then no step of any rows x width compiles anything. (Dynamo
    only traces here, backend "eager": the same guards and recompilations, no code generated.)"""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(graphs, "COL_STEP", 32)
    torch._dynamo.reset()
    compiling = {"compile": True, "compile_backend": "eager"}
    with SpecStaticEngine(target, target, k=3, target_cols=128, draft_cols=128, **compiling) as e:
        assert e.target_decoder.compiled is not None and e.draft_decoder.compiled is not None
        compiled = counters["stats"]["unique_graphs"]
        assert compiled >= 3
        e.run(prompts(), GREEDY, stagger=3)  # 1 to 8 rows
    assert set(e.target_decoder.info()["steps_by_width"]) >= {3, 4}  # verifying 2 or 3 drafts
    assert set(e.draft_decoder.info()["steps_by_width"]) == {1, 2}
    assert counters["stats"]["unique_graphs"] == compiled
    one_row = graphs.StaticDecoder(target.model, max_batch=1, max_cols=32, capture=False, **compiling)
    assert one_row.compiled is not None  # --max-batch-size 1 keeps its fused ops too


class CudaEngine(Engine):
    """The engine on a GPU, decoding through `decoder` (None: eagerly)."""

    def __init__(self, loaded, decoder=None):
        self.spec = None
        self.s = Scheduler(loaded.model, eos_ids=loaded.eos_ids, pad_id=loaded.pad_id, vocab_size=loaded.vocab_size,
                           max_batch_size=8, max_len=loaded.max_len, device="cuda", graphs=decoder)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("stagger", [0, 3])
def test_cuda_graphs_give_the_eager_tokens(tiny_model, monkeypatch, stagger):
    """The same comparison with the graphs captured and replayed (a GPU machine only)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    gpu = load(LoadSettings(str(tiny_model), dtype="float32", device="cuda"))
    monkeypatch.setattr(graphs, "COL_STEP", 32)

    with CudaEngine(gpu) as e:
        want = e.run(prompts(), GREEDY, stagger=stagger)
    decoder = graphs.StaticDecoder(gpu.model, max_batch=8, max_cols=96, capture=True)
    with CudaEngine(gpu, decoder) as e:
        got = e.run(prompts(), GREEDY, stagger=stagger)
        again = e.run(prompts(), GREEDY, stagger=stagger)  # replays of graphs captured already
    assert_same(got, want)
    assert_same(again, want)
    assert decoder.graphs and decoder.eager_steps > 0, decoder.info()


@pytest.mark.gpu
def test_cuda_graphs_speculating_give_the_target_tokens(tiny_model, monkeypatch):
    """Speculation with both models' steps captured and replayed (a GPU machine only)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from harness.models import ensure_tiny_llama

    gpu = load(LoadSettings(str(tiny_model), dtype="float32", device="cuda"))
    draft = load(LoadSettings(str(ensure_tiny_llama(seed=1).path), dtype="float32", device="cuda"))
    monkeypatch.setattr(graphs, "COL_STEP", 32)

    with CudaEngine(gpu) as e:
        want = e.run(prompts(), GREEDY, stagger=3)
    with SpecStaticEngine(gpu, draft, k=3, target_cols=96, draft_cols=128, capture=True, device="cuda") as e:
        got = e.run(prompts(), GREEDY, stagger=3)
    assert_same(got, want)
    assert e.target_decoder.graphs and e.draft_decoder.graphs
    assert any(w == 4 for _, _, w in e.target_decoder.graphs), e.target_decoder.info()


@pytest.mark.gpu
def test_cuda_graphs_over_nf4_give_the_eager_tokens(tiny_model, monkeypatch):
    """NF4 (bitsandbytes' gemv kernels) captured and replayed (a GPU machine with bitsandbytes)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    pytest.importorskip("bitsandbytes")
    gpu = load(LoadSettings(str(tiny_model), dtype="float32", device="cuda", quant="nf4"))
    monkeypatch.setattr(graphs, "COL_STEP", 32)

    with CudaEngine(gpu) as e:
        want = e.run(prompts(), GREEDY, stagger=3)
    decoder = graphs.StaticDecoder(gpu.model, max_batch=8, max_cols=128, capture=True)
    with CudaEngine(gpu, decoder) as e:
        got = e.run(prompts(), GREEDY, stagger=3)
    assert_same(got, want)
    assert decoder.graphs and decoder.eager_steps == 0, decoder.info()


@pytest.mark.gpu
def test_flash_attention_2_gives_the_sdpa_tokens(tiny_model, tmp_path, monkeypatch):
    """--attn flash_attention_2 through the engine's batches (left padding, rows joining and
    leaving: flash-attn's varlen kernels), decoding eagerly and through CUDA graphs (prefill by
    flash-attn, graphed steps by SDPA over the static buffer), gives SDPA's tokens, up to a
    near-tie in SDPA's own logits (two kernels summing in another order, in float16: on the H100
    one of 8 sequences parted after 21 tokens). A GPU machine with flash-attn
    (benchmarks/gpu/run.sh fa2 builds one for head dim 128: the tiny model with 128-wide heads)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    pytest.importorskip("flash_attn")
    import shutil

    from transformers import AutoConfig, LlamaForCausalLM

    folder = tmp_path / "head128"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = AutoConfig.from_pretrained(folder)
    cfg.head_dim = 128
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # sharper logits: fewer near-ties
    model.save_pretrained(folder)
    monkeypatch.setattr(graphs, "COL_STEP", 32)

    sdpa = load(LoadSettings(str(folder), dtype="float16", device="cuda", attn="sdpa"))
    with CudaEngine(sdpa) as e:
        want = e.run(prompts(), GREEDY, stagger=3)
    fa2 = load(LoadSettings(str(folder), dtype="float16", device="cuda", attn="flash_attention_2"))
    assert fa2.model.config._attn_implementation == "flash_attention_2"
    with CudaEngine(fa2) as e:
        eager = e.run(prompts(), GREEDY, stagger=3)
    decoder = graphs.StaticDecoder(fa2.model, max_batch=8, max_cols=128, capture=True)
    with CudaEngine(fa2, decoder) as e:
        graphed = e.run(prompts(), GREEDY, stagger=3)
    # one request at a time: no padding anywhere, so flash-attn gets no mask (Scheduler._mask)
    with CudaEngine(sdpa) as e:
        alone_want = [e.run([p], GREEDY)[0] for p in prompts(3)]
    with CudaEngine(fa2) as e:
        assert e.s._unmask
        alone = [e.run([p], GREEDY)[0] for p in prompts(3)]
    assert_same_up_to_near_ties(eager, want)
    assert_same_up_to_near_ties(graphed, want)
    assert_same_up_to_near_ties(alone, alone_want)
    assert decoder.graphs, decoder.info()


def assert_same_up_to_near_ties(got, want, margin=0.1):
    """Token for token, except that after a step where `want`'s two best logprobs were within
    `margin` nats of each other (a pick float16 noise can flip) the rest may part. Most agree."""
    whole = 0
    for g, w in zip(got, want):
        assert len(g["ids"]) == len(w["ids"])
        parted = next((i for i, (a, b) in enumerate(zip(g["ids"], w["ids"])) if a != b), None)
        if parted is None:
            whole += 1
            continue
        (_, first), (_, second) = w["lps"][parted][1][:2]
        assert first - second < margin, f"parted at token {parted} where the top two were {first:.3f} / {second:.3f}"
    assert whole >= len(want) // 2, f"only {whole} of {len(want)} sequences agree to the end"
