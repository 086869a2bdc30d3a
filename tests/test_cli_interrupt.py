"""Ctrl-C: one line on stderr that says what happened (and, for a run, what was kept where), exit
130, no traceback, never click's "Aborted!" nor a blank line; the run folder is kept and marked.

SIGTERM takes the same path (tests/test_bench_e2e.py, tests/test_score_cli.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import psutil
import pytest


def test_ctrl_c_during_bench_says_what_was_kept_and_where(tmp_path):
    """The synthetic engine (a real server subprocess) answers slowly enough that the sweep is
    still running when SIGINT arrives, as a terminal's Ctrl-C sends it."""
    run = tmp_path / "cut"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "bench", "--engine", "synthetic", "--model", "tiny-llama",
         "--ttft-ms", "5", "--itl-ms", "20", "--concurrency", "1", "--input-len", "8", "--output-len", "10",
         "--num-requests", "500", "--results-dir", str(tmp_path), "--run-name", "cut", "--no-plots"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a shell starts background jobs with SIGINT ignored: Python would then never raise
        # KeyboardInterrupt; a terminal's foreground job has the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    records = run / "records.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (records.exists() and records.read_text().count("\n") >= 3):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    engine = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Aborted" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err  # not even click's blank line before it
    kept = len(records.read_text().splitlines())
    assert lines[0] == (f"bench interrupted: {kept} finished request(s) kept in {run}, marked incomplete; "
                        f"finish it: hyperbench bench --resume {run}")
    assert kept >= 3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "incomplete" and summary["reason"] == "interrupted"
    assert (run / "report.md").is_file() and (run / "config.json").is_file()
    time.sleep(1)  # the engine was torn down, not left serving
    assert engine and not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in engine)


def test_ctrl_c_in_a_command_without_a_run_folder_says_interrupted(capsys):
    """A command with nothing to keep: the line is just `interrupted`. (A stand-in command that
    raises KeyboardInterrupt where Ctrl-C would, through the real click group and main.)"""
    import click

    from harness import cli as cli_module

    @click.command("stand-in")
    def stand_in():
        raise KeyboardInterrupt

    cli_module.cli.add_command(stand_in)
    try:
        with pytest.raises(SystemExit) as exit_:
            cli_module.main(["stand-in"])
    finally:
        cli_module.cli.commands.pop("stand-in")
    assert exit_.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"
