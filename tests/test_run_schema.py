"""`hyperbench bench` on every engine writes the same run-folder schema (issue 3's CI test):
the same files, the same summary.json keys at every depth, the same keys in every per-request
record, the same config.json sections. Values differ; the shape does not, so `compare`,
`report` and anyone's script read every engine's run the same way.

Each engine benches the tiny model through the CLI on the same small workload (two sweep
points, plots on) and is compared with the hf engine's run; and so do speculative runs (hf with
a draft model, llama.cpp with n-grams: the same `speculative` fields, the same `baseline/` run
folder of the engine without speculation, itself of the plain schema). vLLM's speculative run is
checked in tests/test_vllm.py (two more vLLM start-ups here would double this file's time). The one engine-specific part is the
engine's own view (`engine.json`, `summary.engine_info`, `config.engine`): there every engine
must give the keys of the common contract (COMMON_ENGINE_INFO) and may add its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ENGINE_PARAMS, ENGINE_TEST_OPTIONS

# GET /v1/engine keys every engine gives (the wire contract: engine, version, model, dtype, quantization,
# device, weight bytes, KV-cache bytes, speculative settings and counters)
COMMON_ENGINE_INFO = {"engine", "version", "model", "model_path", "dtype", "quantization", "device",
                      "weight_bytes", "kv_cache_bytes", "speculative", "counters", "precision"}  # fmt: skip
RUN_FILES = {"config.json", "env.json", "engine.json", "engine.log", "records.jsonl", "summary.json",
             "report.md", "plots/latency.png", "plots/throughput.png",
             # the engine's /metrics scraped during each point, and plotted per point
             "server_metrics.jsonl", "plots/server_concurrency_1.png", "plots/server_concurrency_2.png"}  # fmt: skip
# the server view every engine gives; what else its /metrics has (waiting requests, KV-cache use,
# prefix-cache hits) is the engine's own, as engine_info is
COMMON_SERVER_VIEW = {"status", "samples", "file", "running.mean", "running.max", "ttft_check.engine_count",
                      "ttft_check.client_count", "ttft_check.engine_mean_ms"}


def engine_flags(kind: str) -> list[str]:
    out = []
    for k, v in ENGINE_TEST_OPTIONS.get(kind, {}).items():
        flag = "--" + k.replace("_", "-")
        out += [flag] if v is True else [f"--no-{flag[2:]}"] if v is False else [flag, str(v)]
    return out


# speculation per engine, flags as a user gives them
SPECULATIVE = {
    "hf": ["--speculative", "draft:tiny-llama", "--num-speculative-tokens", "3",
           "--assistant-confidence-threshold", "0"],
    "llamacpp": ["--speculative", "ngram", "--num-speculative-tokens", "3"],
}  # fmt: skip


def bench(kind: str, tiny_model: Path, root: Path, *extra: str, name: str | None = None) -> Path:
    from backends import engine_class

    ok, why = engine_class(kind).installed()
    if not ok:
        pytest.skip(f"engine {kind} is not installed here ({why})")
    res = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--engine", kind,
                          "--model", str(tiny_model), *engine_flags(kind), "--concurrency", "1,2",
                          "--input-len", "8", "--output-len", "4", "--num-requests", "2",
                          "--results-dir", str(root), "--run-name", name or kind, *extra],
                         capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return root / (name or kind)


def key_paths(obj, prefix: str = "") -> set[str]:
    """Every key path of a JSON value ('points[].ttft_ms.p50'), list items merged."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.add(prefix + k)
            out |= key_paths(v, f"{prefix}{k}.")
    elif isinstance(obj, list):
        for v in obj:
            out |= key_paths(v, prefix.rstrip(".") + "[].")
    return out


def schema(run: Path) -> dict:
    """The shape of a bench run folder, engine-specific parts checked and left out."""
    summary = json.loads((run / "summary.json").read_text())
    engine_json = json.loads((run / "engine.json").read_text())
    assert summary["status"] == "complete"
    info = summary["engine_info"]
    assert info == engine_json  # engine.json is the engine's view as the summary holds it
    missing = COMMON_ENGINE_INFO - set(info)
    assert not missing, f"{info['engine']} /v1/engine lacks {sorted(missing)}"
    assert "prompt_tokens" in info["counters"]
    config = json.loads((run / "config.json").read_text())
    assert {"kind", "model"} <= set(config["engine"]) and "api_key" not in config["engine"]
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 2
    for p in summary["points"]:
        missing = COMMON_SERVER_VIEW - key_paths(p["server"])
        assert not missing, f"{info['engine']} /metrics lacks {sorted(missing)}"
    files = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    if (run / "baseline").is_dir():  # the speculation-off run: the plain schema, checked alone
        files = {f for f in files if not f.startswith("baseline/")} | {"baseline/"}
    return {
        "files": files,
        "summary": {k for k in key_paths(summary) if not k.startswith(("engine_info.", "points[].server."))},
        "records": [sorted(r) for r in records],
        "config": {k for k in key_paths(config) if not k.startswith("engine.")},
        "report sections": [line for line in (run / "report.md").read_text().splitlines()
                            if line.startswith("#")][1:],  # fmt: skip  (the title names the engine)
    }


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory) -> dict:
    """The hf engine's run folder (the default tier's engine) as the shape to agree with."""
    return schema(bench("hf", tiny_model, tmp_path_factory.mktemp("schema")))


@pytest.fixture(scope="module")
def spec_reference(tiny_model, tmp_path_factory) -> dict:
    run = bench("hf", tiny_model, tmp_path_factory.mktemp("schema"), *SPECULATIVE["hf"], name="hf-spec")
    return {"run": schema(run), "baseline": schema(run / "baseline")}


def test_the_reference_run_folder_is_the_documented_layout(reference):
    assert reference["files"] == RUN_FILES
    # every record has the same keys, and they are the client's RequestRecord
    from harness.adapter import RequestRecord

    assert all(r == reference["records"][0] for r in reference["records"])
    assert set(reference["records"][0]) == set(RequestRecord(request_id=0).to_json())
    for key in ("schema_version", "kind", "status", "started", "finished", "engine", "model",
                "served_model", "engine_info", "points", "points[].concurrency", "points[].ttft_ms.p99",
                "points[].tpot_ms.p50", "points[].itl_ms.p50", "points[].e2e_ms.p50",
                "points[].output_throughput", "points[].request_throughput",
                "precision.weights", "precision.activations", "precision.kv_cache"):  # fmt: skip
        assert key in reference["summary"]
    assert {"engine", "target", "workload", "load", "slo", "output"} <= reference["config"]


@pytest.mark.parametrize("kind", [p for p in ENGINE_PARAMS if p.values[0] != "hf"])
def test_every_engine_writes_the_same_run_folder(kind, reference, tiny_model, tmp_path):
    got = schema(bench(kind, tiny_model, tmp_path))
    for part in ("files", "summary", "records", "config", "report sections"):
        assert got[part] == reference[part], (
            f"{kind} differs from hf in {part}: " + (
                f"only {kind}: {sorted(got[part] - reference[part])}, only hf: {sorted(reference[part] - got[part])}"
                if isinstance(got[part], set) else f"{got[part]} != {reference[part]}"))  # fmt: skip


def test_a_speculative_run_folder_is_the_plain_one_with_speculative_fields(reference, spec_reference):
    run, base = spec_reference["run"], spec_reference["baseline"]
    assert base == reference  # the speculation-off baseline is a plain bench run folder
    assert run["files"] == RUN_FILES | {"baseline/"}
    extra = run["summary"] - reference["summary"]
    assert {k for k in extra if not k.startswith(("points[].speculative", "speculative_baseline"))} == set()
    for key in ("acceptance_rate", "mean_accepted_length", "acceptance_by_position", "drafts",
                "speedup.output_throughput", "speedup.tpot_p50", "speedup.baseline.tpot_p50_ms"):  # fmt: skip
        assert f"points[].speculative.{key}" in extra
    assert "speculative_baseline.run_folder" in extra
    assert "## Speculative decoding" in run["report sections"]


@pytest.mark.parametrize("kind", [p for p in ENGINE_PARAMS if p.values[0] in SPECULATIVE and p.values[0] != "hf"])
def test_every_engine_writes_the_same_speculative_run_folder(kind, spec_reference, tiny_model, tmp_path):
    run = bench(kind, tiny_model, tmp_path, *SPECULATIVE[kind], name=f"{kind}-spec")
    got = {"run": schema(run), "baseline": schema(run / "baseline")}
    for which in ("run", "baseline"):
        for part, value in got[which].items():
            assert value == spec_reference[which][part], f"{kind} {which} differs from hf in {part}"
