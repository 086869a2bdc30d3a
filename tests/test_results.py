"""Run folders: their files get the mode open() would give (0o666 & ~umask), not mkstemp's 0o600,
so the other users of a shared project folder can read a run."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from harness.results import atomic_write_json, atomic_write_text


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o002, 0o077], ids=["umask002", "umask077"])
def test_a_bench_run_folder_is_as_readable_as_the_umask_says(tmp_path, umask):
    """`bench` on the synthetic engine (a real server subprocess, a second or two) under a
    group-shared and a private umask."""
    res = subprocess.run(
        [sys.executable, "-m", "harness.cli", "bench", "--engine", "synthetic", "--model", "tiny-llama",
         "--ttft-ms", "1", "--itl-ms", "1", "--num-requests", "2", "--input-len", "8", "--output-len", "4",
         "--results-dir", str(tmp_path), "--run-name", "r", "--no-plots"],
        capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(umask))
    assert res.returncode == 0, res.stderr[-2000:]
    files = sorted(p for p in (tmp_path / "r").rglob("*") if p.is_file())
    names = {p.name for p in files}
    # atomic writes (summary, config, env, engine, report) and appended ones (records, engine log)
    assert {"summary.json", "config.json", "env.json", "report.md", "records.jsonl", "engine.log"} <= names
    assert {p.name: oct(mode(p)) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}


def test_a_rewrite_keeps_the_files_own_mode(tmp_path):
    p = tmp_path / "summary.json"
    atomic_write_json(p, {"status": "running"})
    os.chmod(p, 0o640)  # someone narrowed it: a rewrite, like open(p, "w"), leaves it so
    atomic_write_text(p, "{}\n")
    assert mode(p) == 0o640 and p.read_text() == "{}\n"
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".")]  # no temporary file left


def test_the_tunes_ax_state_is_as_readable_as_the_umask_says(tmp_path):
    """Ax writes ax_state.json into a temporary file that is renamed over the old one."""
    from harness.tune.objectives import Objective
    from harness.tune.space import Param, SearchSpace
    from harness.tune.study import STATE, Study

    space = SearchSpace([Param("temperature", "sampling", "float", 0.0, 1.5, baseline=0.8)])
    old = os.umask(0o002)
    try:
        study = Study.create(tmp_path, space, [Objective("accuracy", True)], [], "random", 0, None, [])
        study.save()
    finally:
        os.umask(old)
    assert mode(tmp_path / STATE) == 0o664
