"""Bad input: one line on stderr, exit code 2, no traceback, and nothing already written lost."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import pytest


def hb(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def assert_one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith(("Usage:", "Try "))]
    assert len(err) == 1, res.stderr
    for n in needles:
        assert n in err[0], err[0]


def test_unknown_engine(tmp_path):
    res = hb("bench", "--engine", "nope", "--results-dir", str(tmp_path))
    assert_one_line_error(res, "unknown engine 'nope'")
    assert not any(tmp_path.iterdir())  # rejected before a run folder was made


# every command that takes an engine kind: the unknown kind is what the one line says, even with
# engine flags given (they used to be checked first: "--model is not an option of engine nope")
ENGINE_KIND_COMMANDS = {
    "bench": ["bench", "--engine", "nope"],
    "serve": ["serve", "nope"],
    "score": ["score", "--engine", "nope"],
    "tune": ["tune", "--engine", "nope"],
    "slurm": ["slurm", "--engine", "nope"],
    "compare": ["compare", "--engines", "hf,nope"],
    "agree": ["agree", "--engines", "hf,nope"],
}


@pytest.mark.parametrize("command", sorted(ENGINE_KIND_COMMANDS))
def test_unknown_engine_wins_over_its_flags(tmp_path, command):
    out = tmp_path / "results"
    args = [*ENGINE_KIND_COMMANDS[command], "--model", "tiny-llama"]
    if command != "serve":
        args += ["--results-dir", str(out)]
    res = hb(*args)
    assert_one_line_error(res, "unknown engine 'nope'")
    assert not out.exists()


def test_unknown_engine_in_a_config_file(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("engine:\n  kind: nope\n  model: tiny-llama\n")
    res = hb("bench", "--config", str(cfg), "--results-dir", str(tmp_path / "r"))
    assert_one_line_error(res, "unknown engine 'nope'")


def test_negative_concurrency(tmp_path):
    res = hb("bench", "--concurrency", "1,-4", "--results-dir", str(tmp_path))
    assert_one_line_error(res, "concurrency")


def test_bad_list_value(tmp_path):
    res = hb("bench", "--concurrency", "1,x", "--results-dir", str(tmp_path))
    assert_one_line_error(res, "comma-separated list")


def test_invalid_yaml(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("workload:\n  input_len: [1, 2\n")
    res = hb("bench", "--config", str(cfg), "--results-dir", str(tmp_path))
    assert_one_line_error(res, "invalid YAML", "exp.yaml")


def test_unknown_yaml_field(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("workload:\n  input_length: 5\n")
    res = hb("bench", "--config", str(cfg), "--results-dir", str(tmp_path))
    assert_one_line_error(res, "workload.input_length", "unknown option")


def test_option_of_another_engine(tmp_path):
    from backends import available_engines

    if "llamacpp" not in available_engines():
        pytest.skip("no llamacpp spec in this checkout")
    res = hb("bench", "--engine", "hf", "--n-gpu-layers", "10", "--results-dir", str(tmp_path))
    assert_one_line_error(res, "--n-gpu-layers is not an option of engine hf")


def test_missing_model_path(tmp_path):
    res = hb("bench", "--engine", "hf", "--model", str(tmp_path / "nowhere"), "--results-dir", str(tmp_path / "r"))
    assert_one_line_error(res, "does not exist")


def test_unreachable_url(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = hb("bench", "--url", f"http://127.0.0.1:{port}/v1", "--model", "x", "--startup-timeout-s", "2",
             "--results-dir", str(tmp_path))
    assert_one_line_error(res, "not healthy")


def test_port_in_use(tmp_path, tiny_model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = hb("bench", "--engine", "hf", "--model", str(tiny_model), "--port", str(port),
                 "--results-dir", str(tmp_path))
        assert_one_line_error(res, f"port {port} is in use")
        res = hb("serve", "hf", "--model", str(tiny_model), "--port", str(port))
        assert_one_line_error(res, f"port {port} is in use")


def test_engine_dies_at_startup(tmp_path, tiny_model):
    # a model folder whose weights are garbage: the engine starts, fails to load, exits
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_model.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    for w in broken.glob("*.safetensors"):
        w.write_bytes(b"not a safetensors file")
    res = hb("bench", "--engine", "hf", "--model", str(broken), "--results-dir", str(tmp_path / "r"),
             "--run-name", "dead")
    assert_one_line_error(res, "engine exited")
    run = tmp_path / "r" / "dead"
    # what was written before the failure is all there and valid
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "engine exited" in summary["reason"]
    assert json.loads((run / "config.json").read_text())["engine"]["kind"] == "hf"
    assert json.loads((run / "env.json").read_text())["python"]
    assert (run / "engine.log").stat().st_size > 0


def test_every_command_declares_each_option_once():
    """Options are derived from several config sections and every engine's spec: two fields of
    the same name would make click warn on every call (and break the one-line error contract)."""
    import warnings

    import click

    from harness.cli import cli

    ctx = click.Context(cli)
    for name, cmd in cli.commands.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            flags = [f for p in cmd.params for f in p.opts]
            assert len(flags) == len(set(flags)), (name, sorted({f for f in flags if flags.count(f) > 1}))
            cmd.get_help(click.Context(cmd, parent=ctx, info_name=name))


# --tokenizer is one config field (Target.tokenizer) with a different use in each command
TOKENIZER_USE = {
    "bench": ("synthetic prompts", "--url"),
    "compare": ("synthetic prompts", ".gguf"),
    "slurm": ("synthetic prompts", ".gguf"),
    "score": ("perplexity", "--chat-template", "only needed with --url"),
    "tune": ("cut prompts longer than the engine's context", "only needed with --url"),
    "agree": ("token ids every engine is sent", ".gguf"),
    "study": ("synthetic prompts", ".gguf"),
}


@pytest.mark.parametrize("command", sorted(TOKENIZER_USE))
def test_tokenizer_help_says_what_this_command_uses_it_for(command):
    res = hb(command, "--help")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("--tokenizer "))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("-")
               and len(lines[i]) - len(lines[i].lstrip()) < 4)  # the next option's own line
    help_ = " ".join(" ".join(lines[start:end]).split()).removeprefix("--tokenizer TEXT ")  # unwrapped
    for words in TOKENIZER_USE[command]:
        assert words in help_, (command, help_)
    if command in ("score", "tune", "agree"):  # they build no synthetic prompts
        assert "synthetic" not in help_, (command, help_)
    if command in ("compare", "slurm"):  # they have no --url
        assert "--url" not in help_ and not re.search(r"^\s+--url\b", res.stdout, re.M), (command, help_)


def test_commands_with_a_tokenizer_option_are_the_ones_described():
    from harness.cli import cli

    have = {name for name, cmd in cli.commands.items() if any("--tokenizer" in p.opts for p in cmd.params)}
    assert have == set(TOKENIZER_USE)


# --- issue 3: what an engine does not support is a one-line error, never silently ignored -------


def test_quant_type_the_engine_lacks(tmp_path):
    # a type another engine has: the chosen engine's own config refuses it
    res = hb("bench", "--engine", "hf", "--quant", "q4_k_m", "--results-dir", str(tmp_path))
    assert_one_line_error(res, "quant", "'none', 'int8' or 'nf4'")
    res = hb("bench", "--engine", "llamacpp", "--quant", "awq", "--results-dir", str(tmp_path))
    assert_one_line_error(res, "quant", "'q4_k_m'")
    # a type no engine has: refused by the flag itself
    res = hb("bench", "--engine", "llamacpp", "--quant", "q3_k_s", "--results-dir", str(tmp_path))
    assert_one_line_error(res, "'q3_k_s' is not one of")
    res = hb("agree", "--engines", "hf,hf:q8_0", "--model", "tiny-llama", "--results-dir", str(tmp_path))
    assert_one_line_error(res, "hf:q8_0", "quant")
    assert not any(tmp_path.iterdir())  # all refused before a run folder was made


def test_speculative_setting_on_an_engine_without_it(tmp_path):
    # every engine speculates, each its own way: a mode or a setting one engine lacks is refused
    # before anything starts, with a pointer to the engine that has it
    res = hb("bench", "--engine", "llamacpp", "--speculative", "eagle:tiny-llama", "--results-dir", str(tmp_path))
    assert_one_line_error(res, "the llamacpp engine supports none, ngram or draft:<model>", "--engine vllm")
    # the HF engine's draft-model setting is not an option of llama.cpp's
    res = hb("bench", "--engine", "llamacpp", "--assistant-confidence-threshold", "0.4",
             "--results-dir", str(tmp_path))
    assert_one_line_error(res, "--assistant-confidence-threshold is not an option of engine llamacpp")
    res = hb("agree", "--engines", "hf,llamacpp:assistant_confidence_threshold=0.4", "--model", "tiny-llama",
             "--results-dir", str(tmp_path))
    assert_one_line_error(res, "llamacpp has no option 'assistant_confidence_threshold'")
    # a speculative setting without speculation is refused, not silently ignored
    res = hb("bench", "--engine", "llamacpp", "--num-speculative-tokens", "3", "--results-dir", str(tmp_path))
    assert_one_line_error(res, "needs speculative decoding (--speculative ngram or draft:<model>)")
    assert not any(tmp_path.iterdir())


def test_sampling_parameter_the_engine_does_not_honour(tmp_path):
    # vLLM 0.32 rejects min_p while speculating, and its spec says so: refused before any start
    res = hb("tune", "--engine", "vllm", "--speculative", "ngram", "--params", "min_p", "--model", "tiny-llama",
             "--results-dir", str(tmp_path))
    assert_one_line_error(res, "min_p is not a sampling parameter engine vllm honours")
    # a parameter no engine has
    res = hb("score", "--engine", "hf", "--model", "tiny-llama", "--tasks", "gsm8k", "--gen-kwargs",
             "nucleus=0.9", "--results-dir", str(tmp_path))
    assert_one_line_error(res, "unknown generation parameter 'nucleus'")
    assert not any(tmp_path.iterdir())


@pytest.mark.llamacpp
def test_a_gguf_that_is_not_a_gguf(tmp_path):
    pytest.importorskip("llama_cpp")
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 a zip, not a GGUF")
    res = hb("bench", "--engine", "llamacpp", "--model", str(bad), "--results-dir", str(tmp_path / "r"),
             "--run-name", "bad")
    assert_one_line_error(res, f"{bad} is not a GGUF file (bad magic)")
    summary = json.loads((tmp_path / "r" / "bad" / "summary.json").read_text())
    assert summary["status"] == "failed" and "not a GGUF" in summary["reason"]
    res = hb("quantize", "--model", str(bad), "--to", "q8_0")
    assert_one_line_error(res, f"{bad} is not a GGUF file (bad magic)")
