"""The trial loop: ask Ax, measure, tell Ax; every step written before the next one starts.

Crash safety, step by step (a SIGKILL can land anywhere):

1. Ax proposes trial i; its state (trial i RUNNING) is saved atomically before anything runs.
   Killed before that save: the resumed Ax never knew trial i, and proposes it again (the same
   index, and the same point: generation is seeded by the trial index).
2. trials/i/trial.json says `running` (attempt n); the measurement appends every answer to
   trials/i/requests.jsonl as it arrives. Killed here: the resume finds trial i RUNNING in Ax
   with no result, and measures it again from its request cache (nothing sent twice).
3. trials/i/trial.json gets the result (atomically), then Ax is told and saved. Killed between
   the two: the resume finds the result on disk and tells Ax, without measuring again.

A trial that fails (engine crash, refused request, timeout) is recorded as failed and reported
to Ax with mark_trial_failed, never retried; a trial interrupted MAX_ATTEMPTS times is failed too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from harness.errors import HyperbenchError
from harness.results import atomic_write_json, read_json
from harness.tune.measure import Measurement
from harness.tune.study import Study

MAX_ATTEMPTS = 3  # a trial whose measurement was interrupted this often is failed, not retried
MAX_CONSECUTIVE_FAILURES = 3  # then the tune stops (resumable): something is broken, not unlucky


class TrialFailed(Exception):
    """The configuration could not be measured (recorded, reported to Ax, not retried)."""


class TrialStore:
    """trials/<index>/trial.json (+ the measurement's requests.jsonl and items.jsonl)."""

    def __init__(self, root: Path):
        self.root = Path(root) / "trials"

    def folder(self, index: int) -> Path:
        return self.root / f"{index:04d}"

    def read(self, index: int) -> dict | None:
        path = self.folder(index) / "trial.json"
        return read_json(path) if path.is_file() else None

    def write(self, index: int, rec: dict) -> None:
        self.folder(index).mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder(index) / "trial.json", rec)

    def all(self) -> list[dict]:
        if not self.root.is_dir():
            return []
        out = [read_json(p / "trial.json") for p in sorted(self.root.iterdir()) if (p / "trial.json").is_file()]
        return sorted(out, key=lambda r: r["index"])


def _raw(rec: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in rec["raw"].items()}


def reconcile(study: Study, store: TrialStore) -> None:
    """Tell Ax the outcome of trials whose result reached the disk before a kill did."""
    changed = False
    for index in study.running():
        rec = store.read(index)
        if rec and rec.get("status") == "completed":
            study.complete(index, _raw(rec))
            changed = True
        elif rec and rec.get("status") == "failed":
            study.fail(index, rec.get("error") or "failed")
            changed = True
    if changed:
        study.save()


def optimize(study: Study, evaluate: Callable[[Path, dict], Measurement], store: TrialStore,
             budget: int, metric_names: list[str], echo: Callable[[str], None] = lambda s: None,
             on_trial: Callable[[dict], None] = lambda rec: None) -> str | None:
    """Run trials until Ax holds `budget` of them (the baseline included). Returns why it
    stopped early, if it did."""
    consecutive = 0
    while True:
        reconcile(study, store)
        trials = study.trials()
        running = study.running()
        if running:
            index = running[0]
            _, params, generator = trials[index]
        elif study.count() < budget:
            got = study.new_trial()
            if got is None:
                return "Ax has no new configuration to propose (the search space is exhausted)"
            index, params = got
            study.save()
            generator = study.trials()[index][2]
        else:
            return None
        rec = store.read(index) or {"index": index, "params": params, "generator": generator, "attempts": 0}
        if rec["attempts"] >= MAX_ATTEMPTS:
            _fail(study, store, rec, f"interrupted {rec['attempts']} times while measuring", echo, on_trial)
            continue
        rec.update(status="running", attempts=rec["attempts"] + 1,
                   started=rec.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        store.write(index, rec)
        # the index is the one report.md, trials/<i>/ and Ax use (0 is the baseline); the count
        # says how far along the budget is ("trial 2/2" read as "the last of two")
        echo(f"trial {index} ({'baseline, ' if index == 0 else ''}{index + 1} of {budget}): {_fmt_params(params)}"
             + (f" (attempt {rec['attempts']})" if rec["attempts"] > 1 else ""))
        rec = measure_trial(store, rec, evaluate, metric_names)
        if rec["status"] == "failed":
            consecutive += 1
            _fail(study, store, rec, rec["error"], echo, on_trial)
            if consecutive >= MAX_CONSECUTIVE_FAILURES:
                raise HyperbenchError(f"{consecutive} trials in a row failed (last: {rec['error']}); the tune "
                                      "stopped: fix the cause and resume it")
            continue
        consecutive = 0
        study.complete(index, _raw(rec))
        study.save()
        echo(f"  -> {_fmt_metrics(rec['metrics'], metric_names)} ({rec['elapsed_s']:.1f} s)")
        on_trial(rec)


def measure_trial(store: TrialStore, rec: dict, evaluate: Callable[[Path, dict], Measurement],
                  metric_names: list[str]) -> dict:
    """Measure one trial into its record, written: completed with its metrics, or failed with the
    reason (TrialFailed). Ax is not told here: the loop does that, or, for a trial run as a batch
    job, the controlling process when it reads the record."""
    t0 = time.perf_counter()
    try:
        m = evaluate(store.folder(rec["index"]), rec["params"])
        missing = [n for n in metric_names if m.metrics.get(n, {}).get("mean") is None]
        if missing:
            raise TrialFailed(f"no value for {', '.join(missing)} (TPOT needs answers of 2+ tokens)")
    except TrialFailed as e:
        rec.update(status="failed", error=str(e), finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        store.write(rec["index"], rec)
        return rec
    rec.update(status="completed", metrics=m.metrics, raw=m.raw(metric_names), requests=m.requests,
               elapsed_s=round(time.perf_counter() - t0, 3), items=len(m.items),
               finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    store.write(rec["index"], rec)
    return rec


def _fail(study: Study, store: TrialStore, rec: dict, reason: str, echo, on_trial) -> None:
    rec.update(status="failed", error=reason, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    store.write(rec["index"], rec)
    study.fail(rec["index"], reason)
    study.save()
    echo(f"  -> failed: {reason}")
    on_trial(rec)


def _fmt_params(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _fmt_metrics(ms: dict, names: list[str]) -> str:
    parts = []
    for n in names:
        m = ms.get(n) or {}
        if m.get("mean") is None:
            continue
        sem = f" ± {m['sem']:.3g}" if m.get("sem") is not None else ""
        parts.append(f"{n} {m['mean']:.4g}{sem}")
    return ", ".join(parts)
