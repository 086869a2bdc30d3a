"""One source of engine settings across the process boundary: each in-house server's parser is
built from its pydantic spec (backends/spec_cli.py), and `server_command` is the generic one of
backends/base.py. A spec turned into argv and parsed back by the server is the same spec."""

from __future__ import annotations

import subprocess
import sys

import pytest

from backends.hf.__main__ import build_parser as hf_parser
from backends.hf.spec import HFConfig
from backends.llamacpp.__main__ import parse_args as llamacpp_args
from backends.llamacpp.spec import LlamaCppConfig
from backends.spec_cli import spec_from_args
from harness.errors import HyperbenchError

HF_SPECS = [HFConfig(), HFConfig(quant="int8", attn="eager", dtype="float16", max_batch_size=3, enforce_eager=True,
                                 prune=0.25, prune_scope="layer"),
            HFConfig(speculative="draft:tiny-llama", num_speculative_tokens=2, assistant_confidence_threshold=0)]
LLAMACPP_SPECS = [LlamaCppConfig(), LlamaCppConfig(quant="q8_0", n_gpu_layers=0, n_ctx=256, n_batch=64, n_threads=2,
                                                   flash_attn=True, kv_cache_type="q8_0", parallel=4),
                  LlamaCppConfig(speculative="ngram", num_speculative_tokens=3, ngram_min=2, ngram_max=4),
                  LlamaCppConfig(speculative="draft:tiny-llama", num_speculative_tokens=5)]


@pytest.mark.parametrize("spec", HF_SPECS, ids=range(len(HF_SPECS)))
def test_hf_spec_round_trips_through_its_server_flags(spec):
    argv = spec.server_command("127.0.0.1", 9, "/m")[3:]  # after `python -m backends.hf`
    # what the server runs: the spec's settings, a draft model resolved to its staged path
    assert spec_from_args(HFConfig, hf_parser().parse_args(argv)) == HFConfig(**spec.server_values())


@pytest.mark.parametrize("spec", LLAMACPP_SPECS, ids=range(len(LLAMACPP_SPECS)))
def test_llamacpp_spec_round_trips_through_its_server_flags(spec):
    argv = spec.server_command("127.0.0.1", 9, "/m")[3:]
    # ... and with n-grams, the range resolved as it will run
    assert spec_from_args(LlamaCppConfig, llamacpp_args(argv)) == LlamaCppConfig(**spec.server_values())


@pytest.mark.parametrize("cls,parse", [(HFConfig, lambda a: hf_parser().parse_args(a)), (LlamaCppConfig, llamacpp_args)])
def test_server_defaults_are_the_specs(cls, parse):
    args = parse(["--model", "/m"])
    assert spec_from_args(cls, args) == cls()


def test_a_value_out_of_range_is_one_line_naming_the_flag():
    args = hf_parser().parse_args(["--model", "/m", "--num-speculative-tokens", "65"])
    with pytest.raises(HyperbenchError, match="^--num-speculative-tokens: Input should be less than or equal to 64$"):
        spec_from_args(HFConfig, args)
    res = subprocess.run([sys.executable, "-m", "backends.hf", "--model", "/m", "--max-batch-size", "0"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.splitlines() == ["error: --max-batch-size: Input should be greater than or equal to 1"]
