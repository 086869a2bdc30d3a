"""One measurement: a configuration scored on a set of task items, quality and speed from the
same requests.

Quality goes through the score path (lm-eval's task: its prompts, few-shot set-up, filters and
metric; `EngineLM` on the wire). `StreamingLM` sends each generate_until request streamed
through the common adapter, so the very requests that are scored also give TTFT, TPOT and E2E,
measured as `bench` measures them (harness/bench/metrics.py). Every answer and its timing is appended
to the measurement's requests.jsonl as it arrives: an interrupted measurement resumes from it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.bench import metrics
from harness.adapter import GenRequest, RequestRecord
from harness.errors import EngineError, HyperbenchError
from harness.score.lm import EngineLM, wire_params

log = logging.getLogger("hyperbench.tune")


def context_id(context: str) -> str:
    return hashlib.sha256(context.encode()).hexdigest()[:16]


class StreamingLM(EngineLM):
    """EngineLM whose generate_until requests are streamed and timed."""

    async def _generate(self, client, args, occurrence: int) -> tuple[str, dict]:
        context, gen_kwargs = args
        body, ignored = wire_params(gen_kwargs)
        if occurrence and "seed" in body:  # a task's repeats of one prompt: distinct, reproducible
            body["seed"] = int(body["seed"]) + occurrence
        max_tokens = body.pop("max_tokens")
        prompt: str | list[int] = context
        if self.tokenizer is not None:  # keep the newest context that fits (as EngineLM does)
            ids = self.tokenizer(context).input_ids
            room = self.max_length - max_tokens
            if len(ids) > room > 0:
                prompt = ids[-room:]
        req = GenRequest(prompt=prompt, max_tokens=max_tokens, sampling=body)
        attempt = 0
        while True:
            rec = RequestRecord(request_id=0, point="tune")
            wall = time.time()
            await client.generate(req, rec)
            if rec.ok:
                break
            attempt += 1
            refused = rec.error.startswith("HTTP 4") and not rec.error.startswith("HTTP 429")
            if refused:
                raise EngineError(f"the engine refused a request: {rec.error}")
            if attempt > self.retries:
                raise EngineError(f"engine request failed after {attempt} tries: {rec.error}")
            await asyncio.sleep(0.5 * 2**attempt)
        text = rec.text
        for stop in body.get("stop", []):  # a server may leave the stop string in
            text = text.split(stop)[0]
        self.tokens["generate_until"] += int(rec.output_tokens or 0)
        e2e = metrics.e2e(rec)
        return text, {
            "context": context_id(context), "params": {"max_tokens": max_tokens, **body},
            "ignored": ignored, "finish_reason": rec.finish_reason,
            "prompt_tokens": rec.prompt_tokens, "completion_tokens": rec.output_tokens,
            "ttft_ms": _ms(metrics.ttft(rec)), "tpot_ms": _ms(metrics.tpot(rec)), "e2e_ms": _ms(e2e),
            "wall": [wall, wall + (e2e or 0.0)],
        }


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000.0


@dataclass
class Measurement:
    metrics: dict[str, dict]  # name -> {mean, sem, n}
    items: list[dict]  # per item: doc_id, score, ttft_ms, tpot_ms, e2e_ms, output_tokens
    requests: dict = field(default_factory=dict)  # sent / cached
    elapsed_s: float = 0.0

    def raw(self, names: list[str]) -> dict:
        """Ax's raw data: (mean, SEM) where a SEM is known, the mean alone where it is not (Ax
        then infers the noise); the same form for a metric in every trial, as Ax needs."""
        out = {}
        for name in names:
            m = self.metrics[name]
            out[name] = float(m["mean"]) if m.get("sem") is None else (float(m["mean"]), float(m["sem"]))
        return out


@dataclass
class TaskSetup:
    """What every measurement shares: the prepared task, its metric, the LM's settings."""

    prepared: object  # harness.score.tasks.Prepared
    task: str
    metric: str  # lm-eval metric name, e.g. exact_match
    filter: str  # lm-eval filter name, e.g. strict-match ("none" when the task has none)
    num_fewshot: int | None
    fewshot_seed: int
    tokenizer: object
    concurrency: int
    timeout_s: float
    max_length: int | None = None


def measure(setup: TaskSetup, endpoint, folder: Path, gen_kwargs: dict, indices: list[int]) -> Measurement:
    """Score `indices` of the task with `gen_kwargs` against `endpoint`; requests and per-item
    results go to `folder`. Raises EngineError when requests fail."""
    import lm_eval

    from harness.score.cache import RequestCache

    folder.mkdir(parents=True, exist_ok=True)
    # prompts longer than the tokenizer's nominal length are cut by StreamingLM: not news per item
    logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)
    cache = RequestCache(folder / "requests.jsonl")
    lm = StreamingLM(endpoint.base_url, endpoint.model, endpoint.api_key, concurrency=setup.concurrency,
                     tokenizer=setup.tokenizer, max_length=setup.max_length or 2048, cache=cache,
                     timeout=setup.timeout_s, progress=False)
    t0 = time.perf_counter()
    with _quiet_lm_eval():
        try:
            results = lm_eval.simple_evaluate(
                model=lm, tasks=[setup.task], task_manager=setup.prepared.tm,
                num_fewshot=setup.num_fewshot, samples={setup.task: list(indices)},
                gen_kwargs=dict(gen_kwargs), bootstrap_iters=0, log_samples=True,
                fewshot_random_seed=setup.fewshot_seed,
            )  # fmt: skip
        except (HyperbenchError, KeyboardInterrupt):
            raise
        except Exception as e:  # lm-eval wraps nothing: one line, the cause kept
            raise EngineError(f"lm-eval failed: {type(e).__name__}: {str(e).strip()[:300]}") from e
    elapsed = time.perf_counter() - t0
    items = _items(setup, results, folder / "requests.jsonl")
    _write_items(folder / "items.jsonl", items)
    return Measurement(metrics=summarize(items), items=items, requests=cache.stats().get("generate_until", {}),
                       elapsed_s=elapsed)


class _quiet_lm_eval:
    """lm-eval logs its set-up at INFO/WARNING for every call: one trial, one line is ours."""

    def __enter__(self):
        from harness.score.tasks import quiet_git_hash

        self.git = quiet_git_hash()  # and no `fatal: not a git repository` per trial outside a checkout
        self.git.__enter__()
        self.loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "lm_eval.evaluator")]
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for lg, lv in zip(self.loggers, self.levels):
            lg.setLevel(lv)
        self.git.__exit__(*exc)


def _items(setup: TaskSetup, results: dict, requests_path: Path) -> list[dict]:
    timing = {}
    for line in requests_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("kind") == "generate_until" and rec.get("context"):
            timing[rec["context"]] = rec
    out = []
    for s in results["samples"][setup.task]:
        if s.get("filter", "none") != setup.filter:
            continue
        value = s.get(setup.metric)
        if value is None:
            raise HyperbenchError(f"task {setup.task} reports no per-item {setup.metric!r}")
        args = s.get("arguments") or []
        first = args[0] if args else None
        ctx = first[0] if isinstance(first, (list, tuple)) and first else None
        t = timing.get(context_id(ctx)) if isinstance(ctx, str) else None
        out.append({
            "doc_id": int(s["doc_id"]), "score": float(value),
            "ttft_ms": t and t.get("ttft_ms"), "tpot_ms": t and t.get("tpot_ms"),
            "e2e_ms": t and t.get("e2e_ms"), "output_tokens": t and t.get("completion_tokens"),
            "wall": t and t.get("wall"), "finish_reason": t and t.get("finish_reason"),
            "response": (s.get("filtered_resps") or [None])[0],
        })  # fmt: skip
    out.sort(key=lambda r: r["doc_id"])
    return out


def _write_items(path: Path, items: list[dict]) -> None:
    from harness.results import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(i) + "\n" for i in items))


def _mean_sem(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=float)
    n = arr.size
    if n == 0:
        return {"mean": None, "sem": None, "n": 0}
    sem = float(arr.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return {"mean": float(arr.mean()), "sem": sem, "n": int(n)}


def summarize(items: list[dict]) -> dict[str, dict]:
    """Trial metrics from per-item records, each with its standard error.

    accuracy: mean item score; for 0/1 scores the SEM is sqrt(p(1-p)/n) with p = (k+1)/(n+2),
    which is never 0 (0 of 20 right does not mean the accuracy is known exactly). Latencies: mean
    over requests, SEM over requests. output_tok_s: output tokens over the wall time the requests
    were in flight (the union of their intervals, so a resumed trial's pause does not count); an
    aggregate with no per-request spread, so no SEM (Ax infers its noise)."""
    scores = [i["score"] for i in items]
    acc = _mean_sem(scores)
    if acc["n"] and set(scores) <= {0.0, 1.0}:
        n, k = acc["n"], sum(scores)
        p = (k + 1) / (n + 2)
        acc["sem"] = math.sqrt(p * (1 - p) / n)
    out = {"accuracy": acc}
    for name in ("ttft_ms", "tpot_ms", "e2e_ms"):
        out[name] = _mean_sem([i[name] for i in items if i.get(name) is not None])
    tokens = sum(int(i.get("output_tokens") or 0) for i in items)
    busy = _union([tuple(i["wall"]) for i in items if i.get("wall")])
    out["output_tok_s"] = {"mean": tokens / busy if busy > 0 else None, "sem": None, "n": len(items)}
    return out


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total
