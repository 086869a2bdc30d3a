"""Bad input: one line on stderr, exit code 2, no traceback, and nothing already written lost."""

from __future__ import annotations

import json
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
