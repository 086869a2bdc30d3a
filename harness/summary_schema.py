"""summary.json as typed models: one per run kind (bench points, score tasks, tune trials, agree
engines and pairs), with the schema version that every summary carries.

The jobs still build their summary as a dict (it is written after every point, as the run goes);
RunFolder checks each summary.json write against the model of its kind, so a job cannot write a
shape its readers do not know, and readers (compare, report) get the model back instead of
walking `.get` chains. The models name the fields the readers use and allow the others: a field
added to a summary is kept as written, and older folders of the same version still read.

Schema 1 is the only version so far: every summary hyperbench has written carries it (the run
folders committed under benchmarks/gpu/results/ among them). A summary of another version, or
without one (not hyperbench's), is refused in one line naming it: read with this version's
meaning it would look like an empty run, and `report` would overwrite its report.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from harness.errors import HyperbenchError

SCHEMA_VERSION = 1

Number = float | None


class _Open(BaseModel):
    """Fields the readers use are typed; any other field is kept as written (a job may add one)."""

    model_config = ConfigDict(extra="allow")


class Stat(_Open):
    """One latency's distribution over a point's requests (milliseconds)."""

    mean: Number = None
    std: Number = None
    min: Number = None
    max: Number = None
    p50: Number = None
    p90: Number = None
    p99: Number = None


class BenchPoint(_Open):
    """One sweep point: a concurrency or a request rate (one of the two), maybe one repeat of it."""

    concurrency: int | None = None
    rate: float | Literal["inf"] | None = None  # "inf": all requests at once (JSON has no inf)
    repeat: int | None = None
    requests: int = 0
    completed: int = 0
    failed: int = 0
    duration_s: Number = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    request_throughput: Number = None
    output_throughput: Number = None
    total_token_throughput: Number = None
    ttft_ms: Stat | None = None
    tpot_ms: Stat | None = None
    itl_ms: Stat | None = None
    e2e_ms: Stat | None = None
    first_error: str | None = None
    partial: bool = False  # cut short by a stop: over its finished requests only
    planned_requests: int | None = None
    gpu: dict[str, Any] | None = None
    roofline: dict[str, Any] | None = None
    speculative: dict[str, Any] | None = None


class Summary(_Open):
    """What every run kind's summary.json says."""

    schema_version: int = SCHEMA_VERSION
    kind: str
    status: Literal["running", "complete", "incomplete", "failed"] | None = None
    reason: str | None = None
    started: str | None = None
    finished: str | None = None
    engine: str | None = None  # the engine kind, or "external" for an engine someone else runs
    model: str | None = None
    engine_info: dict[str, Any] | None = None  # the engine's own view (GET /v1/engine)


class BenchSummary(Summary):
    kind: Literal["bench"] = "bench"
    points: list[BenchPoint] = []
    served_model: str | None = None
    max_rate: dict[str, Any] | None = None
    speculative_baseline: dict[str, Any] | None = None


class Metric(_Open):
    value: float | str | None = None  # lm-eval's "N/A" is kept as it said it
    stderr: float | str | None = None


class ScoreTask(_Open):
    """One task (or group) of a score run: its metrics, each a value with its standard error."""

    metrics: dict[str, Metric] = {}
    subtasks: list[str] = []  # a group's members
    n: int | None = None


class ScoreSummary(Summary):
    kind: Literal["score"] = "score"
    tasks: dict[str, ScoreTask] = {}
    groups: dict[str, ScoreTask] = {}


class TrialMetric(_Open):
    mean: Number = None
    sem: Number = None


class TuneTrial(_Open):
    index: int | None = None
    status: str | None = None  # completed | failed | running
    params: dict[str, Any] = {}
    metrics: dict[str, TrialMetric] = {}
    error: str | None = None


class TuneSummary(Summary):
    kind: Literal["tune"] = "tune"
    trials: list[TuneTrial] = []
    selection: dict[str, Any] | None = None
    holdout: dict[str, Any] | None = None


class AgreeEngine(_Open):
    label: str
    kind: str
    status: str


class AgreePair(_Open):
    """One engine against the reference: greedy divergence, prompt logprobs, next-token KL."""

    compared_by: Literal["ids", "text"] | None = None
    greedy: dict[str, Any] = {}
    prompt_logprobs: dict[str, Any] = {}
    next_token: dict[str, Any] = {}


class AgreeSummary(Summary):
    kind: Literal["agree"] = "agree"
    reference: str | None = None
    engines: list[AgreeEngine] = []
    agreement: dict[str, AgreePair] = {}


class StudySummary(Summary):
    kind: Literal["study"] = "study"


SUMMARIES: dict[str, type[Summary]] = {"bench": BenchSummary, "score": ScoreSummary, "tune": TuneSummary,
                                       "agree": AgreeSummary, "study": StudySummary}


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return f"{where}: {err['msg']}"


def parse_summary(data: Any, where: str = "summary.json") -> Summary:
    """The typed summary; a one-line HyperbenchError for another schema version (naming it) or a
    summary that is not of its kind's shape. A summary without a kind is bench's (bench wrote
    none before schema 1 carried it)."""
    if not isinstance(data, dict):
        raise HyperbenchError(f"{where} is not a run summary")
    version = data.get("schema_version")
    if version is None:
        raise HyperbenchError(f"{where} has no schema_version: not a hyperbench run summary (this "
                              f"hyperbench reads schema {SCHEMA_VERSION})")
    if version != SCHEMA_VERSION:
        raise HyperbenchError(f"{where} has schema_version {version!r}; this hyperbench reads "
                              f"{SCHEMA_VERSION}: use the hyperbench version that wrote it")
    model = SUMMARIES.get(data.get("kind", "bench"), Summary)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise HyperbenchError(f"{where} is not a {data.get('kind', 'bench')} summary of schema "
                              f"{SCHEMA_VERSION}: {_first_error(e)}") from None
