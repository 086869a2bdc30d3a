"""`hyperbench quantize`: GGUF variants of the tiny model through the CLI, in the cache the llama.cpp
engine serves from, and its one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.llamacpp
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: scripts/build_llamacpp_wheel.sh")

from backends.llamacpp.gguf import ensure_gguf  # noqa: E402


def hb(*args):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=600)


def one_line_error(res) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, res.stderr
    return err[0]


def table(stdout: str) -> dict[str, list[str]]:
    lines = stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["type", "file"]
    return {ln.split()[0]: ln.split() for ln in lines[1:]}


def test_quantize_prints_paths_sizes_and_bits(tiny_model):
    res = hb("quantize", "--model", str(tiny_model), "--to", "f32,q8_0,q4_0")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = table(res.stdout)
    assert list(rows) == ["f32", "q8_0", "q4_0"]
    for quant, row in rows.items():
        _, file_type, size_mb, bpw, params, path = row
        assert file_type == quant
        # the very file the llama.cpp engine would serve for --quant <type>
        assert path == str(ensure_gguf(tiny_model, quant))
        assert params == "202,048"  # the tiny model's parameter count
    bits = {q: float(r[3]) for q, r in rows.items()}
    assert bits["f32"] == 32.0
    assert 8.0 < bits["q8_0"] < 9.0  # 8-bit values + one fp16 scale per 32
    assert 4.0 < bits["q4_0"] < bits["q8_0"]


def test_unknown_quant_type_is_one_line_and_builds_nothing(tiny_model):
    res = hb("quantize", "--model", str(tiny_model), "--to", "q8_0,q3_k_s")
    err = one_line_error(res)
    assert "quantizing" not in res.stderr  # every type is checked before the first is made
    assert err.startswith("error: unsupported quant type 'q3_k_s': choose from f32, f16")
    assert "needs at least one GGUF type" in one_line_error(hb("quantize", "--model", str(tiny_model), "--to", ","))


def test_not_a_gguf_is_one_line(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 a zip, not a GGUF")
    assert one_line_error(hb("quantize", "--model", str(bad), "--to", "q8_0")) == \
        f"error: {bad} is not a GGUF file (bad magic)"


def test_requantizing_a_quantized_gguf_is_refused(tiny_model):
    q4 = ensure_gguf(tiny_model, "q4_0")
    assert "already quantized (q4_0)" in one_line_error(hb("quantize", "--model", str(q4), "--to", "q8_0"))


def test_missing_model_is_one_line(tmp_path):
    assert "does not exist" in one_line_error(hb("quantize", "--model", str(tmp_path / "nope"), "--to", "q8_0"))
