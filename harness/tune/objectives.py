"""What a trial measures, and what the search optimizes: objectives and outcome constraints.

Every trial measures every metric below (quality from the task's per-item scores, speed from the
same streamed requests), so any of them can be an objective, a constraint, or a tracking metric.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import HyperbenchError


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    maximize: bool  # the direction that is better
    unit: str
    bounds: tuple[float | None, float | None]  # values the metric can take
    low_reachable: bool = True  # False: always strictly above bounds[0] (a latency is never 0)


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", "accuracy", True, "", (0.0, 1.0)),
    Metric("tpot_ms", "TPOT", False, "ms", (0.0, None), False),
    Metric("ttft_ms", "TTFT", False, "ms", (0.0, None), False),
    Metric("e2e_ms", "E2E latency", False, "ms", (0.0, None), False),
    Metric("output_tok_s", "output tok/s", True, "tok/s", (0.0, None), False),
)}  # fmt: skip
SPEED = ("tpot_ms", "ttft_ms", "e2e_ms", "output_tok_s")
ALIASES = {"acc": "accuracy", "quality": "accuracy", "tpot": "tpot_ms", "ttft": "ttft_ms",
           "e2e": "e2e_ms", "latency": "e2e_ms", "throughput": "output_tok_s", "tok_s": "output_tok_s",
           "output_tps": "output_tok_s"}  # fmt: skip


def metric_name(text: str) -> str:
    name = ALIASES.get(text.strip().lower(), text.strip().lower())
    if name not in METRICS:
        raise HyperbenchError(f"unknown metric {text.strip()!r}: use {', '.join(METRICS)} "
                              "(or tpot, ttft, e2e)")
    return name


@dataclass(frozen=True)
class Objective:
    metric: str
    maximize: bool

    def ax(self) -> str:
        return ("" if self.maximize else "-") + self.metric

    def better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str  # "<=" | ">="
    bound: float

    def ax(self) -> str:
        return f"{self.metric} {self.op} {self.bound!r}"

    def ok(self, value: float | None) -> bool:
        if value is None:
            return False
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


def parse_objectives(items: list[str]) -> list[Objective]:
    out: list[Objective] = []
    for item in items:
        text = item.strip()
        if not text:
            continue
        minimize = text.startswith("-")
        name = metric_name(text.lstrip("+-"))
        m = METRICS[name]
        if minimize == m.maximize:
            how = "maximize it: drop the '-'" if m.maximize else f"minimize it: -{name}"
            raise HyperbenchError(f"objective {text!r}: {m.label} is better "
                                  f"{'higher' if m.maximize else 'lower'}, {how}")
        if any(o.metric == name for o in out):
            raise HyperbenchError(f"objective {name} is named twice")
        out.append(Objective(name, m.maximize))
    if not out:
        raise HyperbenchError("no objectives: give --objectives, e.g. accuracy,-tpot")
    return out


_CONSTRAINT = re.compile(r"^\s*([A-Za-z_]+)\s*(<=|>=|<|>|=)\s*([-+0-9.eE]+)\s*$")


# quality metrics that are proportions (so accuracy >= 1.2 is impossible); others are unbounded
PROPORTIONS = ("exact_match", "acc", "acc_norm", "bleu_acc", "rouge1_acc", "rouge2_acc", "rougeL_acc")


def parse_constraints(items: list[str], objectives: list[Objective],
                      quality_metric: str | None = None) -> list[Constraint]:
    """`quality_metric`: the task metric behind 'accuracy' (None: the default, a proportion)."""
    proportion = quality_metric is None or quality_metric.split(",")[0] in PROPORTIONS
    out: list[Constraint] = []
    for item in items:
        if not item.strip():
            continue
        m = _CONSTRAINT.match(item)
        if not m:
            raise HyperbenchError(f"constraint {item.strip()!r}: write metric<=value or metric>=value, "
                                  "e.g. tpot_ms<=40")
        name, op, text = metric_name(m.group(1)), m.group(2), m.group(3)
        if op not in ("<=", ">="):
            raise HyperbenchError(f"constraint {item.strip()!r}: use <= or >= (Ax's outcome constraints)")
        try:
            bound = float(text)
        except ValueError:
            raise HyperbenchError(f"constraint {item.strip()!r}: {text!r} is not a number") from None
        c = Constraint(name, op, bound)
        if name != "accuracy" or proportion:
            _check_possible(c, item.strip())
        if len(objectives) == 1 and objectives[0].metric == name:
            raise HyperbenchError(f"constraint {item.strip()!r} is on the objective itself: constrain "
                                  "another metric, or make it a second objective")
        out.append(c)
    return out


def _check_possible(c: Constraint, text: str) -> None:
    """A bound that no value of the metric can meet (accuracy >= 1.2, tpot_ms <= 0)."""
    m = METRICS[c.metric]
    lo, hi = m.bounds
    unit = m.unit
    if c.op == "<=" and lo is not None and (c.bound < lo or (c.bound == lo and not m.low_reachable)):
        how = "never below" if m.low_reachable else "always above"
        raise HyperbenchError(f"impossible constraint {text!r}: {c.metric} is {how} {lo:g}"
                              f"{' ' + unit if unit else ''}")
    if c.op == ">=" and hi is not None and c.bound > hi:
        raise HyperbenchError(f"impossible constraint {text!r}: {c.metric} is at most {hi:g}")


def feasible(values: dict[str, float | None], constraints: list[Constraint]) -> bool:
    return all(c.ok(values.get(c.metric)) for c in constraints)


def pareto_front(points: list[tuple[int, dict]], objectives: list[Objective]) -> list[int]:
    """Indices of the points no other point dominates (on observed means)."""
    front = []
    for i, a in points:
        dominated = False
        for j, b in points:
            if j == i:
                continue
            no_worse = all(not o.better(a[o.metric], b[o.metric]) for o in objectives)
            better = any(o.better(b[o.metric], a[o.metric]) for o in objectives)
            if no_worse and better:
                dominated = True
                break
        if not dominated:
            front.append(i)
    return front
