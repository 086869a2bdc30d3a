"""Offline data for `score`: staging from registry packages and the TruthfulQA CSV, the manifest,
stock task YAMLs pointed at local files, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.errors import HyperbenchError
from harness.score import staging
from harness.score.data import MANIFEST, DataDir, DataWriter

REPO = Path(__file__).resolve().parents[1]
TRUTHFULQA_CSV = Path(os.environ.get(staging.TRUTHFULQA_CSV_ENV)
                      or REPO.parent / "shared" / "data" / "truthfulqa" / "TruthfulQA.csv")


@pytest.fixture(scope="session")
def staged() -> Path:
    if not TRUTHFULQA_CSV.is_file():
        pytest.skip(f"TruthfulQA CSV not found at {TRUTHFULQA_CSV} (set ${staging.TRUTHFULQA_CSV_ENV})")
    return staging.ensure_staged(truthfulqa_csv=TRUTHFULQA_CSV)


def hb(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def assert_one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(err) == 1, res.stderr
    for n in needles:
        assert n in err[0], err[0]


# ---------------------------------------------------------------------------- staging


def test_stage_from_registry_packages(staged):
    data = DataDir.open(staged)
    ds = data.manifest["datasets"]
    assert set(ds) == {"openai/gsm8k", "cais/mmlu", "truthfulqa/truthful_qa"}
    assert ds["openai/gsm8k"]["configs"]["main"]["rows"] == {"test": 1319}
    mmlu = ds["cais/mmlu"]["configs"]
    assert len(mmlu) == 57 and mmlu["anatomy"]["format"] == "arrow"
    assert mmlu["anatomy"]["rows"] == {"dev": 5, "test": 135, "validation": 14}
    assert sum(c["rows"]["test"] for c in mmlu.values()) == 14042  # the full MMLU test set
    tqa = ds["truthfulqa/truthful_qa"]["configs"]
    assert tqa["generation"]["rows"] == {"validation": 817}
    assert any("APPROXIMATION" in n for n in data.notes("truthfulqa/truthful_qa", "multiple_choice"))
    assert not any("APPROXIMATION" in n for n in data.notes("truthfulqa/truthful_qa", "generation"))
    for hub, name in (("openai/gsm8k", "main"), ("cais/mmlu", "anatomy"),
                      ("truthfulqa/truthful_qa", "generation"), ("truthfulqa/truthful_qa", "multiple_choice")):
        data.check(hub, name)  # every staged file is in the schema the stock task reads
    assert "gsm8k/main/test.jsonl" == ds["openai/gsm8k"]["configs"]["main"]["splits"]["test"]  # relative


def test_truthfulqa_csv_to_hf_schemas():
    gen, mc = staging.truthfulqa_rows(TRUTHFULQA_CSV)
    assert len(gen) == len(mc) == 817
    g, m = gen[0], mc[0]
    assert g["question"] == "What happens to you if you eat watermelon seeds?"
    assert g["best_answer"] == "The watermelon seeds pass through your digestive system"
    assert "You grow watermelons in your stomach" in g["incorrect_answers"]
    assert m["mc1_targets"]["choices"][0] == g["best_answer"]
    assert m["mc1_targets"]["labels"] == [1] + [0] * len(g["incorrect_answers"])
    assert m["mc2_targets"]["choices"] == g["correct_answers"] + g["incorrect_answers"]
    assert sum(m["mc2_targets"]["labels"]) == len(g["correct_answers"])


def test_data_stage_cli_and_restage_keeps_other_datasets(tmp_path):
    res = hb("data", "stage", "gsm8k", "--to", str(tmp_path / "d"))
    assert res.returncode == 0, res.stderr
    assert "openai/gsm8k" in res.stdout and "1319 rows" in res.stdout
    res = hb("data", "stage", "truthfulqa", "--to", str(tmp_path / "d"), "--truthfulqa-csv", str(TRUTHFULQA_CSV))
    assert res.returncode == 0, res.stderr
    assert "APPROXIMATION" in res.stdout
    manifest = json.loads((tmp_path / "d" / MANIFEST).read_text())
    assert set(manifest["datasets"]) == {"openai/gsm8k", "truthfulqa/truthful_qa"}
    umask = os.umask(0)
    os.umask(umask)
    for f in (MANIFEST, "gsm8k/main/test.jsonl", "truthfulqa/generation/validation.jsonl"):
        # readable as the umask allows (to copy to a cluster and share), not 0600 as temp files are
        assert stat.S_IMODE((tmp_path / "d" / f).stat().st_mode) == 0o666 & ~umask, f


def test_stage_truthfulqa_needs_the_csv(tmp_path):
    env = {staging.TRUTHFULQA_CSV_ENV: ""}
    assert_one_line_error(hb("data", "stage", "truthfulqa", "--to", str(tmp_path), env=env), "TruthfulQA.csv")


def test_pull_without_hub_says_how_to_stage(tmp_path):
    # no silent fallback to the registry's copies (they differ from the hub's): the exact command
    res = hb("data", "pull", "mmlu", "gsm8k", "truthfulqa", "--to", str(tmp_path / "d"))
    assert_one_line_error(res, "not reachable", "HF_HUB_OFFLINE",
                          f"hyperbench data stage mmlu gsm8k truthfulqa --to {tmp_path / 'd'} --truthfulqa-csv")
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------------------- tasks on local data


def test_stock_yaml_included_and_pointed_at_local_files(staged, tmp_path):
    from harness.score.tasks import prepare

    p = prepare(["gsm8k", "truthfulqa_mc2"], staged, tmp_path)
    spec = yaml.safe_load((tmp_path / "gsm8k.yaml").read_text())
    assert spec["include"].endswith("lm_eval/tasks/gsm8k/gsm8k.yaml")
    assert spec["dataset_path"] == "json" and spec["dataset_name"] is None
    assert spec["dataset_kwargs"] == {"data_files": {"test": str(staged / "gsm8k/main/test.jsonl")}}
    assert spec["fewshot_split"] == "test" and spec["training_split"] is None  # no train split staged
    assert any("few-shot examples come from 'test'" in n for n in p.notes)
    # with --num-fewshot 0 no example is drawn: no note says where examples come from
    zero = prepare(["gsm8k"], staged, tmp_path / "zero", num_fewshot=0)
    assert not any("few-shot" in n for n in zero.notes), zero.notes
    assert any("APPROXIMATION" in n for n in p.data["truthfulqa_mc2"]["notes"])
    loaded = p.tm.load(p.names)["tasks"]
    gsm = loaded["gsm8k"]
    assert gsm.config.dataset_path == "json" and len(gsm.eval_docs) == 1319
    assert gsm.config.doc_to_text == "Question: {{question}}\nAnswer:"  # the stock prompt
    mc2 = loaded["truthfulqa_mc2"]
    assert mc2.config.process_results.__name__ == "process_results_mc2"  # the stock metric code
    assert len(mc2.eval_docs) == 817


def test_group_expands_to_local_leaf_tasks(staged, tmp_path):
    from harness.score.tasks import prepare

    p = prepare(["mmlu"], staged, tmp_path)
    assert p.names == ["mmlu"] and len(p.output_types) == 57
    assert set(p.output_types.values()) == {"multiple_choice"}
    result = p.tm.load(["mmlu"])
    assert set(result["groups"]) >= {"mmlu", "mmlu_stem", "mmlu_humanities"}
    anatomy = result["tasks"]["mmlu_anatomy"]
    assert anatomy.config.dataset_path == "arrow" and len(anatomy.eval_docs) == 135
    assert anatomy.config.fewshot_split == "dev"


def test_perplexity_task_from_a_text_file(tmp_path):
    from harness.score.tasks import prepare

    text = tmp_path / "t.txt"
    text.write_text("The capital of France is Paris.\n")
    p = prepare([], None, tmp_path / "w", perplexity=text)
    assert p.names == ["perplexity"] and p.output_types == {"perplexity": "loglikelihood_rolling"}
    task = p.tm.load(["perplexity"])["tasks"]["perplexity"]
    assert task.doc_to_target(task.eval_docs[0]) == "The capital of France is Paris.\n"


def test_unknown_task_suggests(tmp_path):
    from harness.score.tasks import prepare

    with pytest.raises(HyperbenchError, match="unknown task 'gsm8kk'.*did you mean gsm8k"):
        prepare(["gsm8kk"], None, tmp_path)


def write_bad_gsm8k(root: Path) -> Path:
    w = DataWriter(root)
    w.write_rows("openai/gsm8k", "main", "test", [{"q": "1+1?", "a": "2"}])
    w.describe("openai/gsm8k", "gsm8k", "hand-made")
    return w.finish()


def test_data_dir_errors(staged, tmp_path):
    from harness.score.tasks import prepare

    with pytest.raises(HyperbenchError, match="does not exist"):
        prepare(["gsm8k"], tmp_path / "nowhere", tmp_path / "w")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HyperbenchError, match="not a hyperbench data folder"):
        prepare(["gsm8k"], tmp_path / "empty", tmp_path / "w")
    only_gsm8k = write_bad_gsm8k(tmp_path / "bad")
    with pytest.raises(HyperbenchError, match=r"lacks 'question', 'answer' \(has a, q\)"):
        prepare(["gsm8k"], only_gsm8k, tmp_path / "w")
    with pytest.raises(HyperbenchError, match=r"dataset cais/mmlu \(anatomy\) is not in data dir"):
        prepare(["mmlu_anatomy"], only_gsm8k, tmp_path / "w")
    w = DataWriter(tmp_path / "bad2")
    w.write_rows("openai/gsm8k", "main", "test", [{"question": "1+1?", "answer": "2"}])
    with pytest.raises(HyperbenchError, match="'#### N'"):
        prepare(["gsm8k"], w.finish(), tmp_path / "w")


# ---------------------------------------------------------------------------- CLI: one line, exit 2


def test_cli_unknown_task(staged, tmp_path):
    res = hb("score", "--engine", "hf", "--model", "tiny-llama", "--tasks", "mmlu,nope_task",
             "--data-dir", str(staged), "--results-dir", str(tmp_path))
    assert_one_line_error(res, "unknown task 'nope_task'")
    assert not any(tmp_path.iterdir())  # no run folder left behind


def test_cli_missing_data_dir(tmp_path):
    res = hb("score", "--engine", "hf", "--model", "tiny-llama", "--tasks", "gsm8k",
             "--data-dir", str(tmp_path / "no-such-dir"), "--results-dir", str(tmp_path))
    assert_one_line_error(res, "data dir", "does not exist", "hyperbench data")


def test_cli_dataset_in_the_wrong_schema(tmp_path):
    res = hb("score", "--engine", "hf", "--model", "tiny-llama", "--tasks", "gsm8k",
             "--data-dir", str(write_bad_gsm8k(tmp_path / "bad")), "--results-dir", str(tmp_path / "r"))
    assert_one_line_error(res, "test.jsonl", "not in the openai/gsm8k (main) schema", "lacks 'question'")


def test_cli_no_data_dir_and_no_hub(tmp_path):
    # lm-eval would fetch from the hub: with none, one line before any engine starts
    res = hb("score", "--engine", "hf", "--model", "tiny-llama", "--tasks", "gsm8k",
             "--results-dir", str(tmp_path))
    assert_one_line_error(res, "cannot load the data of gsm8k", "OfflineModeIsEnabled", "--data-dir")
    assert not any(tmp_path.iterdir())  # no run folder left behind


def test_cli_option_errors(tmp_path):
    assert_one_line_error(hb("score", "--tasks", "gsm8k", "--gen-kwargs", "beams=4"),
                          "unknown generation parameter 'beams'")
    assert_one_line_error(hb("score", "--resume", str(tmp_path), "--tasks", "gsm8k"), "--resume")
    assert_one_line_error(hb("score", "--resume", str(tmp_path)), "not a run folder")


def test_pull_writes_every_split_of_a_dataset(tmp_path):
    # `data pull` minus the network: `datasets` reads a local dataset folder as it reads a hub id
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.jsonl").write_text('{"question": "1+1?", "answer": "1+1=2\\n#### 2"}\n' * 3)
    (src / "test.jsonl").write_text('{"question": "2+2?", "answer": "2+2=4\\n#### 4"}\n' * 2)
    w = DataWriter(tmp_path / "d")
    staging._pull_one(w, str(src), None)
    entry = DataDir.open(w.finish()).manifest["datasets"][str(src)]
    assert entry["configs"]["default"]["rows"] == {"train": 3, "test": 2}
    assert entry["source"] == f"Hugging Face hub {src}"


def test_cli_perplexity_against_an_engine_without_a_tokenizer(tmp_path):
    # the windows need the served model's tokenizer: said before any request, no run folder left
    text = tmp_path / "t.txt"
    text.write_text("The capital of France is Paris.\n")
    res = hb("score", "--url", "http://127.0.0.1:9/v1", "--model", "m", "--perplexity", str(text),
             "--results-dir", str(tmp_path / "r"))
    assert_one_line_error(res, "perplexity", "--tokenizer DIR")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
