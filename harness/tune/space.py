"""The search space: each engine's declared sampling parameters intersected with the request,
plus engine options that need an engine restart (a second kind of parameter).

`--params temperature,top_p=0.5:1,top_k,num_speculative_tokens=1:6,attn=sdpa|eager`: a name
alone takes its default range; `lo:hi` a numeric range; `a|b|c` a set of choices. Every error is
a one-line HyperbenchError raised before any engine starts.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HyperbenchError


@dataclass(frozen=True)
class SamplingDefault:
    default: tuple[float, float]  # the range searched when the user gives none
    limits: tuple[float, float]  # what the wire contract accepts
    integer: bool
    neutral: float  # the value that turns the parameter off (the baseline's, unless set)


# ranges of the issue: temperature 0-1.5, top_p 0.05-1, top_k 0 (off)-100, min_p 0-0.3,
# repetition penalty 1-1.3
SAMPLING: dict[str, SamplingDefault] = {
    "temperature": SamplingDefault((0.0, 1.5), (0.0, 5.0), False, 1.0),
    "top_p": SamplingDefault((0.05, 1.0), (0.01, 1.0), False, 1.0),
    "top_k": SamplingDefault((0, 100), (0, 100_000), True, 0),
    "min_p": SamplingDefault((0.0, 0.3), (0.0, 1.0), False, 0.0),
    "repetition_penalty": SamplingDefault((1.0, 1.3), (0.5, 3.0), False, 1.0),
}

# default ranges of engine options (others need an explicit lo:hi or a|b choice)
ENGINE_RANGES: dict[str, tuple[int, int]] = {
    "num_speculative_tokens": (1, 8),
    "max_batch_size": (1, 64),
    "max_num_seqs": (1, 256),
    "n_batch": (32, 2048),
}
# engine options that are not a serving setting one could tune
NOT_TUNABLE = {"kind", "model", "served_model_name", "api_key"}
# an engine option that does nothing unless another has a value: (other, test, why)
REQUIRES: dict[str, tuple[str, typing.Callable[[Any], bool], str]] = {
    "num_speculative_tokens": ("speculative", lambda v: v not in (None, "none"), "--speculative"),
    "ngram_min": ("speculative", lambda v: v == "ngram", "--speculative ngram"),
    "ngram_max": ("speculative", lambda v: v == "ngram", "--speculative ngram"),
}


@dataclass
class Param:
    name: str
    kind: str  # "sampling" | "engine"
    type: str  # "float" | "int" | "choice"
    low: float | None = None
    high: float | None = None
    choices: list | None = None
    baseline: Any = None

    def ax(self):
        from ax.api.configs import ChoiceParameterConfig, RangeParameterConfig

        if self.type == "choice":
            kinds = {type(c) for c in self.choices}
            ptype = {bool: "bool", int: "int", float: "float"}.get(kinds.pop(), "str") if len(kinds) == 1 else "str"
            values = self.choices if ptype != "str" else [str(c) for c in self.choices]
            return ChoiceParameterConfig(name=self.name, values=values, parameter_type=ptype,
                                         is_ordered=ptype in ("int", "float"))
        return RangeParameterConfig(name=self.name, bounds=(self.low, self.high), parameter_type=self.type)

    def describe(self) -> str:
        if self.type == "choice":
            return " | ".join(str(c) for c in self.choices)
        return f"{self.low:g} to {self.high:g}" + (" (0: off)" if self.name == "top_k" and self.low == 0 else "")

    def contains(self, value) -> bool:
        if self.type == "choice":
            return value in self.choices or str(value) in [str(c) for c in self.choices]
        return isinstance(value, (int, float)) and self.low <= value <= self.high


@dataclass
class SearchSpace:
    params: list[Param]
    fixed: dict[str, Any] = field(default_factory=dict)  # sampling values every trial sends

    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def by_kind(self, kind: str) -> list[Param]:
        return [p for p in self.params if p.kind == kind]

    def baseline(self) -> dict[str, Any]:
        return {p.name: p.baseline for p in self.params}

    def split(self, values: dict[str, Any]) -> tuple[dict, dict]:
        """A parameterization -> (sampling values incl. the fixed ones, engine overrides)."""
        kinds = {p.name: p.kind for p in self.params}
        sampling = dict(self.fixed)
        engine = {}
        for k, v in values.items():
            (engine if kinds.get(k) == "engine" else sampling)[k] = v
        return sampling, engine

    def to_json(self) -> dict:
        return {"params": [p.__dict__ for p in self.params], "fixed": self.fixed}

    @classmethod
    def from_json(cls, data: dict) -> SearchSpace:
        return cls([Param(**p) for p in data["params"]], dict(data.get("fixed") or {}))


def gen_kwargs(sampling: dict[str, Any], seed: int, max_gen_toks: int | None) -> dict[str, Any]:
    """Sampling values -> lm-eval generation kwargs (EngineLM maps them onto the wire).

    top_k 0 means off and is left out (every engine's default is off when it is absent); a
    temperature of 0 is greedy, so do_sample follows the temperature. Every request carries the
    run's seed: trials differ only by their parameters (common random numbers)."""
    kw: dict[str, Any] = {}
    for name, value in sampling.items():
        if name == "top_k":
            if int(value) > 0:
                kw["top_k"] = int(value)
        elif name in SAMPLING:
            kw[name] = float(value)
    temperature = kw.get("temperature")
    if temperature is not None:
        kw["do_sample"] = temperature > 0
    kw["seed"] = int(seed)
    if max_gen_toks is not None:
        kw["max_gen_toks"] = int(max_gen_toks)
    return kw


# ---------------------------------------------------------------------------- building


def build_space(requested: list[str], engine, baseline: dict[str, Any]) -> SearchSpace:
    """The search space for `engine` (a typed engine config): its declared sampling parameters
    and its own options, intersected with `requested`."""
    from backends import available_engines

    if not [r for r in requested if r.strip()]:
        raise HyperbenchError("empty search space: --params names no parameter (e.g. temperature,top_p)")
    supported = [p for p in engine.capabilities().sampling_params if p in SAMPLING]
    fields = type(engine).model_fields
    others = {k: c for k, c in available_engines().items() if k != engine.kind}
    params: list[Param] = []
    for item in requested:
        name, _, rng = item.strip().partition("=")
        name = name.strip()
        if not name:
            continue
        if any(p.name == name for p in params):
            raise HyperbenchError(f"--params names {name} twice")
        if name in SAMPLING:
            if name not in supported:
                raise HyperbenchError(f"{name} is not a sampling parameter engine {engine.kind} honours "
                                      f"with these options (it honours: {', '.join(supported)})")
            params.append(_sampling_param(name, rng.strip(), baseline))
        elif name in fields and name not in NOT_TUNABLE:
            params.append(_engine_param(name, rng.strip(), engine, baseline))
        else:
            owners = sorted(k for k, c in others.items() if name in c.model_fields and name not in NOT_TUNABLE)
            where = f" (it is an option of engine {', '.join(owners)})" if owners else ""
            raise HyperbenchError(f"unknown parameter {name!r} for engine {engine.kind}{where}: tune "
                                  f"{', '.join(supported)} or one of its options "
                                  f"({', '.join(_tunable_fields(engine))})")
    if not params:
        raise HyperbenchError("empty search space: --params names no parameter (e.g. temperature,top_p)")
    fixed = {}
    for name, value in baseline.items():
        if any(p.name == name for p in params):
            continue
        if name in SAMPLING:
            if name not in supported:
                raise HyperbenchError(f"--baseline {name}: engine {engine.kind} does not honour {name}")
            value = _number(name, value, "--baseline")
            _check_limits(name, value, "--baseline")
            fixed[name] = int(value) if SAMPLING[name].integer else value
        else:
            raise HyperbenchError(f"--baseline {name}: not a sampling parameter nor a tuned engine "
                                  f"option (set engine options with their own flag)")
    return SearchSpace(params, fixed)


def _tunable_fields(engine) -> list[str]:
    return [n for n in type(engine).model_fields if n not in NOT_TUNABLE]


def _number(name: str, value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HyperbenchError(f"{what} {name}={value!r}: not a number")
    return float(value)


def _check_limits(name: str, value: float, what: str) -> None:
    lo, hi = SAMPLING[name].limits
    if not lo <= value <= hi:
        raise HyperbenchError(f"{what} {name}={value:g} is outside what engines accept ({lo:g} to {hi:g})")


def _range(name: str, text: str) -> tuple[float, float]:
    lo, sep, hi = text.partition(":")
    try:
        low, high = float(lo), float(hi)
    except ValueError:
        raise HyperbenchError(f"--params {name}={text}: a range is lo:hi (e.g. {name}=0.1:1)") from None
    if not sep:
        raise HyperbenchError(f"--params {name}={text}: a range is lo:hi (e.g. {name}=0.1:1)")
    if not low < high:
        raise HyperbenchError(f"--params {name}={text}: empty range (lo must be below hi)")
    return low, high


def _sampling_param(name: str, rng: str, baseline: dict) -> Param:
    d = SAMPLING[name]
    low, high = _range(name, rng) if rng else d.default
    for v in (low, high):
        _check_limits(name, v, "--params")
    base = _number(name, baseline.get(name, d.neutral), "--baseline")
    p = Param(name, "sampling", "int" if d.integer else "float", int(low) if d.integer else low,
              int(high) if d.integer else high, baseline=int(base) if d.integer else float(base))
    if d.integer and p.low >= p.high:
        raise HyperbenchError(f"--params {name}={rng}: empty range of integers")
    _check_baseline(p)
    return p


def _engine_param(name: str, rng: str, engine, baseline: dict) -> Param:
    fld = type(engine).model_fields[name]
    tp = fld.annotation
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # Optional[int] -> int
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else tp
    if name in REQUIRES:
        other, ok, flag = REQUIRES[name]
        if not ok(getattr(engine, other)):
            raise HyperbenchError(f"{name} changes nothing on engine {engine.kind} without {flag}")
    current = baseline.get(name, getattr(engine, name))
    if "|" in rng or (not rng and (typing.get_origin(tp) is typing.Literal or tp is bool)):
        if rng:
            from harness.tune.config import _typed

            choices = [_typed(c.strip()) for c in rng.split("|") if c.strip()]
        elif tp is bool:
            choices = [False, True]
        else:
            choices = list(typing.get_args(tp))
        if len(set(map(str, choices))) < 2:
            raise HyperbenchError(f"--params {name}={rng}: give two or more choices (a|b)")
        p = Param(name, "engine", "choice", choices=choices, baseline=current)
    elif tp in (int, float):
        low, high = _range(name, rng) if rng else ENGINE_RANGES.get(name, (None, None))
        if low is None:
            raise HyperbenchError(f"--params {name}: give its range as {name}=lo:hi")
        if tp is int:
            low, high = int(low), int(high)
            if low >= high:
                raise HyperbenchError(f"--params {name}={rng}: empty range of integers")
        p = Param(name, "engine", "int" if tp is int else "float", low, high, baseline=current)
    else:
        raise HyperbenchError(f"--params {name}: choose its values as {name}=a|b|c")
    for value in ([p.low, p.high] if p.type != "choice" else p.choices):
        _validate(engine, name, value)
    if current is None:
        raise HyperbenchError(f"--params {name}: it has no value for the baseline trial: set one "
                              f"with --baseline {name}=... or its own flag")
    _check_baseline(p)
    return p


def _validate(engine, name: str, value) -> None:
    from pydantic import ValidationError

    from harness.config import _first_error

    try:
        type(engine)(**{**engine.model_dump(), name: value})
    except ValidationError as e:
        raise HyperbenchError(f"--params {name}: {value!r} is not valid for engine {engine.kind} "
                              f"({_first_error(e)})") from None


def _check_baseline(p: Param) -> None:
    if not p.contains(p.baseline):
        raise HyperbenchError(f"the baseline's {p.name}={p.baseline} is outside the searched range "
                              f"{p.describe()}: widen the range or set --baseline {p.name}=...")
    if p.type == "choice" and p.baseline not in p.choices:  # '8' given for 8: use the choice itself
        p.baseline = next(c for c in p.choices if str(c) == str(p.baseline))
