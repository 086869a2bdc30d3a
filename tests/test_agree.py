"""`hyperbench agree`: the agreement numbers from recorded wire payloads (no server), then real
engines on the same weights through the CLI.

Stated tolerances (tiny model, fp32 everywhere, f32 KV cache in llama.cpp): prompt logprobs of
transformers, llama.cpp and vLLM agree to 1e-5 (measured: 4.5e-7 hf vs llama.cpp f32, ~2e-7
vLLM vs llama.cpp), greedy tokens are identical, and the next-token KL lower bound is below
1e-9. Quantized GGUFs of the same weights move all three, Q4 more than Q8.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest

from harness.agree.config import AgreeConfig, build_config, engine_dicts, parse_spec, prompt_texts
from harness.agree.agreement import (
    EngineOutput,
    Tokens,
    compare,
    first_divergence,
    kl_lower_bound,
    parse_generation,
    parse_scoring,
)
from harness.errors import HyperbenchError

F32_LOGPROB_TOL = 1e-5


def hb(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(res) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith(("Usage:", "Try "))]
    assert len(err) == 1, res.stderr
    return err[0]


@pytest.fixture(scope="module")
def tokens(tiny_model):
    transformers = pytest.importorskip("transformers")
    return Tokens.from_tokenizer(transformers.AutoTokenizer.from_pretrained(tiny_model))


# --- engine specs and config ---------------------------------------------------------------------


def test_parse_spec():
    assert parse_spec("vllm") == {"kind": "vllm"}
    assert parse_spec("llamacpp:q4_k_m") == {"kind": "llamacpp", "quant": "q4_k_m"}
    assert parse_spec("hf:dtype=bfloat16") == {"kind": "hf", "dtype": "bfloat16"}
    assert parse_spec("llamacpp:q8_0:kv-cache-type=f16") == {"kind": "llamacpp", "quant": "q8_0",
                                                             "kv_cache_type": "f16"}
    with pytest.raises(HyperbenchError, match="two quantizations"):
        parse_spec("llamacpp:q8_0:q4_0")


def test_parse_spec_keeps_colons_inside_an_option_value():
    """Once `option=` starts, later ':'-parts that are no `option=` belong to its value (a draft
    model's name or path used to be split off as a quant)."""
    assert parse_spec("hf:speculative=draft:tiny-llama") == {"kind": "hf", "speculative": "draft:tiny-llama"}
    assert parse_spec("hf:int8:speculative=draft:/m/a:b:dtype=float32") == {
        "kind": "hf", "quant": "int8", "speculative": "draft:/m/a:b", "dtype": "float32"}
    assert parse_spec("llamacpp:q8_0:speculative=ngram:num-speculative-tokens=3") == {
        "kind": "llamacpp", "quant": "q8_0", "speculative": "ngram", "num_speculative_tokens": "3"}


def test_eagle_for_llamacpp_is_llamacpps_own_one_line_error(tmp_path):
    res = hb("agree", "--engines", "hf,llamacpp:speculative=eagle:tiny-llama", "--model", "tiny-llama",
             "--results-dir", str(tmp_path / "r"))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line == ("error: llamacpp:speculative=eagle:tiny-llama: speculative='eagle:tiny-llama': the "
                    "llamacpp engine supports none, ngram or draft:<model> (EAGLE: --engine vllm)")
    assert not (tmp_path / "r").exists()  # refused before a run folder was made


def test_engines_run_at_full_precision_unless_told():
    cfg = AgreeConfig(engines=["hf", "llamacpp:q8_0", "vllm:dtype=bfloat16", "llamacpp:f16:kv_cache_type=f16"],
                      engine={"model": "tiny-llama", "n_ctx": 1024})
    got = dict(engine_dicts(cfg))
    assert got["hf"] == {"kind": "hf", "dtype": "float32", "model": "tiny-llama"}
    assert got["llamacpp:q8_0"] == {"kind": "llamacpp", "quant": "q8_0", "kv_cache_type": "f32",
                                    "model": "tiny-llama", "n_ctx": 1024}
    assert got["vllm:dtype=bfloat16"]["dtype"] == "bfloat16"  # the spec wins
    assert got["llamacpp:f16:kv_cache_type=f16"]["kv_cache_type"] == "f16"


def test_config_errors():
    with pytest.raises(HyperbenchError, match="at least two engines"):
        build_config({}, {"engines": ["hf"]})
    with pytest.raises(HyperbenchError, match="listed twice"):
        build_config({}, {"engines": ["hf", "hf"]})
    with pytest.raises(HyperbenchError, match="--reference vllm is not one of --engines"):
        build_config({}, {"engines": ["hf", "llamacpp"], "agree": {"reference": "vllm"}})
    with pytest.raises(HyperbenchError, match="starts each engine itself"):
        build_config({}, {"engines": ["hf", "llamacpp"], "target": {"launcher": "external", "url": "http://x/v1"}})
    with pytest.raises(HyperbenchError, match="hf has no option 'n_ctx'"):
        engine_dicts(AgreeConfig(engines=["hf:n_ctx=5", "llamacpp"]))
    with pytest.raises(HyperbenchError, match="--n-ctx is an option of none of the engines"):
        engine_dicts(AgreeConfig(engines=["hf", "vllm"], engine={"n_ctx": 5}))
    with pytest.raises(HyperbenchError, match="built-in set has 48"):
        prompt_texts(AgreeConfig(engines=["hf", "vllm"], agree={"prompts": 49}).agree)


# --- the numbers, from payloads ------------------------------------------------------------------


def test_first_divergence():
    a = [[1, "a"], [2, "b"], [3, "c"]]
    assert first_divergence(a, a, by_ids=True) is None
    assert first_divergence(a, [[1, "a"], [9, "b"], [3, "c"]], by_ids=True) == 1
    assert first_divergence(a, [[1, "a"], [9, "b"], [3, "c"]], by_ids=False) is None  # same text
    assert first_divergence(a, [[7, "x"]] + a[1:], by_ids=True) == 0
    assert first_divergence(a, a[:2], by_ids=True) == 2


def _dist(probs: dict[int, float], k: int, tokens: Tokens) -> list[list]:
    top = sorted(probs.items(), key=lambda kv: -kv[1])[:k]
    return [[i, tokens.decode(i), math.log(p)] for i, p in top]


def _full_kl(p: dict, q: dict) -> float:
    return sum(pv * math.log(pv / q[i]) for i, pv in p.items() if pv > 0)


def _random_dist(rng, ids, temp):
    w = {i: math.exp(rng.gauss(0, 1) / temp) for i in ids}
    z = sum(w.values())
    return {i: v / z for i, v in w.items()}


def test_kl_is_exact_when_top_k_holds_everything_and_a_lower_bound_otherwise(tokens):
    rng = random.Random(0)
    ids = [i for i in range(3, 400) if not tokens.ambiguous(tokens.decode(i))][:60]
    for _ in range(20):
        p = _random_dist(rng, ids, 0.3)
        q = {i: v * math.exp(rng.gauss(0, 0.2)) for i, v in p.items()}
        z = sum(q.values())
        q = {i: v / z for i, v in q.items()}
        full = _full_kl(p, q)
        exact, mass = kl_lower_bound(_dist(p, 60, tokens), _dist(q, 60, tokens), True, tokens)
        assert exact == pytest.approx(full, rel=1e-9, abs=1e-12) and mass == pytest.approx(1.0)
        bound, mass = kl_lower_bound(_dist(p, 8, tokens), _dist(q, 8, tokens), True, tokens)
        assert 0 <= bound <= full + 1e-12 and mass < 1
    same, _ = kl_lower_bound(_dist(p, 8, tokens), _dist(p, 8, tokens), True, tokens)
    assert same == 0


def test_by_text_ambiguous_tokens_go_to_the_rest_bucket(tokens):
    amb = tokens.by_text["\ufffd"][:2]  # two byte pieces that both read as U+FFFD
    assert len(amb) == 2
    plain = [i for i in range(3, 400) if not tokens.ambiguous(tokens.decode(i))][:2]
    ref = [[amb[0], "\ufffd", math.log(0.5)], [plain[0], tokens.decode(plain[0]), math.log(0.3)]]
    # an engine naming tokens by text lists one value for all U+FFFD pieces: unusable by text
    var = [[None, "\ufffd", math.log(0.1)], [plain[0], tokens.decode(plain[0]), math.log(0.3)]]
    kl, mass = kl_lower_bound(ref, var, False, tokens)
    # buckets: plain[0] (0.3 vs 0.3) and the rest (0.7 vs 0.7): nothing differs
    assert kl == pytest.approx(0.0, abs=1e-12) and mass == pytest.approx(0.3)
    assert tokens.token("token_id:%d" % amb[1]) == (amb[1], "\ufffd")
    assert tokens.token("\ufffd") == (None, "\ufffd")
    assert tokens.token(tokens.decode(plain[1])) == (plain[1], tokens.decode(plain[1]))


# A llama.cpp answer to {"prompt": [1, 751, 30], "max_tokens": 1, "echo": true, "logprobs": 2,
# "return_tokens_as_token_ids": true} (recorded), and the transformers server's without it (recorded
# before it honoured it), which names tokens by text as any server that ignores the field does.
LLAMACPP_ECHO = {"text": "Hello\u001b%", "logprobs": {
    "tokens": ["token_id:1", "token_id:751", "token_id:30", "token_id:40"],
    "token_logprobs": [None, -7.0734637, -6.8810541, -6.9377965],
    "top_logprobs": [None, {"token_id:189": -6.3974536, "token_id:90": -6.4491466, "token_id:751": -7.0734637},
                     {"token_id:148": -6.4935672, "token_id:165": -6.5017122, "token_id:30": -6.8810541},
                     {"token_id:735": -6.4453860, "token_id:426": -6.4478646, "token_id:40": -6.9377965}],
    "text_offset": [0, 0, 5, 6]}}  # fmt: skip
HF_ECHO = {"text": "<s> Hello\u001b%", "logprobs": {
    "tokens": ["<s>", "Hello", "\u001b", "%"],
    "token_logprobs": [None, -7.0734639, -6.8810539, -6.9377961],
    "top_logprobs": [None, {"\ufffd": -6.3974538, "W": -6.4491467, "Hello": -7.0734639},
                     {"\ufffd": -6.5017123, "\u001b": -6.8810539},
                     {"am": -6.4453859, "dog": -6.4478645, "%": -6.9377961}],
    "text_offset": [0, 3, 8, 9]}}  # fmt: skip


def test_parse_scoring_of_both_namings(tokens):
    ll = parse_scoring(LLAMACPP_ECHO, 3, tokens)
    hf = parse_scoring(HF_ECHO, 3, tokens)
    # positions 1, 2 (prompt tokens) and 3 (the token after the prompt)
    assert ll["logprobs"] == [-7.0734637, -6.8810541, None] and len(ll["top"]) == 3
    assert ll["top"][0][0] == [189, tokens.decode(189), -6.3974536]
    assert [e[0] for e in hf["top"][0]] == [None, tokens.token("W")[0], 751]  # U+FFFD: no id
    a = compare(EngineOutput("hf", False, greedy=[[]], scoring=[hf]),
                EngineOutput("llamacpp", True, greedy=[[]], scoring=[ll]), tokens)
    assert a["compared_by"] == "text"
    assert 0 < a["prompt_logprobs"]["max_abs_diff"] < 1e-6
    assert a["next_token"]["positions"] == 3 and a["next_token"]["kl_max"] < 1e-9
    with pytest.raises(ValueError, match="echoed 3 prompt tokens for a prompt of 4"):
        parse_scoring(LLAMACPP_ECHO, 4, tokens)


def test_parse_generation(tokens):
    choice = {"text": "ed", "logprobs": {"tokens": ["token_id:546"], "token_logprobs": [-6.4],
                                         "top_logprobs": [{"token_id:546": -6.4}]}}  # fmt: skip
    assert parse_generation(choice, tokens) == [[546, tokens.decode(546)]]


# --- real engines, through the CLI ---------------------------------------------------------------


def _summary(res, tmp_path, name):
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["kind"] == "agree"
    return run, summary


@pytest.mark.llamacpp
def test_hf_and_llamacpp_agree_and_quantization_costs_show(tmp_path, tiny_model):
    pytest.importorskip("llama_cpp")
    res = hb("agree", "--engines", "hf,llamacpp:f32,llamacpp:q8_0,llamacpp:q4_0", "--model", str(tiny_model),
             "--prompts", "6", "--max-tokens", "12", "--results-dir", str(tmp_path), "--run-name", "a")
    run, s = _summary(res, tmp_path, "a")
    assert "llamacpp:q4_0" in res.stdout and f"run folder: {run}" in res.stdout
    f32, q8, q4 = (s["agreement"][k] for k in ("llamacpp:f32", "llamacpp:q8_0", "llamacpp:q4_0"))
    assert f32["compared_by"] == "ids"  # both servers name tokens by id when asked
    # the same fp32 weights: the same greedy tokens, prompt logprobs within tolerance, KL ~ 0
    assert f32["greedy"]["identical"] == 6 and f32["greedy"]["first_divergence"] == [None] * 6
    assert f32["prompt_logprobs"]["max_abs_diff"] < F32_LOGPROB_TOL
    assert f32["next_token"]["kl_max"] < 1e-9 and f32["next_token"]["top1_agreement"] == 1.0
    # quantized: measurably different, Q4 more than Q8
    assert f32["next_token"]["kl_mean"] < q8["next_token"]["kl_mean"] < q4["next_token"]["kl_mean"]
    assert q8["next_token"]["kl_mean"] > 0 and q8["next_token"]["top1_agreement"] < 1.0 or q8["greedy"]["identical"] < 6
    assert f32["prompt_logprobs"]["max_abs_diff"] < q8["prompt_logprobs"]["max_abs_diff"] \
        < q4["prompt_logprobs"]["max_abs_diff"]
    assert q4["greedy"]["mean_matched_tokens"] < 12
    # what each engine served, from its own /v1/engine
    info = {e["label"]: e["engine_info"] for e in s["engines"]}
    assert info["hf"]["dtype"] == "float32" and info["llamacpp:q4_0"]["quantization"] == "q4_0"
    assert info["llamacpp:f32"]["kv_cache_type"] == "f32"  # full precision unless told
    # the run folder keeps every answer: the numbers recompute from outputs/
    tokens = Tokens.from_tokenizer(__import__("transformers").AutoTokenizer.from_pretrained(tiny_model))

    def load(name):
        o = json.loads((run / "outputs" / f"{name}.json").read_text())
        return EngineOutput(o["label"], o["token_ids"], o["greedy"], o["texts"], o["scoring"])

    assert compare(load("hf"), load("llamacpp-q4_0"), tokens) == q4
    for f in ("config.json", "env.json", "report.md", "logs/hf.log", "logs/llamacpp-q8_0.log"):
        assert (run / f).is_file(), f
    assert "lower bound" in (run / "report.md").read_text()


@pytest.mark.vllm
def test_vllm_agrees_with_llamacpp_and_hf_on_fp32_weights(tmp_path, tiny_model):
    """vLLM, llama.cpp and transformers all name tokens by id: compared by ids, not text."""
    from backends.vllm.spec import vllm_python

    if vllm_python() is None:
        pytest.skip("vLLM is not installed here")
    pytest.importorskip("llama_cpp")
    res = hb("agree", "--engines", "llamacpp:f32,vllm,hf", "--model", str(tiny_model), "--prompts", "4",
             "--max-tokens", "12", "--enforce-eager", "--results-dir", str(tmp_path), "--run-name", "v")
    _, s = _summary(res, tmp_path, "v")
    for label, by in (("vllm", "ids"), ("hf", "ids")):
        a = s["agreement"][label]
        assert a["compared_by"] == by
        assert a["greedy"]["identical"] == 4, a
        assert a["prompt_logprobs"]["max_abs_diff"] < F32_LOGPROB_TOL
        assert a["next_token"]["kl_max"] < 1e-9
    assert {e["label"]: e["token_ids"] for e in s["engines"]} == {"llamacpp:f32": True, "vllm": True, "hf": True}


@pytest.mark.slow
@pytest.mark.llamacpp
def test_smollm2_quantization_costs(tmp_path):
    """The real model: its bf16 weights served by transformers (fp32 compute) and as f32, q8_0 and
    q4_k_m GGUFs; the same greedy tokens at f32, and KL growing as bits shrink."""
    pytest.importorskip("llama_cpp")
    res = hb("agree", "--engines", "hf,llamacpp:f32,llamacpp:q8_0,llamacpp:q4_k_m", "--model", "smollm2-135m",
             "--prompts", "6", "--max-tokens", "16", "--n-ctx", "512", "--results-dir", str(tmp_path),
             "--run-name", "s")
    _, s = _summary(res, tmp_path, "s")
    f32, q8, q4 = (s["agreement"][k] for k in ("llamacpp:f32", "llamacpp:q8_0", "llamacpp:q4_k_m"))
    assert f32["greedy"]["identical"] == 6
    assert f32["prompt_logprobs"]["max_abs_diff"] < 1e-3  # 30 layers of fp32 in two libraries
    assert f32["next_token"]["kl_mean"] < q8["next_token"]["kl_mean"] < q4["next_token"]["kl_mean"]
    assert q4["next_token"]["ref_mass_shared"] > 0.5  # top-20 of a real model: the bound is tight-ish


@pytest.mark.llamacpp
def test_a_failing_engine_is_recorded_and_the_others_kept(tmp_path, tiny_model):
    """n_ctx=256 over the default 4 slots leaves a sequence 64 tokens: 300 do not fit, so that
    variant refuses the first prompt; the run goes on, keeps the reference's answers, and ends
    with one error line."""
    pytest.importorskip("llama_cpp")
    res = hb("agree", "--engines", "llamacpp:f32,llamacpp:q8_0:n_ctx=256", "--model", str(tiny_model),
             "--prompts", "1", "--max-tokens", "300", "--results-dir", str(tmp_path), "--run-name", "f")
    err = one_line_error(res)
    assert err.startswith("error: agree incomplete: 1 of 2 engines failed (llamacpp:q8_0:n_ctx=256)")
    assert "maximum context length" in err and f"run folder: {tmp_path / 'f'}" in err
    s = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert s["status"] == "incomplete" and s["agreement"] == {}
    assert [(e["label"], e["status"]) for e in s["engines"]] == [("llamacpp:f32", "ok"),
                                                                  ("llamacpp:q8_0:n_ctx=256", "failed")]
    kept = json.loads((tmp_path / "f" / "outputs" / "llamacpp-f32.json").read_text())
    assert len(kept["greedy"][0]) == 300
    assert "llamacpp:q8_0:n_ctx=256: failed: refused prompt 0" in (tmp_path / "f" / "report.md").read_text()
