"""The config tree of `hyperbench study` (CLI flags are derived from it, as for the other jobs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from harness.config import Load, Output, Target, Workload, _Strict
from harness.slurm import SlurmJob


class StudySpec(_Strict):
    variants: list[str] = Field(
        [], description="Variants to study, kind[:quant][:option=value]: hf,hf:int8,llamacpp:q8_0,vllm."
    )
    reference: str | None = Field(
        None, description="The variant the others are tested against (default: the first).")
    tasks: list[str] = Field([], description="lm-eval tasks each variant is scored on, e.g. gsm8k,mmlu.")
    limit: float | None = Field(None, gt=0, description="Items per task (a fraction when < 1).")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples (default: the task's).")
    data_dir: Path | None = Field(None, description="Offline data folder (`hyperbench data stage`).")
    max_gen_toks: int | None = Field(
        None, ge=1, description="Most tokens generated per item of a generative task (default: the task's).")
    perplexity: Path | None = Field(
        None, description="Text file (or JSONL of {'text': ...}) every variant's perplexity is measured on.")
    tune: list[str] = Field(
        [], description="Sampling parameters tuned per variant on a dev split, e.g. temperature,top_p "
        "(the first generative task of --tasks is the objective).")
    trials: int = Field(12, ge=2, description="Trials of each variant's tune, the baseline included.")
    tune_dev_limit: int = Field(20, ge=1, description="Dev items every tune trial is scored on.")
    tune_test_limit: int = Field(40, ge=0, description="Held-out items of each tune's final check.")
    agree_prompts: int = Field(16, ge=1, description="Prompts of each agree cell (greedy agreement, KL).")
    alpha: float = Field(0.05, gt=0, lt=1, description="Level of the paired accuracy test.")
    executor: Literal["local", "slurm"] = Field(
        "local", description="Where cells run: local (in turn, here) or slurm (each cell a task of one "
        "SLURM job array; the --partition.. options apply to each).")
    max_parallel: int | None = Field(None, ge=1, description="With --executor slurm: at most this many cells "
                                     "at once (1: no two cells' timings share a node).")

    @field_validator("variants")
    @classmethod
    def _distinct(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("a variant is listed twice")
        return v


class StudyOutput(Output):
    resume: Path | None = Field(None, description="Continue a study folder: only its missing cells run.")


class StudyConfig(_Strict):
    engine: dict[str, Any] = Field(default_factory=dict,
                                   description="Engine options shared by every variant that has them.")
    study: StudySpec = Field(default_factory=StudySpec)
    target: Target = Field(default_factory=Target)
    workload: Workload = Field(default_factory=Workload)
    load: Load = Field(default_factory=Load)
    output: StudyOutput = Field(default_factory=StudyOutput)
    slurm: SlurmJob = Field(default_factory=SlurmJob)

    def reference(self) -> str:
        return self.study.reference or (self.study.variants[0] if self.study.variants else "")
