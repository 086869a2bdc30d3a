"""Workloads end to end (harness/bench/workload.py through `hyperbench bench`): prompt files in JSONL
and ShareGPT format, the chat path, and seeded synthetic prompts.

What was sent is read back from the engine itself: the synthetic engine (started in-process
here, benched through `--url`) keeps every streamed request's prompt in GET /v1/engine/trace,
and the transformers engine counts each prompt's tokens with the real tokenizer into `usage`,
which the harness writes to records.jsonl.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import httpx
import numpy as np
import pytest

from backends.synthetic import start_in_thread

FILE_PROMPTS = [  # distinct, under the trace's 64 characters, distinct token and word counts
    "Hello",
    "The quick brown fox",
    "Once upon a time there was",
    "Write a short poem about the sea and the wind",
    "One two three four five six seven eight nine ten eleven",
]


def hb(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def records(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]


def sent_prompts(srv) -> list[str]:
    """The prompt of every streamed request the synthetic engine saw, in arrival order."""
    return [r["prompt"] for r in httpx.get(f"{srv.base_url}/engine/trace", timeout=10).json()["requests"]]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def sharegpt_rows(prompts) -> list[dict]:
    """ShareGPT's schema: a system turn first (not the prompt), then human/gpt turns."""
    return [{"id": f"conv{i}", "conversations": [
        {"from": "system", "value": "You are a helpful assistant."},
        {"from": "human", "value": p},
        {"from": "gpt", "value": "An answer that is not part of the prompt."},
        {"from": "human", "value": "A follow-up that is not the first prompt."}]}
        for i, p in enumerate(prompts)]  # fmt: skip


@pytest.fixture
def synthetic():
    with start_in_thread(ttft_ms=0, itl_ms=0) as srv:
        yield srv


def bench_url(srv, tmp_path, name, *args):
    res = hb("bench", "--url", srv.base_url, "--model", "tiny-llama", "--concurrency", "1",
             "--output-len", "3", "--warmup", "0", "--no-plots", "--results-dir", str(tmp_path),
             "--run-name", name, *args)  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    assert summary["status"] == "complete"
    return tmp_path / name


# --- prompt files -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "sharegpt-jsonl", "sharegpt-json", "messages-jsonl"])
def test_dataset_prompts_are_the_files(synthetic, tmp_path, fmt):
    """Every prompt sent is a prompt of the file (the first human/user turn of a conversation),
    and with as many requests as rows each row is sent once."""
    if fmt == "jsonl":
        data = tmp_path / "prompts.jsonl"
        write_jsonl(data, [{"prompt": p, "other": 1} for p in FILE_PROMPTS])
    elif fmt == "sharegpt-jsonl":
        data = tmp_path / "sharegpt.jsonl"
        write_jsonl(data, sharegpt_rows(FILE_PROMPTS))
    elif fmt == "sharegpt-json":  # the ShareGPT dataset as published: one JSON array
        data = tmp_path / "ShareGPT_V3_unfiltered_cleaned_split.json"
        data.write_text(json.dumps(sharegpt_rows(FILE_PROMPTS), indent=1))
    else:
        data = tmp_path / "chat.jsonl"
        write_jsonl(data, [{"messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": p}]} for p in FILE_PROMPTS])  # fmt: skip
    n = len(FILE_PROMPTS)
    run = bench_url(synthetic, tmp_path, "ds", "--dataset", str(data), "--num-requests", str(n))
    sent = sent_prompts(synthetic)
    assert Counter(sent) == Counter(FILE_PROMPTS)  # each row once, exactly as written
    recs = records(run)
    assert len(recs) == n and all(r["error"] is None and r["output_tokens"] == 3 for r in recs)
    # the synthetic engine counts a text prompt's words: the records carry the server's usage
    assert Counter(r["prompt_tokens"] for r in recs) == Counter(len(p.split()) for p in FILE_PROMPTS)
    assert json.loads((run / "config.json").read_text())["workload"]["dataset"] == str(data)


def test_dataset_with_more_requests_than_rows_draws_from_the_file(synthetic, tmp_path):
    data = tmp_path / "prompts.jsonl"
    write_jsonl(data, [{"prompt": p} for p in FILE_PROMPTS[:2]])
    bench_url(synthetic, tmp_path, "more", "--dataset", str(data), "--num-requests", "6")
    sent = sent_prompts(synthetic)
    assert len(sent) == 6 and set(sent) <= set(FILE_PROMPTS[:2])


BAD_FILES = {
    "not-json.jsonl": ('{"prompt": "ok"}\n{"prompt": oops}\n', "not-json.jsonl:2: not valid JSON"),
    "string-row.jsonl": ('"just a string"\n', "string-row.jsonl:1: expected an object"),
    "no-user-turn.jsonl": ('{"conversations": [{"from": "gpt", "value": "hi"}]}\n', "no-user-turn.jsonl:1"),
    "array-of-strings.json": ('["a", "b"]', "array-of-strings.json: item 0: expected an object"),
    "empty.jsonl": ("\n\n", "has no prompts"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_dataset_is_a_one_line_error_before_the_engine_starts(tmp_path, tiny_model, name):
    text, needle = BAD_FILES[name]
    (tmp_path / name).write_text(text)
    res = hb("bench", "--engine", "hf", "--model", str(tiny_model), "--dataset", str(tmp_path / name),
             "--results-dir", str(tmp_path / "r"), timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("error: ") and needle in res.stderr, res.stderr
    assert not (tmp_path / "r").exists()  # refused before a run folder was made or an engine started


@pytest.mark.parametrize("fmt", ["jsonl", "sharegpt"])
def test_dataset_prompt_tokens_on_the_hf_engine(tmp_path, tiny_model, fmt):
    """On a real engine: records.jsonl's prompt token counts are the file's prompts tokenized."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    lengths = [len(tok(p).input_ids) for p in FILE_PROMPTS]
    assert len(set(lengths)) == len(lengths)  # so the counts name the prompts
    data = tmp_path / "data.jsonl"
    write_jsonl(data, [{"prompt": p} for p in FILE_PROMPTS] if fmt == "jsonl" else sharegpt_rows(FILE_PROMPTS))
    res = hb("bench", "--engine", "hf", "--model", str(tiny_model), "--dtype", "float32",
             "--concurrency", "2", "--dataset", str(data), "--num-requests", str(len(FILE_PROMPTS)),
             "--output-len", "4", "--no-plots", "--results-dir", str(tmp_path), "--run-name", "hf")  # fmt: skip
    assert res.returncode == 0, res.stderr
    recs = records(tmp_path / "hf")
    assert all(r["error"] is None and r["output_tokens"] == 4 for r in recs)
    assert sorted(r["prompt_tokens"] for r in recs) == sorted(lengths)
    summary = json.loads((tmp_path / "hf" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["points"][0]["prompt_tokens"] == sum(lengths)


# --- chat -------------------------------------------------------------------------------------


def test_chat_bench_on_the_hf_engine(tmp_path, tiny_model):
    """--chat sends /v1/chat/completions: each synthetic prompt (decoded to text) as one user
    message, wrapped by the model's chat template, which the token counts show."""
    from transformers import AutoTokenizer

    from harness.bench.workload import synthetic_prompts

    n, input_len, seed = 4, 12, 3
    res = hb("bench", "--engine", "hf", "--model", str(tiny_model), "--dtype", "float32", "--chat",
             "--concurrency", "2", "--input-len", str(input_len), "--output-len", "5",
             "--num-requests", str(n), "--seed", str(seed), "--no-plots", "--results-dir", str(tmp_path),
             "--run-name", "chat")  # fmt: skip
    assert res.returncode == 0, res.stderr
    run = tmp_path / "chat"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete"
    (point,) = summary["points"]
    assert point["completed"] == n and point["failed"] == 0 and point["output_tokens"] == n * 5
    assert json.loads((run / "config.json").read_text())["workload"]["chat"] is True
    recs = records(run)
    assert len(recs) == n
    for r in recs:
        assert r["error"] is None and r["output_tokens"] == 5 and r["finish_reason"] == "length"
        assert r["first_token"] is not None and len(r["token_times"]) >= 1 and r["text"]
        # tokens counted per chunk from the engine's cumulative usage, not from text
        assert r["tokens_from"] == "usage" and sum(r["chunk_tokens"]) == 5
    tok = AutoTokenizer.from_pretrained(tiny_model)
    expected = []
    for ids in synthetic_prompts(tok, n, input_len, seed):
        text = tok.apply_chat_template([{"role": "user", "content": tok.decode(ids)}],
                                       add_generation_prompt=True, tokenize=False)
        expected.append(len(tok(text, add_special_tokens=False).input_ids))
    assert sorted(r["prompt_tokens"] for r in recs) == sorted(expected)
    assert min(expected) > input_len  # the template's tokens: the chat path, not completions


# --- seeded synthetic prompts -----------------------------------------------------------------


def test_same_seed_same_prompts_across_runs(synthetic, tmp_path, tiny_model):
    from transformers import AutoTokenizer

    from harness.bench.workload import synthetic_prompts

    n, input_len = 5, 10  # 10 ids print within the trace's 64 characters

    def prompts_of_a_run(name, seed):
        before = len(sent_prompts(synthetic))
        run = bench_url(synthetic, tmp_path, name, "--input-len", str(input_len), "--num-requests", str(n),
                        "--seed", str(seed))  # fmt: skip
        sent = [json.loads(p) for p in sent_prompts(synthetic)[before:]]
        assert all(r["prompt_tokens"] == input_len for r in records(run))
        return sent

    first = prompts_of_a_run("a", 11)
    second = prompts_of_a_run("b", 11)
    other = prompts_of_a_run("c", 12)
    assert len(first) == n and all(len(p) == input_len for p in first)
    assert len({tuple(p) for p in first}) == n  # n different prompts within a run
    assert second == first
    assert other != first and not {tuple(p) for p in other} & {tuple(p) for p in first}
    # and they are the workload's own prompts for that seed, token ids sent as they are
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert first == synthetic_prompts(tok, n, input_len, 11)
    assert not set(x for p in first + other for x in p) & set(tok.all_special_ids)


# --- the warm-up prompt -------------------------------------------------------------------------


def _shares_a_prefix(a, b) -> bool:
    return len(a) > 0 and len(b) > 0 and a[0] == b[0]


@pytest.mark.parametrize("kind", ["ids", "text", "chat"])
def test_warmup_prompts_share_no_prefix_with_any_measured_prompt(kind):
    """A warm-up with request 0's own prompt filled the prefix cache that request 0 then hit."""
    from harness.adapter import GenRequest
    from harness.bench.workload import WARMUP_MAX_TOKENS, warmup_requests

    rng = np.random.default_rng(0)
    if kind == "ids":  # a small vocabulary, so first ids collide unless chosen on purpose
        measured = [GenRequest(prompt=rng.integers(0, 40, 16).tolist()) for _ in range(30)]
    elif kind == "text":
        measured = [GenRequest(prompt=p) for p in FILE_PROMPTS + [" ~tilde", "#hash", "|bar"]]
    else:
        measured = [GenRequest(messages=[{"role": "user", "content": p}]) for p in FILE_PROMPTS]
    warm = warmup_requests(measured, 3, seed=0)
    assert len(warm) == 3 and all(w.max_tokens == WARMUP_MAX_TOKENS for w in warm)
    for w in warm:
        if kind == "chat":
            assert w.prompt is None and len(w.messages) == 1
            prompt, others = w.messages[0]["content"], [m.messages[0]["content"] for m in measured]
        else:
            prompt, others = w.prompt, [m.prompt for m in measured]
        assert type(prompt) is type(others[0])  # the same kind of prompt as the measured ones
        assert not any(_shares_a_prefix(prompt, o) or _shares_a_prefix(prompt, o.lstrip()
                       if isinstance(o, str) else o) for o in others), (prompt, others)
        if kind == "ids":
            assert len(prompt) == 16 and set(prompt) <= {t for m in measured for t in m.prompt}
    assert warmup_requests(measured, 0, seed=0) == []


def test_warmup_of_a_long_run_uses_a_longer_free_prefix():
    """Thousands of prompts over a small vocabulary start with every id (a 30-minute soak at 20
    req/s on the tiny model: 36,000 prompts, 1,000 ids): the warm-up then starts with two ids no
    prompt starts with, instead of refusing the run."""
    from harness.adapter import GenRequest
    from harness.bench.workload import warmup_requests

    rng = np.random.default_rng(1)
    measured = [GenRequest(prompt=rng.integers(0, 40, 16).tolist()) for _ in range(3000)]
    assert len({m.prompt[0] for m in measured}) == 40  # every id starts some prompt
    pairs = {tuple(m.prompt[:2]) for m in measured}
    for w in warmup_requests(measured, 2, seed=0):
        assert len(w.prompt) == 16 and tuple(w.prompt[:2]) not in pairs


def test_bench_warms_up_with_a_prompt_of_its_own(synthetic, tmp_path):
    """Through `hyperbench bench`: the first prompt the engine saw (the warm-up) starts with a
    token id that starts no measured prompt."""
    before = len(sent_prompts(synthetic))
    res = hb("bench", "--url", synthetic.base_url, "--model", "tiny-llama", "--concurrency", "1",
             "--output-len", "2", "--warmup", "1", "--input-len", "10", "--num-requests", "4",
             "--no-plots", "--results-dir", str(tmp_path), "--run-name", "w")  # fmt: skip
    assert res.returncode == 0, res.stderr
    warm, *measured = [json.loads(p) for p in sent_prompts(synthetic)[before:]]
    assert len(measured) == 4 and len(warm) == 10
    assert warm[0] not in {p[0] for p in measured}
    assert warm not in measured
