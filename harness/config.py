"""The config tree: the single source of truth for `bench` (CLI flags are derived from it).

Precedence: CLI flags > `--config` YAML file > defaults. The resolved tree is saved in the run
folder as config.json.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import HyperbenchError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Workload(_Strict):
    input_len: int = Field(128, ge=1, description="Prompt length in tokens (synthetic prompts).")
    output_len: int = Field(64, ge=1, description="Tokens to generate per request.")
    num_requests: int = Field(32, ge=1, description="Requests per sweep point.")
    prefix_len: int = Field(
        0, ge=0, description="Synthetic prompts: this many first tokens are the same in every "
        "prompt (a shared system prompt; prefix-cache hits), the rest differ.",
    )
    dataset: Path | None = Field(
        None, description="Prompt file: JSONL ({'prompt': ...}, ShareGPT 'conversations' or chat "
        "'messages'; the first user turn), or a JSON array of them (ShareGPT as published)."
    )
    fixed_output: bool = Field(
        True, description="Force exactly output_len tokens (min_tokens + ignore_eos)."
    )
    temperature: float = Field(0.0, ge=0, description="Sampling temperature of bench requests.")
    seed: int = Field(0, description="Seed of prompts, arrival times and sampling.")
    chat: bool = Field(False, description="Send /v1/chat/completions instead of /v1/completions.")
    warmup: int = Field(1, ge=0, description="Warm-up requests before each engine's sweep.")
    turns: int = Field(
        1, ge=1, description="Multi-turn conversations: each of --num-requests conversations has "
        "this many turns; a turn is sent after the previous answer (plus --think-time-ms), its prompt "
        "the conversation so far (prompts, answers) plus input_len new tokens.",
    )
    think_time_ms: float = Field(0.0, ge=0, description="Multi-turn: pause between an answer's last "
                                 "token and the next turn of its conversation.")

    def total_requests(self) -> int:
        """Requests of one sweep point: one per turn of every conversation."""
        return self.num_requests * self.turns

    @model_validator(mode="after")
    def _prefix(self):
        if self.prefix_len > self.input_len:
            raise ValueError(f"prefix_len {self.prefix_len} is longer than the prompt (input_len {self.input_len})")
        if self.prefix_len and self.dataset is not None:
            raise ValueError("prefix_len shapes synthetic prompts: not with a dataset")
        if self.think_time_ms and self.turns == 1:
            raise ValueError("think_time_ms is the pause between turns: give turns > 1 with it")
        return self


class Load(_Strict):
    # one sweep or the other, or a trace: a CLI flag of one replaces the file's other (see `build`)
    alternatives: ClassVar[tuple[str, ...]] = ("concurrency", "rate", "trace")

    concurrency: list[int] | None = Field(
        None, description="Closed-loop sweep: concurrent streams, e.g. 1,4,8."
    )
    rate: list[float] | None = Field(
        None, description="Open-loop Poisson sweep: requests/s, e.g. 1,2,4,inf."
    )
    trace: Path | None = Field(
        None, description="Replay a request trace on its own schedule instead of a sweep: "
        "Mooncake JSONL (timestamp ms, input_length, output_length, hash_ids) or BurstGPT CSV.",
    )
    time_scale: float = Field(
        1.0, gt=0, description="Trace send times are multiplied by this (0.5: twice as fast)."
    )
    max_concurrency: int | None = Field(
        None, ge=1, description="Cap on in-flight requests during a rate sweep."
    )
    repeats: int = Field(
        1, ge=1, description="Run the sweep this many times; summary and report give each "
        "metric's mean and 95% confidence interval per point.",
    )
    find_max_rate: bool = Field(
        False, description="Search the Poisson rate (from the first --rate, or 1) for the highest "
        "at which --goodput-share of requests meet every --slo.",
    )
    goodput_share: float = Field(0.9, gt=0, le=1, description="--find-max-rate: share of requests "
                                 "that must meet the SLOs.")
    rate_precision: float = Field(0.1, gt=0, lt=1, description="--find-max-rate: stop when the bracket "
                                  "(passed, failed) is this close, relative to the failed rate.")
    lag_limit_ms: float = Field(
        10.0, gt=0, description="A rate or trace point whose schedule lag p99 exceeds this is "
        "flagged: the client could not keep up.",
    )
    timeout_s: float = Field(600, gt=0, description="Per-request timeout in seconds.")
    metrics_interval_s: float = Field(
        0.5, ge=0, description="Scrape the engine's Prometheus /metrics this often during each point "
        "(server_metrics.jsonl beside the records; 0: off).",
    )
    spec_baseline: bool = Field(
        True, description="With speculative decoding on, also bench the same engine restarted "
        "without it (same seed and points) for the speedup; not with --url.",
    )  # fmt: skip

    @field_validator("concurrency")
    @classmethod
    def _positive(cls, v):
        if v is not None and any(c < 1 for c in v):
            raise ValueError("concurrency values must be >= 1")
        return v

    @field_validator("rate")
    @classmethod
    def _rate(cls, v):
        if v is not None and any(not (r > 0) for r in v):
            raise ValueError("rate values must be > 0 (inf allowed)")
        return v

    @model_validator(mode="after")
    def _default(self):
        if self.concurrency and self.rate:
            raise ValueError("give either concurrency or rate, not both")
        if self.trace is not None and (self.concurrency or self.rate):
            raise ValueError("a trace sets its own send times: give no concurrency or rate with it")
        if self.find_max_rate and (self.concurrency or self.trace is not None or self.repeats > 1):
            raise ValueError("--find-max-rate searches the Poisson rate: give no concurrency, trace "
                             "or repeats with it (a --rate is where it starts)")
        if not self.concurrency and not self.rate and self.trace is None and not self.find_max_rate:
            self.concurrency = [1]
        return self

    def points(self) -> list[tuple[str, float]]:
        if self.find_max_rate:
            return []  # the rates are found as it goes (harness/bench/find_rate.py)
        if self.trace is not None:
            return [("trace", self.time_scale)]
        if self.rate:
            return [("rate", r) for r in self.rate]
        return [("concurrency", c) for c in self.concurrency or [1]]


class SLO(_Strict):
    ttft_ms: float | None = Field(None, gt=0, description="Goodput SLO on TTFT (ms).")
    tpot_ms: float | None = Field(None, gt=0, description="Goodput SLO on TPOT (ms).")
    e2e_ms: float | None = Field(None, gt=0, description="Goodput SLO on E2E latency (ms).")


class Output(_Strict):
    results_dir: Path = Field(Path("results"), description="Root folder of run folders.")
    run_name: str | None = Field(None, description="Run folder name (default: time-engine-model).")
    plots: bool = Field(True, description="Write PNG plots with the report.")

    @field_validator("run_name")
    @classmethod
    def _one_folder(cls, v):
        # a path here would put the run outside --results-dir (`../../x`), or nowhere (`..`)
        if v is not None and (v in ("", ".", "..") or any(c in v for c in "/\\\0")):
            raise ValueError(f"{v!r} is not a folder name: give a name without '/' (the run folder goes "
                             "under --results-dir)")
        return v


class Target(_Strict):
    """Where the engine is: started by a launcher, or an external URL."""

    launcher: Literal["process", "external", "docker", "apptainer"] = Field(
        "process", description="How the engine is brought up."
    )
    url: str | None = Field(None, description="Base URL of an engine someone else runs (…/v1).")
    port: int | None = Field(None, ge=1, le=65535, description="Port to serve on (default: free).")
    startup_timeout_s: float = Field(600, gt=0, description="Wait this long for /health.")
    tokenizer: str | None = Field(
        None, description="Tokenizer folder that synthetic prompts are built with (exact input "
        "lengths) [default: the served model's folder; needed with --url, or a .gguf --model, unless "
        "--model is a built-in or a local folder, or --dataset is given]."
    )

    @model_validator(mode="after")
    def _url(self):
        if self.url and self.launcher == "process":
            self.launcher = "external"
        if not self.launcher_class.starts_engine and not self.url:
            raise ValueError(f"the {self.launcher} launcher needs --url")
        return self

    @property
    def launcher_class(self):
        """The launcher's class, whose attributes say what it can do (starts_engine, can_restart,
        holds_process, uses_host_install): jobs ask those, not the launcher's name."""
        from harness.launchers import launcher_class

        return launcher_class(self.launcher)


class BenchConfig(_Strict):
    engine: dict[str, Any] = Field(default_factory=lambda: {"kind": "hf"})
    target: Target = Field(default_factory=Target)
    workload: Workload = Field(default_factory=Workload)
    load: Load = Field(default_factory=Load)
    slo: SLO = Field(default_factory=SLO)
    output: Output = Field(default_factory=Output)

    @model_validator(mode="after")
    def _turns(self):
        if self.workload.turns > 1 and self.load.trace is not None:
            raise ValueError("a trace gives each request's send time: multi-turn conversations (turns > 1) "
                             "are not with --trace")
        return self

    def engine_config(self):
        """The typed engine config (its class is chosen by `kind` from the registry)."""
        from backends import engine_class

        cls = engine_class(self.engine.get("kind", "hf"))
        try:
            return cls(**self.engine)
        except ValidationError as e:
            raise HyperbenchError(f"engine {cls.__name__}: {_first_error(e)}") from None


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown option"
    return f"{loc}: {msg}" if loc else msg


def load_yaml(path: Path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise HyperbenchError(f"cannot read config {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise HyperbenchError(f"invalid YAML in {path}{where}") from None
    if not isinstance(data, dict):
        raise HyperbenchError(f"config {path} must be a mapping at the top level")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def build(model_cls: type[BaseModel], file_data: dict, cli_data: dict) -> BaseModel:
    """Validate file data overlaid by CLI data; validation errors become one-line user errors."""
    merged = deep_merge(_without_replaced_alternatives(model_cls, file_data, cli_data), cli_data)
    try:
        return model_cls(**merged)
    except ValidationError as e:
        raise HyperbenchError(f"invalid config: {_first_error(e)}") from None


def _without_replaced_alternatives(model_cls: type[BaseModel], file_data: dict, cli_data: dict) -> dict:
    """The file's data less what a CLI flag replaces though it has another name: `--rate` on the
    command line replaces the file's `concurrency` (CLI > file), instead of clashing with it."""
    out = dict(file_data)
    for section, field in model_cls.model_fields.items():
        group = getattr(field.annotation, "alternatives", ())
        given = cli_data.get(section) if isinstance(cli_data.get(section), dict) else {}
        if group and isinstance(out.get(section), dict) and any(k in given for k in group):
            out[section] = {k: v for k, v in out[section].items() if k not in group or k in given}
    return out


def jsonable(obj: Any) -> Any:
    """pydantic dump that keeps inf as the string 'inf' so JSON stays standard."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    if isinstance(obj, float) and math.isinf(obj):
        return "inf"
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [jsonable(v) for v in obj]
    return obj
