"""The scoring path against real engine servers (tiny-llama, fp32), the same code for each engine:

- parity: the same per-item loglikelihoods (within 1e-3) and accuracy as lm-eval's own `hf` model;
- a known-answer check that cannot pass by accident: a reference forward pass / greedy decode in
  plain transformers (no lm-eval, no server) decides which items the model gets right; the data
  is relabelled so that exactly half of them are right, item by item;
- sampling parameters really reach the engine (temperature changes the text, top_k=1 brings
  greedy back, a seed reproduces, max_gen_toks bounds the length), and greedy is reported;
- perplexity through rolling windows equals a plain forward pass over the same windows.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from harness.score import staging
from harness.score.config import ScoreConfig
from harness.score.data import DataDir, DataWriter
from harness.score.run import run

REPO = Path(__file__).resolve().parents[1]
TRUTHFULQA_CSV = REPO.parent / "shared" / "data" / "truthfulqa" / "TruthfulQA.csv"


@pytest.fixture(scope="session")
def staged() -> Path:
    import os

    csv = os.environ.get(staging.TRUTHFULQA_CSV_ENV) or TRUTHFULQA_CSV
    if not Path(csv).is_file():
        pytest.skip(f"TruthfulQA CSV not found at {csv}")
    return staging.ensure_staged(truthfulqa_csv=csv)


def score(server, tmp_path, name, **spec) -> tuple[dict, Path]:
    cfg = ScoreConfig(engine={"kind": server.kind, "model": server.model},
                      target={"url": server.base_url, "tokenizer": str(server.model_path)},
                      score=spec, output={"results_dir": str(tmp_path), "run_name": name})
    folder = run(cfg).path
    return json.loads((folder / "summary.json").read_text()), folder


def samples(folder: Path, task: str) -> list[dict]:
    return [json.loads(x) for x in (folder / "samples" / f"{task}.jsonl").read_text().splitlines()]


def requests(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "requests.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------- parity with lm-eval hf

PARITY = dict(tasks=["mmlu_anatomy", "truthfulqa_mc2"], limit=10, num_fewshot=5)


@pytest.fixture(scope="module")
def hf_reference(tiny_model, staged, tmp_path_factory):
    """lm-eval's own `hf` model on the same weights, tasks and local data."""
    import lm_eval

    from harness.score.tasks import prepare

    p = prepare(PARITY["tasks"], staged, tmp_path_factory.mktemp("ref-tasks"))
    return lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_model},dtype=float32", device="cpu", batch_size=8,
        tasks=p.names, task_manager=p.tm, limit=PARITY["limit"], num_fewshot=PARITY["num_fewshot"],
        log_samples=True, bootstrap_iters=0, fewshot_random_seed=1234,
    )  # fmt: skip


ENGINE_LLS: dict[str, list[float]] = {}  # engine -> its per-item loglikelihoods, for the cross-engine check


def test_same_loglikelihoods_and_accuracy_as_lm_eval_hf(engine_server, hf_reference, staged, tmp_path):
    summary, folder = score(engine_server, tmp_path, "parity", data_dir=str(staged), **PARITY)
    assert summary["status"] == "complete"
    lls = []
    for task in PARITY["tasks"]:
        ref, ours = hf_reference["samples"][task], samples(folder, task)
        assert [s["doc_id"] for s in ours] == [s["doc_id"] for s in ref]
        n = 0
        for a, b in zip(ref, ours):
            assert b["arguments"] == [list(x) for x in a["arguments"]]  # the same prompts
            for (ll_ref, _), (ll, _) in zip([r[0] for r in a["resps"]], [r[0] for r in b["resps"]]):
                assert ll == pytest.approx(ll_ref, abs=1e-3), (task, a["doc_id"])
                lls.append(ll)
                n += 1
        assert n >= 40
        assert summary["tasks"][task]["metrics"]["acc"]["value"] == pytest.approx(
            hf_reference["results"][task]["acc,none"], abs=1e-6)
    assert sum(summary["lm"]["alignment"].values()) == summary["requests"]["loglikelihood"]["sent"]
    # and the same across engines serving these fp32 weights (each engine run so far in this session)
    for other, theirs in ENGINE_LLS.items():
        assert lls == pytest.approx(theirs, abs=1e-3), (engine_server.kind, other)
    ENGINE_LLS[engine_server.kind] = lls


# ---------------------------------------------------------------------------- known answers


class Reference:
    """Plain transformers on the served weights: lm-eval's semantics written out by hand."""

    def __init__(self, path: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def logprobs(self, ids: list[int]):
        with self.torch.no_grad():
            return self.model(self.torch.tensor([ids])).logits[0].float().log_softmax(-1)

    def continuation(self, context: str, continuation: str) -> float:
        ctx, whole = self.tok(context).input_ids, self.tok(context + continuation).input_ids
        lp = self.logprobs(whole)
        return sum(lp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))

    def greedy(self, prompt: str, n: int, stops: list[str]) -> tuple[str, float]:
        """Greedy text (cut at the first stop) and the smallest top-1/top-2 margin on the way."""
        ids = self.tok(prompt).input_ids
        out, margin = [], math.inf
        for _ in range(n):
            top = self.logprobs(ids + out)[-1].topk(2)
            margin = min(margin, (top.values[0] - top.values[1]).item())
            if top.indices[0].item() == self.tok.eos_token_id:
                break
            out.append(top.indices[0].item())
            text = self.tok.decode(out)
            if any(s in text for s in stops):
                break
        text = self.tok.decode(out)
        for s in stops:
            text = text.split(s)[0]
        return text, margin


def gsm8k_norm(s: str) -> str:
    for pattern in (",", r"\$", r"(?s).*#### ", r"\.$"):  # gsm8k.yaml's regexes_to_ignore
        s = re.sub(pattern, "", s)
    return s.lower()


def flexible_extract(text: str) -> str | None:
    matches = re.findall(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", text)  # gsm8k.yaml's flexible-extract
    if not matches:
        return None
    return next(m for m in matches[-1] if m).strip()


@pytest.fixture(scope="module")
def known_answers(tiny_model, staged, tmp_path_factory):
    """A data dir whose labels make exactly half the items right, and which half."""
    ref = Reference(tiny_model)
    src = DataDir.open(staged)
    from harness.score.data import first_rows

    anatomy = src.config("cais/mmlu", "anatomy")
    mmlu_rows = first_rows(anatomy.splits["test"], "arrow", n=135)
    mmlu, mmlu_right = [], []
    for row in mmlu_rows:
        ctx = ("The following are multiple choice questions (with answers) about anatomy.\n\n"
               + row["question"].strip() + "".join(f"\n{k}. {c}" for k, c in zip("ABCD", row["choices"]))
               + "\nAnswer:")  # mmlu's description + doc_to_text, 0-shot
        lls = [ref.continuation(ctx, f" {k}") for k in "ABCD"]
        best = max(range(4), key=lls.__getitem__)
        if sorted(lls)[-1] - sorted(lls)[-2] < 0.02:
            continue  # too close to call across engines' numerics
        right = len(mmlu) % 2 == 0
        mmlu.append({**row, "answer": best if right else (best + 1) % 4})
        mmlu_right.append(right)
        if len(mmlu) == 10:
            break
    gsm, gsm_right = [], []
    stops = ["Question:", "</s>", "<|im_end|>"]
    for line in (staged / "gsm8k/main/test.jsonl").read_text().splitlines()[:150]:
        row = json.loads(line)
        text, margin = ref.greedy(f"Question: {row['question']}\nAnswer:", 16, stops)
        got = flexible_extract(text)
        # a random model's next-token margins are small; engines agree to ~1e-5 per logprob
        if margin < 2e-3 or got is None or not re.fullmatch(r"-?\d+", gsm8k_norm(got)):
            continue
        right = len(gsm) % 2 == 0
        value = int(gsm8k_norm(got)) + (0 if right else 1)
        gsm.append({"question": row["question"], "answer": f"(relabelled)\n#### {value}"})
        gsm_right.append(right)
        if len(gsm) == 6:
            break
    assert len(mmlu) == 10 and len(gsm) == 6, (len(mmlu), len(gsm))
    w = DataWriter(tmp_path_factory.mktemp("known") / "data")
    w.write_rows("cais/mmlu", "anatomy", "test", mmlu)
    w.write_rows("cais/mmlu", "anatomy", "dev", first_rows(anatomy.splits["dev"], "arrow", n=5))
    w.write_rows("openai/gsm8k", "main", "test", gsm)
    return w.finish(), mmlu_right, gsm_right


def test_known_answers_give_exact_scores(engine_server, known_answers, tmp_path):
    data, mmlu_right, gsm_right = known_answers
    summary, folder = score(engine_server, tmp_path, "known", tasks=["mmlu_anatomy", "gsm8k"],
                            data_dir=str(data), num_fewshot=0, gen_kwargs={"max_gen_toks": 16})
    m = summary["tasks"]["mmlu_anatomy"]["metrics"]
    g = summary["tasks"]["gsm8k"]["metrics"]
    assert m["acc"]["value"] == 0.5
    assert g["exact_match,flexible-extract"]["value"] == 0.5
    assert g["exact_match,strict-match"]["value"] == 0.0  # the model never writes "#### N"
    assert [bool(s["acc"]) for s in samples(folder, "mmlu_anatomy")] == mmlu_right
    flex = [s for s in samples(folder, "gsm8k") if s["filter"] == "flexible-extract"]
    assert [bool(s["exact_match"]) for s in flex] == gsm_right


# ---------------------------------------------------------------------------- sampling parameters

GEN = dict(tasks=["gsm8k"], limit=4, num_fewshot=0)


def outputs(folder: Path) -> list[str]:
    return [s["resps"][0][0] for s in samples(folder, "gsm8k") if s["filter"] == "strict-match"]


def test_sampling_parameters_are_applied_and_reported(engine_server, staged, tmp_path):
    greedy, gf = score(engine_server, tmp_path, "greedy", data_dir=str(staged), **GEN,
                       gen_kwargs={"max_gen_toks": 8})
    gen = greedy["tasks"]["gsm8k"]["generation"]
    assert gen["greedy"] is True and gen["sent"]["temperature"] == 0.0
    assert gen["fixed_by_task"] == ["do_sample", "temperature", "until"]
    hot = {"temperature": 1.5, "seed": 7, "max_gen_toks": 8}
    s1, f1 = score(engine_server, tmp_path, "hot1", data_dir=str(staged), **GEN, gen_kwargs=hot)
    _, f2 = score(engine_server, tmp_path, "hot2", data_dir=str(staged), **GEN, gen_kwargs=hot)
    _, fk = score(engine_server, tmp_path, "topk1", data_dir=str(staged), **GEN,
                  gen_kwargs={**hot, "top_k": 1})
    short, fs = score(engine_server, tmp_path, "short", data_dir=str(staged), **GEN,
                      gen_kwargs={"max_gen_toks": 2})
    sent = s1["tasks"]["gsm8k"]["generation"]
    assert sent["greedy"] is False and sent["sent"]["temperature"] == 1.5 and sent["sent"]["seed"] == 7
    assert all(r["params"]["temperature"] == 1.5 and r["params"]["seed"] == 7 for r in requests(f1))
    assert outputs(f1) != outputs(gf)  # temperature reached the sampler
    assert outputs(f1) == outputs(f2)  # so did the seed
    assert outputs(fk) == outputs(gf)  # and top_k: one candidate left is greedy again
    assert all(r["completion_tokens"] <= 2 for r in requests(fs))  # max_gen_toks -> max_tokens
    assert short["tasks"]["gsm8k"]["generation"]["sent"]["max_tokens"] == 2


# ---------------------------------------------------------------------------- perplexity


def test_perplexity_equals_a_forward_pass_over_the_same_windows(engine_server, tmp_path):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    text = ("The capital of France is Paris. The capital of Italy is Rome. Water boils at 100 "
            "degrees. There are 7 days in a week and 12 months in a year. ") * 4
    (tmp_path / "t.txt").write_text(text)
    summary, _ = score(engine_server, tmp_path, "ppl", perplexity=str(tmp_path / "t.txt"), max_length=48)
    ref = Reference(engine_server.model_path)
    ids = ref.tok(text, add_special_tokens=False).input_ids
    total, windows = 0.0, 0
    for ctx, pred in map(make_disjoint_window, get_rolling_token_windows(ids, ref.tok.bos_token_id, 47, 1)):
        lp = ref.logprobs(ctx + pred)
        total += sum(lp[len(ctx) + j - 1, t].item() for j, t in enumerate(pred))
        windows += 1
    assert windows > 2  # the text really was split into context windows
    t = summary["tasks"]["perplexity"]
    assert t["tokens"] == len(ids)
    assert t["metrics"]["token_perplexity"]["value"] == pytest.approx(math.exp(-total / len(ids)), rel=1e-3)
    words = len(re.split(r"\s+", text))  # lm-eval's word count
    assert t["metrics"]["word_perplexity"]["value"] == pytest.approx(math.exp(-total / words), rel=1e-3)
