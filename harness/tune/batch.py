"""Trials N at a time (`tune --executor slurm --max-parallel N`): ask Ax for a batch, run it side by
side, tell Ax every outcome, ask again.

Ax generates a batch with the trials still running as pending points (Study.new_trials), so the
N points of a batch spread out instead of N copies of the one best guess. A batch is filled up to
N from what is still running, never past the budget; the next one is asked for when every trial
of this one has ended, so each batch sees all results before it (what makes the run reproducible:
the same seed and the same results give the same trials).

Crash safety (a SIGKILL of this process can land anywhere; the trials' jobs are not ours and go on):

1. Ax proposes the batch and its state (those trials RUNNING) is saved before anything runs;
   killed before: the resume asks again, seeded by the first index, and gets the same trials.
2. trials/i/trial.json is written (`queued`, the parameters) before the batch is handed to the
   runner; the runner records where each trial runs (the job) before waiting on it.
3. The trial's own job writes its result to trials/i/trial.json; `reconcile` tells Ax on the next
   round, here or in a resumed process. A trial still RUNNING in Ax on resume is handed to the
   runner again, which adopts its job (or submits it, if it never reached the scheduler): never
   measured twice.
"""

from __future__ import annotations

from collections.abc import Callable

from harness.errors import HyperbenchError
from harness.tune.loop import MAX_CONSECUTIVE_FAILURES, TrialStore, _fmt_metrics, _fmt_params, reconcile
from harness.tune.study import Study

ENDED = ("completed", "failed")

# runner(batch): every trial of the batch (records as in trials/i/trial.json) ends with a
# completed or failed record on disk; it returns when all have
Runner = Callable[[list[dict]], None]


def optimize_batches(study: Study, store: TrialStore, budget: int, parallel: int, runner: Runner,
                     metric_names: list[str], echo: Callable[[str], None] = lambda s: None,
                     on_trial: Callable[[dict], None] = lambda rec: None) -> str | None:
    """Run batches of up to `parallel` trials until Ax holds `budget` (the baseline included).
    Returns why it stopped early, if it did."""
    if parallel < 1:
        raise HyperbenchError("--max-parallel must be at least 1")
    consecutive, last_error = 0, None
    while True:
        reconcile(study, store)
        running = study.running()
        if len(running) < parallel and study.count() < budget:
            if study.new_trials(min(parallel - len(running), budget - study.count())):
                study.save()  # before anything runs: a resumed tune knows these trials
                running = study.running()
            elif not running:
                return "Ax has no new configuration to propose (the search space is exhausted)"
        if not running:
            return None
        trials = study.trials()
        batch = []
        for index in running:
            rec = store.read(index)
            if rec is None:
                _, params, generator = trials[index]
                rec = {"index": index, "params": params, "generator": generator, "attempts": 0, "status": "queued"}
                store.write(index, rec)
            if rec.get("status") not in ENDED:
                echo(f"trial {index} ({'baseline, ' if index == 0 else ''}{index + 1} of {budget}): "
                     f"{_fmt_params(rec['params'])}" + (" (adopted)" if rec.get("job") else ""))
            batch.append(rec)
        runner(batch)
        for index in running:
            rec = store.read(index)
            if rec is None or rec.get("status") not in ENDED:  # the runner broke its contract
                raise HyperbenchError(f"trial {index} ended without a result in {store.folder(index)}")
            if rec["status"] == "failed":
                consecutive, last_error = consecutive + 1, rec.get("error")
                echo(f"  trial {index} -> failed: {rec.get('error')}")
            else:
                consecutive = 0
                echo(f"  trial {index} -> {_fmt_metrics(rec['metrics'], metric_names)}")
        reconcile(study, store)  # Ax told (and saved) before anyone hears of it
        for index in running:
            on_trial(store.read(index))
        if consecutive >= MAX_CONSECUTIVE_FAILURES:
            raise HyperbenchError(f"{consecutive} trials in a row failed (last: {last_error}); "
                                  "the tune stopped: fix the cause and resume it")


def in_turn(store: TrialStore, evaluate, metric_names: list[str]) -> Runner:
    """A runner that measures the batch's trials here, one after another (what a batch job does
    for one trial): for testing the batch search without a cluster."""
    from harness.tune.loop import measure_trial

    def run(batch: list[dict]) -> None:
        for rec in batch:
            if rec.get("status") not in ENDED:
                measure_trial(store, {**rec, "status": "running", "attempts": rec.get("attempts", 0) + 1},
                              evaluate, metric_names)

    return run
