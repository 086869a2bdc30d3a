"""Every flag of every run command, walked with out-of-range, wrong-type and malformed values:
one line on stderr, exit 2, no traceback, and no run folder that claims to be complete.

The cases come from the config models' own constraints (ge/gt/le/lt, Literal choices, the type
of a field or of a list's items), found through the click options that harness.cli.options derives from the
same models: a new flag is walked without a new test. They run in-process through the real
`main` (validation refuses them before any engine starts), so the whole walk takes seconds.
"""

from __future__ import annotations

import json
import typing

import annotated_types
import click
import pytest

from harness import cli as cli_module
from harness.cli.options import _unwrap

# what each command needs besides the flag under test to get as far as validating it (with the
# synthetic engine, a value wrongly let through runs a tiny real bench instead of hanging)
BASE = {
    "bench": ["bench", "--engine", "synthetic", "--num-requests", "1", "--output-len", "1"],
    "score": ["score", "--engine", "synthetic", "--tasks", "gsm8k"],
    "tune": ["tune", "--engine", "synthetic"],
    "compare": ["compare", "--engines", "synthetic", "--num-requests", "1"],
    "slurm": ["slurm", "--engine", "synthetic"],
    "agree": ["agree", "--engines", "synthetic,synthetic"],
}


def section_models(command: str) -> dict[str, type]:
    from harness.agree.config import AgreeSettings
    from harness.config import SLO, Load, Output, Target, Workload
    from harness.score.config import ScoreOutput, ScoreSpec
    from harness.slurm import SlurmJob
    from harness.tune.config import TuneOutput, TuneSpec

    bench = {"workload": Workload, "load": Load, "target": Target, "output": Output, "slo": SLO}
    return {
        "bench": bench, "compare": bench, "slurm": {**bench, "slurm": SlurmJob},
        "score": {"score": ScoreSpec, "target": Target, "output": ScoreOutput},
        "tune": {"tune": TuneSpec, "target": Target, "output": TuneOutput},
        "agree": {"agree": AgreeSettings, "target": Target, "output": Output},
    }[command]  # fmt: skip


def bounds(field) -> dict:
    out = {}
    for m in field.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if isinstance(m, getattr(annotated_types, name.capitalize())):
                out[name] = getattr(m, name)
    return out


def bad_values(field) -> list[tuple[str, str]]:
    """(what, value) pairs that the field must refuse, derived from its type and constraints."""
    tp = _unwrap(field.annotation)
    origin = typing.get_origin(tp)
    out = []
    if origin is typing.Literal:
        out.append(("not a choice", "no-such-choice"))
    item = typing.get_args(tp)[0] if origin is list else tp
    if item in (int, float):
        out.append(("wrong type", "abc" if origin is not list else "1,abc"))
        b = bounds(field)
        if "ge" in b:
            out.append(("below ge", str(b["ge"] - 1)))
        if "gt" in b:
            out.append(("at gt", str(b["gt"])))
        if "le" in b:
            out.append(("above le", str(b["le"] + 1)))
        if "lt" in b:
            out.append(("at lt", str(b["lt"])))
    return out


def cases():
    from backends import available_engines

    engines = available_engines()
    for command in BASE:
        cmd = cli_module.cli.commands[command]
        models = section_models(command)
        for p in cmd.params:
            if not isinstance(p, click.Option) or "__" not in (p.name or ""):
                continue
            section, name = p.name.split("__", 1)
            if section == "engine":
                owners = [c for c in engines.values() if name in c.model_fields]
                field = owners[0].model_fields[name] if owners else None
            else:
                field = models[section].model_fields.get(name) if section in models else None
            if field is None:
                continue
            for what, value in bad_values(field):
                yield pytest.param(command, p.opts[0], value, id=f"{command} {p.opts[0]} {what}")


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        cli_module.main(argv)
    return exit_.value.code, capsys.readouterr().err


CASES = list(cases())


def test_the_walk_covers_every_command():
    assert {c.values[0] for c in CASES} == set(BASE)
    assert len(CASES) > 60, len(CASES)


@pytest.mark.parametrize("command,flag,value", CASES)
def test_bad_flag_value_is_one_line_and_exit_2(command, flag, value, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a wrongly accepted value writes stays here
    base = BASE[command]
    if command == "compare" and flag == "--engines":
        base = ["compare"]
    argv = [*base, flag, value]
    if command != "slurm" and flag != "--results-dir":
        argv += ["--results-dir", str(tmp_path / "results")]
    code, err = run_main(argv, capsys)
    assert code == 2, (argv, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("Usage:", "Try "))]
    assert len(lines) == 1, (argv, err)
    for summary in (tmp_path / "results").rglob("summary.json") if (tmp_path / "results").exists() else []:
        assert json.loads(summary.read_text()).get("status") != "complete", summary


# --- the findings of issue 14, each as its user met it --------------------------------------


def hb(*args, timeout=300, cwd=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def one_line(res) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith(("Usage:", "Try "))]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_serve_port_out_of_range_and_host_not_here():
    assert "99999 is not in the range" in one_line(hb("serve", "synthetic", "--port", "99999"))
    line = one_line(hb("serve", "synthetic", "--host", "192.0.2.1", "--port", "0"))  # TEST-NET-1
    assert "192.0.2.1 is not an address of this machine" in line, line


def test_run_name_cannot_leave_the_results_folder(tmp_path, capsys):
    results = tmp_path / "a" / "b" / "results"
    code, err = run_main(["bench", "--engine", "synthetic", "--results-dir", str(results),
                          "--run-name", "../../x"], capsys)
    assert code == 2 and "'../../x' is not a folder name" in err, err
    assert not any(tmp_path.rglob("x"))


def test_summary_of_another_schema_version_is_refused_not_overwritten(tmp_path, capsys):
    run = tmp_path / "future"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"schema_version": 99, "kind": "bench", "rows": []}))
    (run / "report.md").write_text("their report\n")
    code, err = run_main(["report", str(run)], capsys)
    assert code == 2 and "schema_version 99" in err, err
    assert (run / "report.md").read_text() == "their report\n"
    code, err = run_main(["compare", str(run), str(run), "--results-dir", str(tmp_path / "c")], capsys)
    assert code == 2 and "schema_version 99" in err, err


@pytest.mark.parametrize("kwargs", ["temperature=-1", "top_p=0", "top_p=1.5", "max_gen_toks=0", "top_k=-5",
                                    "temperature=hot"])
def test_score_gen_kwargs_out_of_range(kwargs, tmp_path, capsys):
    code, err = run_main(["score", "--engine", "synthetic", "--tasks", "gsm8k", "--gen-kwargs", kwargs,
                          "--results-dir", str(tmp_path)], capsys)
    assert code == 2 and f"gen_kwargs {kwargs.split('=')[0]} must" in err, err
    assert not any(tmp_path.iterdir())


def test_score_max_length_below_the_generation_length_is_refused_before_an_engine(tmp_path):
    line = one_line(hb("score", "--engine", "synthetic", "--tasks", "gsm8k", "--max-length", "100",
                       "--results-dir", str(tmp_path)))
    assert "--max-length 100 leaves task gsm8k no room for a prompt" in line, line
    assert "engine" not in line.split(":")[0]
    assert not any(tmp_path.iterdir())  # refused before the run folder (and any engine)


def test_cli_rate_replaces_the_files_concurrency(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("load:\n  concurrency: [2]\n")
    res = hb("bench", "--engine", "synthetic", "--config", str(exp), "--rate", "50", "--num-requests", "2",
             "--ttft-ms", "1", "--itl-ms", "1", "--output-len", "2", "--no-plots", "--results-dir", str(tmp_path),
             "--run-name", "r")
    assert res.returncode == 0, res.stderr
    points = json.loads((tmp_path / "r" / "summary.json").read_text())["points"]
    assert [p.get("rate") for p in points] == [50] and "concurrency" not in points[0]


def test_compare_with_nothing_says_what_it_needs(capsys):
    code, err = run_main(["compare"], capsys)
    assert code == 2 and err.startswith("error: nothing to compare: give run folders"), err


def test_synthetic_engine_runs_with_its_default_model(tmp_path):
    res = hb("bench", "--engine", "synthetic", "--num-requests", "2", "--ttft-ms", "1", "--itl-ms", "1",
             "--output-len", "2", "--no-plots", "--results-dir", str(tmp_path), "--run-name", "r")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["points"][0]["completed"] == 2


def test_url_that_is_not_an_engine_is_said_at_once(tmp_path, capsys):
    """A real HTTP server without /health (404): the answer cannot change, so no 30 s wait."""
    import http.server
    import threading
    import time

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        t0 = time.monotonic()
        code, err = run_main(["bench", "--url", f"http://127.0.0.1:{srv.server_port}/v1", "--model", "tiny-llama",
                              "--results-dir", str(tmp_path)], capsys)
        took = time.monotonic() - t0
    finally:
        srv.shutdown()
    assert code == 2 and "answered HTTP 404 on /health" in err and "wire contract" in err, err
    assert took < 10, took


def test_lm_eval_asks_git_nothing_out_loud_outside_a_checkout(tmp_path, monkeypatch, capfd):
    """tune printed `fatal: not a git repository` once per trial (lm-eval's git describe)."""
    import lm_eval.evaluator

    from harness.score.tasks import quiet_git_hash

    monkeypatch.chdir(tmp_path)
    with quiet_git_hash():
        lm_eval.evaluator.get_git_commit_hash()
    assert "fatal" not in capfd.readouterr().err
