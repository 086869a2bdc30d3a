"""Environment capture (harness/envinfo.py) and `hyperbench engines`, as a user runs them.

`hyperbench env` prints what every run folder records as env.json; secrets in the environment
(tokens, API keys, credentials inside URLs) never reach either, nor any other file of a run.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SECRETS = {
    "HF_TOKEN": "hf_secret123",
    "HUGGING_FACE_HUB_TOKEN": "hf_othersecret456",
    "OPENAI_API_KEY": "sk-openai-secret789",
    "HYPERBENCH_API_KEY": "hb-envkey-secret",
    "WANDB_API_KEY": "wandb-secret-000",
}
URL_SECRETS = {  # names that are not secret, values that hold one
    "HF_ENDPOINT": ("https://mirroruser:mirrorpw-secret@hf-mirror.example.org/api?token=qtok-secret&x=1",
                    ["mirrorpw-secret", "qtok-secret"], ["hf-mirror.example.org/api", "x=1"]),
    "HF_HUB_PROXY_URL": ("https://ghp_urltoken-secret@proxy.example.org", ["ghp_urltoken-secret"],
                         ["proxy.example.org"]),
}
PLAIN = {"HF_HOME_TEST_MARKER": "/data/hf-home", "HYPERBENCH_TEST_MARKER": "kept-as-is"}


def secret_env() -> dict[str, str]:
    env = {**os.environ, **SECRETS, **PLAIN, "HF_HUB_OFFLINE": "1"}
    env.update({k: v for k, (v, _, _) in URL_SECRETS.items()})
    return env


def all_secret_strings() -> list[str]:
    return [*SECRETS.values(), *(s for _, hidden, _ in URL_SECRETS.values() for s in hidden)]


def hb(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def check_env_section(env: dict) -> None:
    for k in SECRETS:
        assert env[k] == "<redacted>", k
    for k, (_, hidden, kept) in URL_SECRETS.items():
        assert all(h not in env[k] for h in hidden) and "<redacted>" in env[k], env[k]
        assert all(x in env[k] for x in kept), env[k]  # the rest of the URL is still there
    for k, v in PLAIN.items():
        assert env[k] == v
    assert env["HF_HUB_OFFLINE"] == "1"
    assert "PATH" not in env and "HOME" not in env  # only the variables that matter to a run


def test_env_command_prints_the_capture_without_secrets():
    res = hb("env", env=secret_env())
    assert res.returncode == 0, res.stderr
    for s in all_secret_strings():
        assert s not in res.stdout and s not in res.stderr, s
    cap = json.loads(res.stdout)
    check_env_section(cap["env"])
    # the capture describes this machine and install
    assert cap["python"] == platform.python_version()
    assert cap["hyperbench"] == importlib.metadata.version("hyperbench")
    assert cap["packages"]["torch"] == importlib.metadata.version("torch")
    assert cap["packages"]["transformers"] == importlib.metadata.version("transformers")
    assert cap["cpu"]["logical_cores"] == os.cpu_count()
    assert cap["memory_bytes"] > 2**30 and cap["hostname"] == platform.node()
    assert isinstance(cap["gpus"], list)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert cap["git_commit"].removesuffix("-dirty") == head.stdout.strip()


def test_run_folder_keeps_no_secret(tmp_path):
    """A bench run with secrets in the environment and an --api-key: env.json has them redacted,
    and no file of the run folder (config, engine log, records, report...) holds any of them."""
    api_key = "cli-apikey-secret-42"
    res = hb("bench", "--engine", "synthetic", "--model", "tiny-llama", "--api-key", api_key,
             "--ttft-ms", "1", "--itl-ms", "1", "--concurrency", "2", "--input-len", "8", "--output-len", "4",
             "--num-requests", "4", "--no-plots", "--results-dir", str(tmp_path), "--run-name", "r",
             env=secret_env())  # fmt: skip
    assert res.returncode == 0, res.stderr
    run = tmp_path / "r"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["points"][0]["completed"] == 4  # the key worked
    check_env_section(json.loads((run / "env.json").read_text())["env"])
    files = [f for f in run.rglob("*") if f.is_file()]
    assert {"env.json", "config.json", "engine.log", "records.jsonl", "report.md"} <= {f.name for f in files}
    for f in files:
        data = f.read_bytes()
        for s in [*all_secret_strings(), api_key]:
            assert s.encode() not in data, (f.name, s)
    for s in [*all_secret_strings(), api_key]:
        assert s not in res.stdout and s not in res.stderr


def test_engines_lists_every_engine_with_its_capabilities():
    from backends import available_engines

    res = hb("engines")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    engines = available_engines()
    assert set(engines) >= {"hf", "llamacpp", "vllm", "synthetic"}
    # each engine's row (its first cell) and the wrapped lines under it, up to the next row
    starts = {}
    for i, ln in enumerate(lines):
        cells = [c.strip() for c in ln.strip("│┃ ").split("│")]
        if cells and cells[0] in engines:
            starts[cells[0]] = i
    assert set(starts) == set(engines), res.stdout
    order = sorted(starts.values()) + [len(lines)]
    for kind, cls in engines.items():
        block = lines[starts[kind] : order[order.index(starts[kind]) + 1]]
        columns = [" ".join(c for c in col if c) for col in zip(*[
            [c.strip() for c in ln.strip().strip("│└").split("│")] for ln in block if "│" in ln])]  # fmt: skip
        name, runs_here, quants, sampling, speculative = columns
        cap = cls().capabilities()
        ok, why = cls.installed()
        assert name == kind
        assert runs_here == "yes" if ok else runs_here.startswith("no:"), (kind, runs_here)
        assert quants.split(", ") == cap.quantizations, (kind, quants)
        assert sampling.split(", ") == cap.sampling_params, (kind, sampling)
        assert speculative == (", ".join(cap.speculative) or "-"), (kind, speculative)


def test_listed_quantizations_are_accepted_by_each_engine():
    """What `engines` lists is what each engine's config takes (--quant)."""
    from backends import available_engines

    for kind, cls in available_engines().items():
        quants = cls().capabilities().quantizations
        if "quant" in cls.model_fields:
            assert [cls(quant=q).quant for q in quants] == quants, kind
        else:
            assert quants == ["none"], kind
