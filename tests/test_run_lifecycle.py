"""The run lifecycle every job shares: the Ctrl-C line and summary marking of a job with --resume,
and a resumed summary reopened. (The folders themselves are checked by each job's end-to-end test.)"""

from types import SimpleNamespace

from harness.errors import Interrupted
from harness.run_lifecycle import close_summary, interruption, reopen, start_run


def test_interruption_marks_the_summary_and_names_the_resume_command(tmp_path):
    output = SimpleNamespace(results_dir=tmp_path, run_name="r")
    run_dir, summary = start_run(output, "agree", "tiny-llama", "agree", model="tiny-llama", engines=[])
    assert (summary["kind"], summary["status"], summary["model"]) == ("agree", "running", "tiny-llama")
    cut = interruption(summary, "score", run_dir, "3 finished request(s)", "continue without recomputing them")
    assert isinstance(cut, Interrupted)
    assert str(cut) == (f"score interrupted: 3 finished request(s) kept in {run_dir.path}, marked incomplete; "
                        f"continue without recomputing them: hyperbench score --resume {run_dir.path}")
    assert (summary["status"], summary["reason"]) == ("incomplete", "interrupted")
    close_summary(run_dir, summary)  # the marked summary is a valid agree summary.json
    assert run_dir.summary()["status"] == "incomplete"


def test_reopen_dates_the_resume_and_drops_the_cut_reason():
    summary = {"status": "incomplete", "reason": "interrupted", "resumed": ["2026-12-01T00:00:00+0000"]}
    reopen(summary)
    assert summary["status"] == "running" and "reason" not in summary
    assert len(summary["resumed"]) == 2 and summary["resumed"][0] == "2026-12-01T00:00:00+0000"
