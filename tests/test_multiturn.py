"""Multi-turn conversations against the synthetic engine (its timing is known): turn k+1 leaves
after turn k's last token plus the think time, its prompt holds turn k's answer, and the bench
command's records and summary carry each turn and its TTFT."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from harness import cli as cli_module
from harness.adapter import EngineClient, GenRequest
from harness.bench.conversation import as_conversations, turn_request
from harness.bench.loadgen import run_point
from backends.synthetic import launch

THINK_S = 0.05


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    with launch(log_path=tmp_path_factory.mktemp("syn") / "engine.log", ttft_ms=10, itl_ms=2) as endpoint:
        yield endpoint


class WireLog(EngineClient):
    """The real client, keeping what each request actually sent (the conversation so far)."""

    sent: dict

    async def generate(self, req, rec):
        self.sent[rec.request_id] = req
        return await super().generate(req, rec)


@pytest.mark.parametrize("kind, value", [("concurrency", 2), ("rate", 20.0)])
def test_next_turn_follows_the_answer_plus_think_time_and_carries_it(synthetic, kind, value):
    turns = 3
    reqs = as_conversations([GenRequest(prompt=f"user{i} says hi", max_tokens=4) for i in range(3 * turns)], turns)

    async def go():
        async with WireLog(synthetic.base_url, synthetic.model) as c:
            c.sent = {}
            recs = await run_point(c, reqs, kind, value, 0, lambda r: None, think_s=THINK_S)
            return recs, c.sent

    recs, sent = asyncio.run(go())
    assert all(r.ok for r in recs) and len(recs) == 9
    by = {(r.conversation, r.turn): r for r in recs}
    for (c, t), r in by.items():
        assert r.request_id == c * turns + t
        if t == 0:
            assert sent[r.request_id].prompt == f"user{c * turns} says hi"
            continue
        prev = by[(c, t - 1)]
        # sent after the answer's last token plus the think time, and not much later
        assert r.send - prev.end >= THINK_S - 1e-4
        assert r.send - prev.end < THINK_S + 0.02
        assert r.scheduled == pytest.approx(prev.end + THINK_S)
        # the whole conversation so far: every earlier user turn, each followed by its answer
        prompt = sent[r.request_id].prompt
        assert prev.text and f"user{c * turns + t - 1} says hi{prev.text}\n" in prompt
        assert prompt.endswith(f"user{c * turns + t} says hi")
        assert r.prompt_tokens > prev.prompt_tokens  # the history grows
    if kind == "concurrency":  # 3 conversations on 2 streams: one stream starts a second one
        assert sum(1 for r in recs if r.send_gap is not None) == 1


def test_turn_request_shapes_chat_and_token_ids():
    chat = as_conversations([GenRequest(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(2)], 2)
    assert turn_request(chat[1], ["a0"], None).messages == [
        {"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"}, {"role": "user", "content": "q1"}]
    ids = as_conversations([GenRequest(prompt=[1, 2]), GenRequest(prompt=[3])], 2)
    assert turn_request(ids[1], ["xy"], lambda s: [ord(ch) for ch in s]).prompt == [1, 2, ord("x"), ord("y"), 3]


def test_bench_turns_end_to_end_reports_ttft_by_turn(tmp_path):
    res = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--engine", "synthetic",
                          "--ttft-ms", "5", "--itl-ms", "1", "--turns", "3", "--think-time-ms", "20",
                          "--num-requests", "4", "--concurrency", "2", "--input-len", "16", "--output-len", "4",
                          "--results-dir", str(tmp_path), "--run-name", "t", "--no-plots"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    point = json.loads((tmp_path / "t" / "summary.json").read_text())["points"][0]
    assert point["completed"] == 12
    turns = point["turns"]
    assert [t["turn"] for t in turns] == [1, 2, 3] and all(t["completed"] == 4 for t in turns)
    # token-id prompts: each turn adds 16 new ids and the previous answer, tokenized
    assert turns[0]["prompt_tokens_mean"] == 16
    assert turns[1]["prompt_tokens_mean"] > 32 and turns[2]["prompt_tokens_mean"] > turns[1]["prompt_tokens_mean"] + 16
    assert all(t["ttft_ms"]["p50"] >= 5 for t in turns)
    records = [json.loads(line) for line in (tmp_path / "t" / "records.jsonl").read_text().splitlines()]
    measured = [r for r in records if r["request_id"] >= 0]
    assert sorted((r["conversation"], r["turn"]) for r in measured) == [(c, t) for c in range(4) for t in range(3)]
    assert "## TTFT by turn" in (tmp_path / "t" / "report.md").read_text()


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_module.main(argv)
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["--think-time-ms", "10"], "give turns > 1"),
    (["--turns", "0"], "turns"),
    (["--turns", "2", "--trace", "x.csv"], "not with --trace"),
])
def test_bad_multiturn_flags_are_one_line(argv, says, tmp_path, capsys):
    code, err = run_main(["bench", "--engine", "synthetic", "--results-dir", str(tmp_path), *argv], capsys)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err


def test_a_resumed_conversation_goes_on_from_the_recorded_answers(synthetic):
    """bench --resume sends only a cut point's missing turns: a conversation's later turns carry
    the answers its earlier turns got before the cut (from their records)."""
    reqs = as_conversations([GenRequest(prompt=f"u{i}", max_tokens=2) for i in range(3)], 3)

    async def go():
        async with WireLog(synthetic.base_url, synthetic.model) as c:
            c.sent = {}
            recs = await run_point(c, reqs[1:], "concurrency", 1, 0, lambda r: None,
                                   answered={(0, 0): " before the cut"})
            return recs, c.sent

    recs, sent = asyncio.run(go())
    assert [(r.conversation, r.turn) for r in recs] == [(0, 1), (0, 2)]
    assert sent[0].prompt == "u0 before the cut\nu1"
    assert sent[1].prompt == f"u0 before the cut\nu1{recs[0].text}\nu2"
