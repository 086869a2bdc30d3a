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


@pytest.mark.gpu
@pytest.mark.parametrize("stagger", [0, 3])
def test_cuda_graphs_give_the_eager_tokens(tiny_model, monkeypatch, stagger):
    """The same comparison with the graphs captured and replayed (a GPU machine only)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    gpu = load(LoadSettings(str(tiny_model), dtype="float32", device="cuda"))
    monkeypatch.setattr(graphs, "COL_STEP", 32)

    class CudaEngine(Engine):
        def __init__(self, decoder=None):
            self.spec = None
            self.s = Scheduler(gpu.model, eos_ids=gpu.eos_ids, pad_id=gpu.pad_id, vocab_size=gpu.vocab_size,
                               max_batch_size=8, max_len=gpu.max_len, device="cuda", graphs=decoder)  # fmt: skip

    with CudaEngine() as e:
        want = e.run(prompts(), GREEDY, stagger=stagger)
    decoder = graphs.StaticDecoder(gpu.model, max_batch=8, max_cols=96, capture=True)
    with CudaEngine(decoder) as e:
        got = e.run(prompts(), GREEDY, stagger=stagger)
        again = e.run(prompts(), GREEDY, stagger=stagger)  # replays of graphs captured already
    assert_same(got, want)
    assert_same(again, want)
    assert decoder.graphs and decoder.eager_steps > 0, decoder.info()
