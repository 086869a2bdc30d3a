"""Continuous batching in the llama.cpp engine (`--parallel N`): a request's greedy and seeded
tokens are its single-request tokens whether it runs alone or beside others (f32 weights, f32
KV cache), requests join while others decode, a request whose client leaves frees its slot, and
bad settings fail in one line. (`--parallel 1` is the rest of tests/test_llamacpp.py and the
contract suite, unchanged.)"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.llamacpp
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: scripts/build_llamacpp_wheel.sh")

from backends.llamacpp.gguf import ensure_gguf  # noqa: E402
from backends.llamacpp.spec import LlamaCppConfig  # noqa: E402
from harness.errors import HyperbenchError  # noqa: E402

PARALLEL = 8
PROMPTS = [  # different lengths, and different output lengths below
    "The capital of France is",
    "Hello! How are you today?",
    "In 1999, the big dog reads 42 red books about the river and the city.",
    "What",
    "The quick brown fox jumps over the lazy dog",
    "One two three four five six seven eight nine ten eleven twelve thirteen",
    "Once upon a time",
    "A B C",
]


@pytest.fixture(scope="module")
def batched(tiny_model, tmp_path_factory):
    from harness.launchers.process import ProcessLauncher

    cfg = LlamaCppConfig(model=str(tiny_model), served_model_name="tiny", quant="f32",
                         kv_cache_type="f32", parallel=PARALLEL, n_ctx=PARALLEL * 256)  # fmt: skip
    log = tmp_path_factory.mktemp("llamacpp-batch") / "engine.log"
    with ProcessLauncher(cfg, str(tiny_model), log_path=log, startup_timeout_s=600) as endpoint:
        yield endpoint


def complete(url: str, prompt, max_tokens: int, **extra) -> dict:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "logprobs": 0, "return_tokens_as_token_ids": True, **extra}  # fmt: skip
    r = httpx.post(f"{url}/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    return {"text": choice["text"], "tokens": choice["logprobs"]["tokens"],
            "logprobs": choice["logprobs"]["token_logprobs"]}  # fmt: skip


def all_at_once(url: str, jobs: list[tuple]) -> list[dict]:
    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(lambda job: complete(url, job[0], job[1], **job[2]), jobs))


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "top_p": 0.9, "seed": 7}], ids=["greedy", "seeded"])
def test_concurrent_requests_get_their_single_request_tokens(batched, sampling):
    url = batched.base_url
    jobs = [(p, 8 + 5 * i, sampling) for i, p in enumerate(PROMPTS)]
    alone = [complete(url, *job[:2], **job[2]) for job in jobs]
    together = all_at_once(url, jobs)
    for a, b, job in zip(alone, together, jobs):
        assert len(b["tokens"]) == job[1]
        assert b["tokens"] == a["tokens"] and b["text"] == a["text"], job[0]
        # llama.cpp's kernels round a sequence's attention a little differently beside others
        # (its cells sit elsewhere in the shared cache): logprobs agree to float32 noise
        assert b["logprobs"] == pytest.approx(a["logprobs"], abs=1e-4)


def test_batched_tokens_are_the_one_sequence_engines(batched, tiny_model, tmp_path_factory):
    from harness.launchers.process import ProcessLauncher

    cfg = LlamaCppConfig(model=str(tiny_model), served_model_name="tiny", quant="f32", kv_cache_type="f32")
    log = tmp_path_factory.mktemp("llamacpp-one") / "engine.log"
    with ProcessLauncher(cfg, str(tiny_model), log_path=log, startup_timeout_s=600) as one:
        expected = [complete(one.base_url, p, 24) for p in PROMPTS[:4]]
    together = all_at_once(batched.base_url, [(p, 24, {}) for p in PROMPTS[:4]])
    assert [x["tokens"] for x in together] == [x["tokens"] for x in expected]


def test_echo_and_stop_strings_beside_others(batched):
    url = batched.base_url
    echo = {"echo": True, "logprobs": 1, "max_tokens": 3, "temperature": 0}
    alone = httpx.post(f"{url}/completions", json={"prompt": PROMPTS[2], **echo}, timeout=60).json()
    with ThreadPoolExecutor(4) as pool:
        noise = [pool.submit(complete, url, p, 60) for p in PROMPTS[4:7]]
        beside = httpx.post(f"{url}/completions", json={"prompt": PROMPTS[2], **echo}, timeout=60).json()
        [f.result() for f in noise]
    a, b = alone["choices"][0]["logprobs"], beside["choices"][0]["logprobs"]
    assert b["token_logprobs"][0] is None and len(b["tokens"]) == alone["usage"]["prompt_tokens"] + 3
    assert b["token_logprobs"][1:] == pytest.approx(a["token_logprobs"][1:], abs=1e-4)
    assert beside["choices"][0]["text"].startswith(PROMPTS[2])
    # a stop string cuts the text where the single request's text has it
    full = complete(url, PROMPTS[0], 30)["text"]
    stop = full[10:13]
    cut = complete(url, PROMPTS[0], 30, stop=[stop])
    assert cut["text"] == full[: full.index(stop)]


@pytest.fixture(scope="module")
def engine(tiny_model):
    """The engine in-process, two slots, where the tests look at its slots directly."""
    from backends.llamacpp.engine import Engine

    gguf = ensure_gguf(tiny_model, "f32")
    return Engine(str(gguf), n_ctx=2 * 1024, n_batch=64, n_gpu_layers=0, n_threads=None,
                  flash_attn=False, kv_cache_type="f32", parallel=2)  # fmt: skip


def greedy(n: int, **extra):
    from backends.llamacpp.engine import Sampling

    return Sampling(max_tokens=n, temperature=0, ignore_eos=True, **extra)


def test_a_request_joins_while_others_decode(engine):
    from backends.llamacpp.engine import Result

    a_ids, b_ids = engine.tokenize(PROMPTS[0]), engine.tokenize(PROMPTS[2])
    a_alone = [s.token.id for s in engine.generate(a_ids, greedy(900), Result([]))]
    b_alone = [s.token.id for s in engine.generate(b_ids, greedy(10), Result([]))]
    a = engine.generate(a_ids, greedy(900), Result([]))
    a_tokens = [next(a).token.id]  # A decodes...
    b_tokens = [s.token.id for s in engine.generate(b_ids, greedy(10), Result([]))]
    # ...B came, ran its 10 tokens and left while A, 900 tokens long, still decodes: it joined
    # the running batch instead of queueing behind A
    assert len(engine.batcher.running) == 1
    a_tokens += [s.token.id for s in a]
    assert a_tokens == a_alone and b_tokens == b_alone


def test_a_request_that_leaves_frees_its_slot(engine):
    """Both slots taken by requests whose consumers stop after two tokens (what the server does
    when a client disconnects); their slots are free again, and the next request runs."""
    from backends.llamacpp.engine import Result

    ids = engine.tokenize(PROMPTS[0])
    expected = [s.token.id for s in engine.generate(ids, greedy(5), Result([]))]
    gens = [engine.generate(ids, greedy(900), Result([])) for _ in range(2)]
    for gen in gens:
        next(gen), next(gen)
    assert not engine.batcher.free  # both slots taken
    for gen in gens:
        gen.close()
    deadline = time.monotonic() + 10
    while len(engine.batcher.free) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(engine.batcher.free) == [0, 1] and not engine.batcher.running
    # their cells stay as a prompt cache, and the cache's bookkeeping matches llama.cpp's cells
    mem = engine.lib.llama_get_memory(engine.ctx.ctx)
    for seq, cached in enumerate(engine.batcher.cached):
        assert cached[: len(ids)] == ids
        assert engine.lib.llama_memory_seq_pos_max(mem, seq) == len(cached) - 1
    result = Result([])
    steps = list(engine.generate(ids, greedy(5), result))  # reuses a cached prompt
    assert [s.token.id for s in steps] == expected and result.finish_reason == "length"


def test_idle_sequences_leave_the_kv_cache_when_a_request_is_admitted(engine):
    """A finished request's cells stay until the next request comes; that one takes the idle
    sequence sharing its prefix (its cells are reused) and every other idle sequence's cells go,
    so a step attends over the running sequences' cells only (as llama-server's idle-slot clear)."""
    from backends.llamacpp.engine import Result

    mem = engine.lib.llama_get_memory(engine.ctx.ctx)
    a_ids, b_ids = engine.tokenize(PROMPTS[2]), engine.tokenize(PROMPTS[4])
    # A runs long enough to be still running when B comes (a request queues at its first next(),
    # and the scheduler does not wait for the reader): were A finished, B's admission would clear
    # A's idle sequence, which is the behaviour checked below
    gens = [engine.generate(ids, greedy(n), Result([])) for ids, n in ((a_ids, 200), (b_ids, 3))]
    firsts = [next(gen).token.id for gen in gens]  # both running, one sequence each
    b_tokens = [firsts[1], *(s.token.id for s in gens[1])]
    list(gens[0])
    assert all(engine.lib.llama_memory_seq_pos_max(mem, seq) >= 0 for seq in (0, 1))  # both cached
    cached = engine.batcher.cached
    (a_seq,) = [seq for seq in (0, 1) if cached[seq][: len(a_ids)] == a_ids]
    a = engine.generate(a_ids, greedy(900), Result([]))
    next(a)
    (seq,) = [slot.seq for slot in engine.batcher.running]
    assert seq == a_seq  # the sequence holding its prompt, whose cells it reuses
    idle = 1 - seq
    assert engine.batcher.cached[idle] == [] and engine.lib.llama_memory_seq_pos_max(mem, idle) == -1
    # B's cells went to host RAM, and come back for B's prompt: the same tokens, no prefill
    b_kept = [key for key in engine.batcher.ram.entries if list(key[: len(b_ids)]) == b_ids]
    assert b_kept
    again = engine.generate(b_ids, greedy(3), Result([]))
    first = next(again).token.id
    assert b_kept[0] not in engine.batcher.ram.entries  # loaded into a sequence
    assert [first, *(s.token.id for s in again)] == b_tokens
    a.close()


def test_no_cache_idle_slots_leaves_idle_cells_in_place(tiny_model):
    """--no-cache-idle-slots (llama-server's switch): an idle sequence keeps its cells when
    another request is admitted, nothing goes through host RAM, and a request with the same
    prompt later still reuses them."""
    from backends.llamacpp.engine import Engine, Result

    gguf = ensure_gguf(tiny_model, "f32")
    engine = Engine(str(gguf), n_ctx=2 * 1024, n_batch=64, n_gpu_layers=0, n_threads=None, flash_attn=False,
                    kv_cache_type="f32", parallel=2, cache_idle_slots=False)  # fmt: skip
    mem = engine.lib.llama_get_memory(engine.ctx.ctx)
    a_ids, b_ids = engine.tokenize(PROMPTS[2]), engine.tokenize(PROMPTS[4])
    b_tokens = [s.token.id for s in engine.generate(b_ids, greedy(3), Result([]))]
    (b_seq,) = [seq for seq in (0, 1) if engine.batcher.cached[seq][: len(b_ids)] == b_ids]
    a = engine.generate(a_ids, greedy(900), Result([]))
    next(a)
    (a_seq,) = [slot.seq for slot in engine.batcher.running]
    assert a_seq != b_seq  # A took the empty sequence, B's stays idle...
    assert engine.batcher.cached[b_seq][: len(b_ids)] == b_ids  # ...with its cells in the KV cache
    assert engine.lib.llama_memory_seq_pos_max(mem, b_seq) >= len(b_ids) - 1
    assert not engine.batcher.ram.entries
    a.close()
    again = engine.generate(b_ids, greedy(900), Result([]))
    firsts = [next(again).token.id for _ in range(3)]
    # B's own cells (A, closed, may still hold a_seq for a step), the same tokens
    assert b_seq in [slot.seq for slot in engine.batcher.running] and firsts == b_tokens
    again.close()


def test_prompt_longer_than_a_sequences_share(batched):
    r = httpx.post(f"{batched.base_url}/completions", timeout=30,
                   json={"prompt": list(range(5, 5 + 250)), "max_tokens": 10})  # fmt: skip
    assert r.status_code == 400
    assert "maximum context length is 256 tokens" in r.json()["error"]["message"]
    info = httpx.get(f"{batched.base_url}/engine", timeout=30).json()
    assert info["parallel"] == PARALLEL and info["n_ctx_per_sequence"] == 256
    assert info["n_ctx"] == PARALLEL * 256 and info["prefix_cache"] is False
    assert info["cache_idle_slots"] is True  # unset on a CPU build: idle slots go to host RAM


def test_bad_parallel_settings_are_one_line():
    with pytest.raises(HyperbenchError, match="speculative decoding runs one sequence at a time"):
        LlamaCppConfig(parallel=4, speculative="ngram").check()
    with pytest.raises(HyperbenchError, match=r"n_ctx=64 is too small for parallel=8: .* 8 tokens"):
        LlamaCppConfig(parallel=8, n_ctx=64).check()
    with pytest.raises(ValueError, match="parallel"):
        LlamaCppConfig(parallel=0)


@pytest.mark.parametrize("args, message", [
    (["--parallel", "0"], "error: --parallel: Input should be greater than or equal to 1"),
    (["--parallel", "8", "--n-ctx", "64"], "error: n_ctx=64 is too small for parallel=8"),
])  # fmt: skip
def test_bad_parallel_flags_exit_2_in_one_line(tiny_model, args, message):
    gguf = ensure_gguf(tiny_model, "f32")
    p = subprocess.run([sys.executable, "-m", "backends.llamacpp", "--model", str(gguf), "--port", "0", *args],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), p.stderr
