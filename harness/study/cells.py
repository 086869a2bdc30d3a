"""The plan of a study: its cells, each one run folder of an existing job (bench, score, agree,
tune) under the study's cells/ folder, with the job's whole config written out.

A cell is data (job, variant, config dict), so any executor can run it anywhere the harness
runs: `python -m harness.study.cell STUDY CELL` reads the plan and calls the job's own `run`.
A cell that its variant cannot run (a loglikelihood task on an engine without prompt logprobs)
is planned as skipped, with the reason, and never started.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.errors import HyperbenchError
from harness.study.config import StudyConfig
from harness.study.variants import Variant

PLANNED, SKIPPED = "planned", "skipped"
CELLS_FOLDER = "cells"


@dataclass
class Cell:
    name: str  # its run folder's name under cells/
    job: str  # bench | score | agree | tune
    variant: str  # the variant's spec
    tasks: list[str] = field(default_factory=list)  # score: lm-eval tasks (and 'perplexity'); tune: its task
    status: str = PLANNED
    reason: str | None = None  # why it is skipped
    config: dict = field(default_factory=dict)  # the job's config, as its run() takes it

    def folder(self, study_dir: Path) -> Path:
        return Path(study_dir) / CELLS_FOLDER / self.name

    def to_json(self) -> dict:
        return asdict(self)


def task_kinds(tasks: list[str], data_dir: Path | None, work: Path) -> dict[str, dict]:
    """Per task: whether it needs prompt logprobs (any leaf scored by loglikelihood) and whether it
    is generative (for tune). Unknown tasks and missing data fail here, before anything runs."""
    from harness.score.tasks import LOGLIKELIHOOD_TYPES, leaf_tasks, prepare

    if not tasks:
        return {}
    prepared = prepare(tasks, data_dir, work)
    out = {}
    for task in tasks:
        types = {prepared.output_types.get(e.name, "generate_until") for e in leaf_tasks(prepared.tm, [task])}
        out[task] = {"loglikelihood": bool(types & set(LOGLIKELIHOOD_TYPES)),
                     "generative": types == {"generate_until"}}
    return out


def plan_cells(cfg: StudyConfig, variants: list[Variant], study_dir: Path, kinds: dict[str, dict]) -> list[Cell]:
    s = cfg.study
    ref = cfg.reference()
    root = Path(study_dir) / CELLS_FOLDER
    target = cfg.target.model_dump(mode="json")

    def output(name: str, plots: bool = cfg.output.plots) -> dict:
        return {"results_dir": str(root), "run_name": name, "plots": plots}

    tune_task = next((t for t in s.tasks if kinds[t]["generative"]), None)
    if s.tune and tune_task is None:
        raise HyperbenchError("--tune needs a generative task among --tasks (e.g. gsm8k): its score "
                              "is the tune's quality objective")
    gen_kwargs = {"max_gen_toks": s.max_gen_toks} if s.max_gen_toks else {}
    cells: list[Cell] = []
    by_spec = {v.spec: v for v in variants}
    for v in variants:
        cells.append(Cell(f"bench-{v.name}", "bench", v.spec, config={
            "engine": v.engine, "target": target, "workload": cfg.workload.model_dump(mode="json"),
            "load": cfg.load.model_dump(mode="json"), "output": output(f"bench-{v.name}")}))
        # one score run per variant for the tasks it can run (one engine start, one lm-eval load);
        # a task it cannot run is a skipped cell of its own, with the reason
        runnable = []
        for task in [*s.tasks, *(["perplexity"] if s.perplexity else [])]:
            needs_logprobs = task == "perplexity" or kinds[task]["loglikelihood"]
            if needs_logprobs and not v.prompt_logprobs:
                cells.append(Cell(f"score-{v.name}-{task}", "score", v.spec, tasks=[task], status=SKIPPED,
                                  reason=f"{task} is scored by loglikelihood, which needs prompt logprobs "
                                         f"(echo + logprobs); engine {v.engine['kind']} has none"))
            else:
                runnable.append(task)
        if runnable:
            spec = {"tasks": [t for t in runnable if t != "perplexity"], "limit": s.limit,
                    "data_dir": str(s.data_dir) if s.data_dir else None, "num_fewshot": s.num_fewshot,
                    "gen_kwargs": gen_kwargs, "perplexity": str(s.perplexity) if "perplexity" in runnable else None}
            cells.append(Cell(f"score-{v.name}", "score", v.spec, tasks=runnable, config={
                "engine": v.engine, "target": target, "score": spec, "output": output(f"score-{v.name}")}))
        if v.spec != ref and not (v.prompt_logprobs and by_spec[ref].prompt_logprobs):
            cells.append(Cell(f"agree-{v.name}", "agree", v.spec, status=SKIPPED, reason=(
                "agree compares prompt logprobs (echo + logprobs); engine "
                f"{(v if not v.prompt_logprobs else by_spec[ref]).engine['kind']} has none")))
        elif v.spec != ref:
            # agree measures both at full precision around the weights (its own convention), so
            # what it reports is the quantization's effect, not a compute path's
            cells.append(Cell(f"agree-{v.name}", "agree", v.spec, config={
                "engines": [ref, v.spec], "engine": dict(cfg.engine), "target": target,
                "agree": {"prompts": s.agree_prompts, "reference": ref}, "output": output(f"agree-{v.name}")}))
        if s.tune:
            cells.append(Cell(f"tune-{v.name}", "tune", v.spec, tasks=[tune_task], config={
                "engine": v.engine, "target": target,
                "tune": {"task": tune_task, "params": s.tune, "trials": s.trials, "dev_limit": s.tune_dev_limit,
                         "test_limit": s.tune_test_limit, "max_gen_toks": s.max_gen_toks,
                         "num_fewshot": s.num_fewshot, "data_dir": str(s.data_dir) if s.data_dir else None},
                "output": output(f"tune-{v.name}")}))
    return cells


def load_plan(study_dir: Path) -> list[Cell]:
    from harness.results import read_json

    return [Cell(**c) for c in read_json(Path(study_dir) / "plan.json")["cells"]]
