"""`hyperbench bench`: bring an engine up, replay a workload at each sweep point, write a run folder."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from backends.base import speculative_delta
from harness import telemetry
from harness.roofline import point_roofline
from harness.bench.server_metrics import FILE as SERVER_METRICS_FILE, JsonlSink, ServerMetrics
from harness.adapter import EngineClient, RequestRecord
from harness.config import BenchConfig
from harness.engine_session import describe_engine, engine_up, resolve_model_path, resolve_tokenizer_source
from harness.errors import EngineError, HyperbenchError
from harness.bench.loadgen import run_point
from harness.bench.resume import (load_key, point_label, point_summary, records_by_point, saved_config,
                                  sweep_points, this_process, writer_alive)
from harness.bench.find_rate import find_max_rate
from harness.bench.repeats import repeat_stats
from harness.launchers.process import stop_orphan
from harness.results import RunFolder
from harness.run_lifecycle import close_summary, create_run, interruption, reopen, run_stoppable, write_resolved
from harness.bench.trace import load_trace, trace_requests
from harness.bench.workload import build_requests, load_tokenizer, warmup_requests


def run(cfg: BenchConfig, progress=None) -> RunFolder:
    engine = cfg.engine_config()  # validates engine options before anything is written
    engine.check()
    requests = None
    if cfg.load.find_max_rate and not any(v is not None for v in cfg.slo.model_dump().values()):
        raise HyperbenchError("--find-max-rate needs the SLOs that goodput is measured against: --slo ttft=...,tpot=...")
    if cfg.load.trace is not None:  # a bad trace: refused now, not after the engine loaded
        if cfg.workload.dataset is not None:
            raise HyperbenchError("a trace gives the prompt lengths: give --trace or --dataset, not both")
        load_trace(cfg.load.trace)
    elif cfg.workload.dataset is not None:  # a bad prompt file: refused now, not after the engine loaded
        requests = build_requests(cfg.workload)
    model_path = resolve_model_path(cfg, engine)
    run_dir, summary = create_run(cfg, engine, "bench")
    write_resolved(run_dir, cfg, engine)
    summary["points"] = []
    return _execute(cfg, engine, model_path, requests, run_dir, summary, {}, progress)


def resume(path: Path, progress=None) -> RunFolder:
    """Finish a bench run that was cut (killed, interrupted, its engine died): the same config,
    seed and prompts; finished points are kept, and of the point it was in only the requests
    that have no record are sent."""
    run_dir, summary = RunFolder.open_to_resume(path, "bench")
    if summary.get("status") == "running" and writer_alive(summary):
        raise HyperbenchError(f"{run_dir.path} is still being written by process {summary['process']['pid']}")
    cfg = saved_config(run_dir)
    if cfg.load.find_max_rate:
        raise HyperbenchError(f"{run_dir.path} is a --find-max-rate search: its walk cannot be resumed; run it again")
    engine = cfg.engine_config()
    engine.check()
    requests = build_requests(cfg.workload) if cfg.workload.dataset is not None else None
    model_path = resolve_model_path(cfg, engine)
    run_dir.drop_torn_record()
    if stopped := stop_orphan(run_dir.path):
        summary.setdefault("notes", []).append(stopped)
    summary["points"] = [p for p in summary.get("points", []) if not p.get("partial")]
    reopen(summary)
    done = {load_key(p) for p in summary["points"]}
    prior = records_by_point(run_dir)
    todo = {point_label(k, v, r): prior.get(point_label(k, v, r), []) for k, v, r in sweep_points(cfg)
            if (k, v, r) not in done}
    return _execute(cfg, engine, model_path, requests, run_dir, summary, todo, progress, resuming=True)


def _execute(cfg: BenchConfig, engine, model_path, requests, run_dir: RunFolder, summary: dict,
             todo: dict, progress, resuming: bool = False) -> RunFolder:
    """The sweep of a new run (todo: {}, every point) or of a resumed one (todo: the points left,
    each with the records it already has), then the speculation-off baseline; summary.json and
    the report are written however it ends."""
    label = summary["engine"]
    spec_off = engine.without_speculation()  # None when the engine does not speculate
    summary["process"] = this_process()  # tells `report` and `--resume` whether this run still runs
    run_dir.write_json("summary.json", summary)
    baseline = telemetry.used_memory()  # idle GPU memory before the engine starts
    current: dict = {}  # the sweep point in progress and its finished records
    try:
        if not resuming or todo:
            with engine_up(cfg, engine, model_path, run_dir.file("engine.log")) as (endpoint, launcher):
                describe_engine(summary, endpoint, launcher, engine)
                if summary["engine_info"]:
                    run_dir.write_json("engine.json", summary["engine_info"])
                encode = None  # answer text -> ids, for multi-turn conversations of token-id prompts
                if requests is None:  # synthetic prompts, of the served model's tokenizer
                    tok_src = resolve_tokenizer_source(cfg, model_path)
                    tok = load_tokenizer(tok_src) if tok_src else None
                    requests = (trace_requests(load_trace(cfg.load.trace), cfg.workload, tok)
                                if cfg.load.trace is not None else build_requests(cfg.workload, tok))
                    if tok is not None:
                        encode = partial(tok.encode, add_special_tokens=False)
                run_stoppable(partial(_sweep, cfg, engine, endpoint, launcher, requests, run_dir, summary,
                                      baseline, progress, current, todo if resuming else None, encode))
        if spec_off is not None:
            _spec_baseline(cfg, spec_off, run_dir, summary, progress)
        summary["status"] = "complete"
    except KeyboardInterrupt:
        _keep_partial_point(cfg, summary, current)
        raise interruption(summary, "bench", run_dir, f"{len(run_dir.records())} finished request(s)") from None
    except (HyperbenchError, OSError) as e:  # OSError: the machine's (a full disk, too many files)
        _keep_partial_point(cfg, summary, current)
        summary["status"] = "incomplete" if summary["points"] else "failed"
        summary["reason"] = str(e)
        raise
    finally:
        if cfg.load.repeats > 1:  # over the repeats finished, however the run ended
            summary["repeat_stats"] = repeat_stats(summary["points"])
        try:
            close_summary(run_dir, summary)
        finally:
            _write_report(run_dir, cfg)
    return run_dir


def _keep_partial_point(cfg: BenchConfig, summary: dict, current: dict) -> None:
    """The point a stop cut short: its finished requests summarized (they are in records.jsonl
    too), marked `partial` with the number of requests it was to send, so summary.json does not
    lose them. Over the finished requests only: the cut-off ones' work is not in the throughput."""
    if not current.get("records") and not current.get("prior"):
        return  # nothing finished yet, or the point was summarized whole before the stop
    point = point_summary(cfg, current["kind"], current["value"], [current["prior"], current["records"]],
                          current["planned"], current["repeat"])
    summary["points"].append({**point, "partial": True, "planned_requests": current["planned"]})


def _not_sent(rec: RequestRecord, launcher) -> bool:
    """A request that never reached the engine because the engine had died: the connection was
    refused. (One the engine had, and lost when it died, is a failed request of the point.)"""
    if not (rec.error and rec.error.startswith(("ConnectError", "ConnectTimeout"))):
        return False
    # refused: a killed engine process refuses connections a moment before its launcher sees it
    # exit (under load this race counted a never-sent request as failed): up to 0.5 s to be seen
    # dead, where the launcher holds the engine's process (others answer alive() at once)
    tries = 10 if launcher.holds_process else 1
    for i in range(tries):
        if not launcher.alive():
            return True
        if i + 1 < tries:
            time.sleep(0.05)
    return False


async def _sweep(cfg, engine, endpoint, launcher, requests, run_dir, summary, baseline, progress,
                 current: dict, todo: dict | None, encode=None) -> None:
    async with EngineClient(endpoint.base_url, endpoint.model, endpoint.api_key,
                            timeout=cfg.load.timeout_s) as client:
        # prompts of their own: one of the measured prompts would find the warm-up's prefix cached
        for warm in warmup_requests(requests, cfg.workload.warmup, cfg.workload.seed):
            rec = await client.generate(warm, RequestRecord(request_id=-1, point="warmup"))
            if rec.error:
                raise EngineError(f"warm-up request failed: {rec.error}")
        async def measure(kind: str, value: float, repeat: int | None, label: str, prior: list) -> dict:
            """One point: its requests that have no record (all but a resumed point's `prior`)."""
            have = {r.request_id for r in prior}
            missing = [i for i in range(len(requests)) if i not in have]
            task = progress.start(kind, value, len(requests)) if progress else None
            for _ in prior:
                if progress:
                    progress.advance(task)
            current.update(kind=kind, value=value, repeat=repeat, planned=len(requests), prior=prior, records=[],
                           not_sent=0)

            def on_record(rec: RequestRecord) -> None:
                rec.request_id = missing[rec.request_id]  # run_point numbers the subset it was given
                rec.point = label  # with its repeat (run_point names the load only)
                if _not_sent(rec, launcher):
                    current["not_sent"] += 1  # no record: a resume sends it
                    return
                run_dir.append_record(rec.to_json())
                current["records"].append(rec)
                if progress:
                    progress.advance(task)

            spec_before = _spec_counters(engine, endpoint)  # cumulative: difference around the point
            server = ServerMetrics(endpoint.base_url, endpoint.api_key, label,
                                   JsonlSink(run_dir.file(SERVER_METRICS_FILE)), cfg.load.metrics_interval_s)
            with telemetry.GPUSampler(baseline) as gpu:
                async with server:
                    await run_point(client, [requests[i] for i in missing], kind, value, cfg.workload.seed,
                                    on_record, cfg.load.max_concurrency, cfg.workload.think_time_ms / 1000.0,
                                    encode, {(r.conversation, r.turn): r.text for r in prior if r.turn is not None})
            if current["not_sent"]:  # the engine died: what it never got is missing, not failed
                raise EngineError(f"engine died during the run: {launcher.death_reason()}")
            point = point_summary(cfg, kind, value, [prior, current["records"]], len(requests), repeat)
            point["server"] = server.summary([r.first_token - r.send for r in current["records"]
                                              if r.ok and r.first_token is not None])
            if (g := gpu.result()) is not None:
                point["gpu"] = g
                if roof := point_roofline(point, (summary.get("engine_info") or {}).get("weight_bytes")):
                    point["roofline"] = roof
            if spec_before is not None:
                point["speculative"] = _spec_result(spec_before, _spec_counters(engine, endpoint))
            summary["points"].append(point)
            current.clear()  # summarized whole: nothing partial to keep from here
            run_dir.write_json("summary.json", summary)
            if not launcher.alive():
                raise EngineError(f"engine died during the run: {launcher.death_reason()}")
            if point["completed"] == 0:
                raise EngineError(f"every request failed at {kind}={value}: {point.get('first_error')}")
            return point

        if cfg.load.find_max_rate:
            start = cfg.load.rate[0] if cfg.load.rate and cfg.load.rate[0] != float("inf") else 1.0
            summary["max_rate"] = await find_max_rate(
                lambda r: measure("rate", r, None, point_label("rate", r), []), start,
                cfg.load.goodput_share, cfg.load.rate_precision)
            return
        for kind, value, repeat in sweep_points(cfg):
            label = point_label(kind, value, repeat)
            if todo is not None and label not in todo:
                continue  # finished before the run was cut
            await measure(kind, value, repeat, label, todo.get(label, []) if todo is not None else [])


def _spec_counters(engine, endpoint) -> dict | None:
    """The engine's speculative-decoding counters; None when it does not speculate. A failed
    read is recorded, not raised: the run goes on without acceptance numbers."""
    try:
        return engine.spec_counters(endpoint.base_url)
    except HyperbenchError as e:
        return {"error": str(e)}


def _spec_result(before: dict, after: dict | None) -> dict:
    for snap in (before, after):
        if snap is None or "error" in snap:
            return {"error": snap["error"] if snap else "speculative counters disappeared"}
    return speculative_delta(before, after)


# the speculation-off run of a speculative bench: a bench run folder of its own, inside the run's
BASELINE_FOLDER = "baseline"


def _spec_baseline(cfg: BenchConfig, spec_off, run_dir: RunFolder, summary: dict, progress) -> None:
    """The speedup of speculative decoding: the same engine restarted with speculation off, the
    same workload (seed, prompts, warm-up) at the same points, as a bench run folder of its own
    (BASELINE_FOLDER); each point's `speculative.speedup` then compares the two. An engine
    someone else runs cannot be restarted: then the speedup is said to be not measured."""
    summary.pop("speculative_baseline", None)  # a cut run's `running`: decided again below
    if not cfg.target.launcher_class.can_restart:
        summary["speculative_baseline"] = {
            "status": "not measured",
            "reason": "external engine (--url): the harness cannot restart it without speculation",
        }
    elif not cfg.load.spec_baseline:
        summary["speculative_baseline"] = {"status": "skipped", "reason": "--no-spec-baseline"}
    if "speculative_baseline" in summary:
        _attach_speedups(summary, [])
        return
    summary["speculative_baseline"] = {"status": "running", "run_folder": BASELINE_FOLDER}
    run_dir.write_json("summary.json", summary)
    sub = cfg.model_copy(update={
        "engine": spec_off.model_dump(mode="json"),
        "load": cfg.load.model_copy(update={"spec_baseline": False}),
        "output": cfg.output.model_copy(update={"results_dir": run_dir.path, "run_name": BASELINE_FOLDER}),
    })  # fmt: skip
    sub_path = run_dir.path / BASELINE_FOLDER
    try:
        if not (sub_path / "summary.json").is_file():
            run(sub, progress)
        elif RunFolder(sub_path).read_json("summary.json").get("status") != "complete":
            resume(sub_path, progress)  # a resumed run that was cut in its baseline
    except HyperbenchError as e:
        raise EngineError(f"the baseline without speculative decoding failed ({BASELINE_FOLDER}/): {e}") from None
    finally:  # whatever the baseline finished is kept and compared
        path = run_dir.path / BASELINE_FOLDER / "summary.json"
        base = RunFolder(path.parent).read_json("summary.json") if path.is_file() else {}
        summary["speculative_baseline"].update(status=base.get("status", "failed"))
        if base.get("reason"):
            summary["speculative_baseline"]["reason"] = base["reason"]
        _attach_speedups(summary, base.get("points", []))


def _p50(point: dict, key: str):
    return (point.get(key) or {}).get("p50")


def _ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0 and b > 0 else None


def _attach_speedups(summary: dict, base_points: list[dict]) -> None:
    """point.speculative.speedup: > 1 means faster with speculation (output tok/s spec / no-spec,
    TPOT and E2E p50 no-spec / spec), with the baseline's own numbers; None where not measured."""
    by_load = {load_key(b): b for b in base_points if b.get("completed")}
    for p in summary["points"]:
        if "speculative" not in p:
            continue
        b = by_load.get(load_key(p))
        p["speculative"]["speedup"] = None if b is None or not p.get("completed") else {
            "output_throughput": _ratio(p.get("output_throughput"), b.get("output_throughput")),
            "tpot_p50": _ratio(_p50(b, "tpot_ms"), _p50(p, "tpot_ms")),
            "e2e_p50": _ratio(_p50(b, "e2e_ms"), _p50(p, "e2e_ms")),
            "baseline": {
                "completed": b.get("completed"),
                "output_throughput": b.get("output_throughput"),
                "ttft_p50_ms": _p50(b, "ttft_ms"),
                "tpot_p50_ms": _p50(b, "tpot_ms"),
                "e2e_p50_ms": _p50(b, "e2e_ms"),
            },
        }  # fmt: skip


def _write_report(run_dir: RunFolder, cfg: BenchConfig) -> None:
    from harness.bench.report import write_report

    try:
        write_report(run_dir, plots=cfg.output.plots)
    except Exception as e:  # a report problem must never lose the run's data
        try:
            (run_dir.path / "report.md").write_text(f"report failed: {type(e).__name__}: {e}\n")
        except OSError:
            pass  # a full disk: summary.json and the records are what counts
