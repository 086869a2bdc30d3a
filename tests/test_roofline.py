"""Roofline and energy figures of a GPU sweep point (pure arithmetic on recorded numbers; the
GPU runs themselves are in benchmarks/gpu/)."""

import pytest

from harness.roofline import bandwidth_gbs, point_roofline


def _point(tpot_p50=10.0, energy=(30.0, 10.0), tokens=100, name="NVIDIA H100 80GB HBM3"):
    return {"output_tokens": tokens, "tpot_ms": {"p50": tpot_p50},
            "gpu": {"gpus": [{"index": i, "name": name, "energy_j": e} for i, e in enumerate(energy)]}}


def test_fraction_of_roofline_and_joules_per_token(monkeypatch):
    monkeypatch.delenv("HYPERBENCH_GPU_BANDWIDTH_GBS", raising=False)
    r = point_roofline(_point(), weight_bytes=13_476_839_424)  # Llama-2-7B bf16
    assert r["bandwidth_gbs"] == 3350.0 and "H100" in r["bandwidth_source"]
    assert r["roofline_tok_s"] == pytest.approx(3350e9 / 13_476_839_424)  # ~248.6 tok/s
    assert r["decode_tok_s"] == pytest.approx(100.0)
    assert r["fraction_of_roofline"] == pytest.approx(100.0 / r["roofline_tok_s"])
    assert r["joules_per_output_token"] == pytest.approx(0.4)  # (30 + 10) J / 100 tokens


def test_measured_bandwidth_overrides_the_table(monkeypatch):
    monkeypatch.setenv("HYPERBENCH_GPU_BANDWIDTH_GBS", "3000")
    r = point_roofline(_point(), weight_bytes=3_000_000_000)
    assert r["roofline_tok_s"] == pytest.approx(1000.0)
    assert r["fraction_of_roofline"] == pytest.approx(0.1)


def test_most_specific_name_wins(monkeypatch):
    monkeypatch.delenv("HYPERBENCH_GPU_BANDWIDTH_GBS", raising=False)
    assert bandwidth_gbs("NVIDIA H100 PCIe")[0] == 2000.0
    assert bandwidth_gbs("NVIDIA H200")[0] == 4800.0
    assert bandwidth_gbs("NVIDIA A100-SXM4-80GB")[0] == 2039.0
    gbs, why = bandwidth_gbs("Some Future GPU")
    assert gbs is None and "HYPERBENCH_GPU_BANDWIDTH_GBS" in why


def test_no_gpu_no_figures():
    assert point_roofline({"output_tokens": 5, "tpot_ms": {"p50": 1.0}}, 10) is None
    # unknown bandwidth still gives energy per token, and says why there is no roofline
    r = point_roofline(_point(name="Mystery"), weight_bytes=10)
    assert "roofline_tok_s" not in r and r["joules_per_output_token"] == pytest.approx(0.4)
