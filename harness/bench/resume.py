"""What a cut bench run left, read back: its finished points, the records of the point it was in,
and whether the harness that wrote it still runs.

records.jsonl is appended and flushed per finished request, so a killed run has every finished
request on disk even where summary.json still says `running`. `bench --resume` finishes such a run
(the points it did not finish, and only the missing requests of the one it was in); `report`
rebuilds a summary from the records when no process will ever write one.
"""

from __future__ import annotations

import os
import time

from harness.adapter import RequestRecord
from harness.config import BenchConfig
from harness.errors import HyperbenchError
from harness.bench.loadgen import _fmt, rate_fields
from harness.bench.metrics import span, summarize
from harness.bench.repeats import repeat_stats
from harness.results import RunFolder
from harness.bench.trace import load_trace

NO_SUMMARY = "process ended without writing a summary"


def point_label(kind: str, value: float, repeat: int | None = None) -> str:
    """A point as records.jsonl names it (`point` of each record): the load generator's name,
    and `#R` for repeat R of a sweep run several times (--repeats)."""
    return f"{kind}={_fmt(value)}" + (f"#{repeat}" if repeat is not None else "")


def sweep_points(cfg: BenchConfig) -> list[tuple[str, float, int | None]]:
    """(kind, value, repeat) of every point the run sends, in order: the sweep once, or
    --repeats times over (repeat 1..N; None when it runs once)."""
    n = cfg.load.repeats
    return [(k, v, r if n > 1 else None) for r in range(1, n + 1) for k, v in cfg.load.points()]


def load_key(point: dict):
    """(kind, value, repeat) of a summary point; a rate of `inf` reads back from JSON as the string."""
    kind = next((k for k in ("concurrency", "rate", "trace") if k in point), None)
    if kind is None:
        return None
    value = point[kind]
    return kind, float(value) if isinstance(value, str) else value, point.get("repeat")


def this_process() -> dict:
    """Who is writing a run: kept in summary.json while it runs, so that a reader can tell a run in
    progress from one whose process was killed (pids are reused: the start time says which)."""
    import psutil

    return {"pid": os.getpid(), "create_time": psutil.Process().create_time()}


def writer_alive(summary: dict) -> bool:
    """Whether the process that is writing this `running` run is still running."""
    import psutil

    who = summary.get("process") or {}
    try:
        p = psutil.Process(who["pid"])
        return abs(p.create_time() - who["create_time"]) < 1e-3 and p.status() != psutil.STATUS_ZOMBIE
    except (KeyError, TypeError, psutil.Error):
        return False


def was_cut(summary: dict) -> bool:
    """A run that says `running` but whose process is gone (killed, or its machine went down)."""
    return summary.get("status") == "running" and not writer_alive(summary)


def records_by_point(run_dir: RunFolder) -> dict[str, list[RequestRecord]]:
    out: dict[str, list[RequestRecord]] = {}
    for d in run_dir.records():
        if d.get("request_id", -1) < 0:
            continue
        try:
            rec = RequestRecord(**d)
        except TypeError:  # a record of another version: not ours to summarize
            continue
        out.setdefault(rec.point, []).append(rec)
    return out


def saved_config(run_dir: RunFolder) -> BenchConfig:
    from pydantic import ValidationError

    try:
        return BenchConfig(**run_dir.read_json("config.json"))
    except (ValidationError, TypeError):
        raise HyperbenchError(f"{run_dir.file('config.json')} is not a bench config this version can read") from None


def point_summary(cfg: BenchConfig, kind: str, value: float, sessions: list[list[RequestRecord]],
                  planned: int, repeat: int | None = None) -> dict:
    """One point from its records, over one or more sessions (a resumed point: its wall time is
    the sum of each session's, see metrics.summarize); `partial` when requests are missing."""
    records = sorted((r for s in sessions for r in s), key=lambda r: r.request_id)
    ran = [s for s in sessions if s]
    duration = sum(span(s) for s in ran) if len(ran) > 1 else None
    point = {kind: value, **({"repeat": repeat} if repeat is not None else {}),
             **summarize(records, cfg.slo, duration)}
    if len(ran) > 1:
        point["sessions"] = len(ran)
    if kind == "rate" and len(ran) == 1:  # the schedule's own rate and the send rate (one session's sends)
        # multi-turn: the schedule is of conversation starts (first turns); later turns follow answers
        point.update(rate_fields([r for r in records if not r.turn], value, cfg.workload.seed))
    lag_p99 = (point.get("schedule_lag_ms") or {}).get("p99")
    if lag_p99 is not None and lag_p99 > cfg.load.lag_limit_ms:
        point["client_behind"] = (f"client could not keep up: schedule lag p99 {lag_p99:.1f} ms "
                                  f"> {cfg.load.lag_limit_ms:g} ms")
    if len(records) < planned:
        point.update(partial=True, planned_requests=planned)
    return point


def rebuild_summary(run_dir: RunFolder, summary: dict) -> dict:
    """The summary a cut run should have had: its finished points as written, then each point
    that has records, summarized from them (partial where requests are missing); incomplete."""
    cfg = saved_config(run_dir)
    by_point = records_by_point(run_dir)
    finished = {load_key(p): p for p in summary.get("points", []) if not p.get("partial")}
    planned = len(load_trace(cfg.load.trace)) if cfg.load.trace is not None else cfg.workload.total_requests()
    points = []
    walked = [("rate", float(label.split("=", 1)[1]), None) for label in by_point
              if label.startswith("rate=")] if cfg.load.find_max_rate else []  # the rates it had tried
    for kind, value, rep in sweep_points(cfg) or walked:
        if (kind, value, rep) in finished:
            points.append(finished[(kind, value, rep)])
        elif recs := by_point.get(point_label(kind, value, rep)):
            points.append(point_summary(cfg, kind, value, [recs], planned, rep))
    summary = {**summary, "points": points, "status": "incomplete", "reason": NO_SUMMARY}
    if cfg.load.repeats > 1:
        summary["repeat_stats"] = repeat_stats(points)
    summary.setdefault("finished", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return summary
