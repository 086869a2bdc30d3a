"""`hyperbench score`: bring an engine up, evaluate lm-eval tasks through `EngineLM`, write a run folder.

Run folder (beside bench's layout): config.json, env.json, engine.log, tasks/ (the generated task
YAMLs), requests.jsonl (every engine answer, appended as it comes: the resume cache),
samples/<task>.jsonl (lm-eval's per-item records), lm_eval_results.json, lm_eval.log, summary.json
(kind "score", canonical), report.md.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from harness.errors import HyperbenchError
from harness.results import RunFolder, atomic_write_text
from harness.run_lifecycle import close_summary, create_run, interruption, reopen, write_resolved
from harness.score.config import ScoreConfig

log = logging.getLogger("hyperbench.score")


def run(cfg: ScoreConfig) -> RunFolder:
    if cfg.output.resume is not None:
        run_dir, summary = RunFolder.open_to_resume(cfg.output.resume, "score")
        saved = run_dir.read_json("config.json")
        saved.get("output", {}).pop("resume", None)
        cfg = ScoreConfig(**saved)
        from harness.launchers.process import stop_orphan

        if stopped := stop_orphan(run_dir.path):  # an engine an older harness left serving
            summary.setdefault("resume_notes", []).append(stopped)
        reopen(summary)
        return _score(cfg, run_dir, summary)
    engine = cfg.engine_config()  # validates engine options before anything is written
    engine.check()
    if not cfg.score.tasks and cfg.score.perplexity is None:
        raise HyperbenchError("no tasks to run: give --tasks (e.g. mmlu,gsm8k) or --perplexity FILE")
    run_dir, summary = create_run(cfg, engine, "score", prefix="score-")
    return _score(cfg, run_dir, summary, fresh=True)


def _check_max_length(spec, prepared) -> None:
    """A --max-length that leaves a generative task no room for its prompt, refused before an
    engine starts (it used to show only in the first request's error)."""
    from harness.score.lm import DEFAULT_MAX_GEN_TOKS

    if spec.max_length is None:
        return
    for task, kw in prepared.gen_kwargs.items():
        toks = spec.gen_kwargs.get("max_gen_toks", kw.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        if toks >= spec.max_length:
            raise HyperbenchError(f"--max-length {spec.max_length} leaves task {task} no room for a prompt: it "
                                  f"generates up to {toks} tokens (give a larger --max-length, or --gen-kwargs "
                                  "max_gen_toks=N below it)")


def _score(cfg: ScoreConfig, run_dir: RunFolder, summary: dict, fresh: bool = False) -> RunFolder:
    from harness.engine_session import describe_engine, engine_up, resolve_model_path
    from harness.score.tasks import LOGLIKELIHOOD_TYPES, load, prepare, unsafe_tasks

    spec = cfg.score
    engine = cfg.engine_config()
    summary["status"] = "running"
    try:
        prepared = prepare(spec.tasks, spec.data_dir, run_dir.path / "tasks", spec.perplexity,
                           include_paths=spec.include_path, num_fewshot=spec.num_fewshot)
        _check_max_length(spec, prepared)
        unsafe = unsafe_tasks(prepared)
        if unsafe and not spec.allow_code_execution:
            raise HyperbenchError(f"{', '.join(unsafe)} runs the model's generated code on this machine: "
                                  "add --allow-code-execution to confirm (lm-eval's confirm_run_unsafe_code)")
        loglikelihood = sorted(t for t, kind in prepared.output_types.items() if kind in LOGLIKELIHOOD_TYPES)
        if loglikelihood and cfg.target.launcher_class.starts_engine and not engine.capabilities().prompt_logprobs:
            raise HyperbenchError(f"the {engine.kind} engine cannot score loglikelihood tasks "
                                  f"({', '.join(loglikelihood)}): its prompt logprobs (echo) are not "
                                  "right; run generative tasks (gsm8k, truthfulqa_gen) on it")
        with _lm_eval_log(run_dir.file("lm_eval.log")):
            load(prepared, spec.data_dir)  # every data problem before an engine starts
        model_path = resolve_model_path(cfg, engine)
        tokenizer = _tokenizer(cfg, model_path)
        if tokenizer[1] is None and "loglikelihood_rolling" in prepared.output_types.values():
            raise HyperbenchError("perplexity (loglikelihood_rolling) needs the served model's tokenizer "
                                  "for its context windows: give --tokenizer DIR")
    except HyperbenchError:
        if fresh:  # a user error before anything ran: leave no empty run folder behind
            shutil.rmtree(run_dir.path, ignore_errors=True)
        raise
    write_resolved(run_dir, cfg, engine)
    summary.update(tasks_requested=spec.tasks, data_dir=str(spec.data_dir) if spec.data_dir else None,
                   notes=prepared.notes)
    run_dir.write_json("summary.json", summary)
    try:
        with engine_up(cfg, engine, model_path, run_dir.file("engine.log")) as (endpoint, launcher):
            describe_engine(summary, endpoint, launcher, engine)
            run_dir.write_json("summary.json", summary)  # the precision, before any item runs
            lm = _make_lm(cfg, endpoint, tokenizer, run_dir)
            summary["lm"] = {"tokenizer": lm.tokenizer_source, "max_length": lm.max_length,
                             "concurrency": lm.concurrency}
            if any(t in LOGLIKELIHOOD_TYPES for t in prepared.output_types.values()):
                lm.check_prompt_logprobs()
            t0 = time.perf_counter()
            with _lm_eval_log(run_dir.file("lm_eval.log")):
                results = _evaluate(cfg, lm, prepared, run_dir)
            elapsed = time.perf_counter() - t0
        from harness.score.results import write_results

        write_results(run_dir, summary, results, prepared, lm, cfg, elapsed)
        summary["status"] = "complete"
    except KeyboardInterrupt:
        raise interruption(summary, "score", run_dir, f"{_finished_requests(run_dir)} finished request(s)",
                           "continue without recomputing them") from None
    except HyperbenchError as e:
        summary.update(status="incomplete" if run_dir.file("requests.jsonl").exists() else "failed",
                       reason=str(e))
        raise
    finally:
        close_summary(run_dir, summary)
        _write_report(run_dir)
    return run_dir


@contextmanager
def _lm_eval_log(path: Path):
    """lm-eval's log goes to the run folder's lm_eval.log. It has no handler of its own, so Python
    would print its warnings bare on stderr (57 x "Overwriting default num_fewshot" for mmlu)."""
    logger = logging.getLogger("lm_eval")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with _quiet_progress():
            yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(level)


@contextmanager
def _quiet_progress():
    """No progress bars but EngineLM's own (one per request kind): `datasets` draws three per
    file it reads (171 for mmlu's 57 subjects), lm-eval one per task as it builds requests and
    one per bootstrapped metric. And no stray git message."""
    import functools
    import importlib

    import datasets
    from tqdm import tqdm

    was_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    patched = []
    # lm_eval.api.task binds tqdm at import; lm_eval.api.metrics imports it where it bootstraps
    # (EngineLM bound the real one at its own import)
    for name in ("lm_eval.api.task", "tqdm"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(mod, "tqdm", None) is tqdm:
            patched.append(mod)
            mod.tqdm = functools.partial(tqdm, disable=True)
    # lm-eval records `git describe` of the working directory, whose stderr says "fatal: not a
    # git repository" on the terminal wherever that is not a repository (env.json has ours)
    evaluator = importlib.import_module("lm_eval.evaluator")
    git_hash = getattr(evaluator, "get_git_commit_hash", None)
    if git_hash is not None:
        evaluator.get_git_commit_hash = _quiet_git_hash
    try:
        yield
    finally:
        for mod in patched:
            mod.tqdm = tqdm
        if git_hash is not None:
            evaluator.get_git_commit_hash = git_hash
        if not was_off:
            datasets.enable_progress_bars()


def _quiet_git_hash() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _make_lm(cfg: ScoreConfig, endpoint, tokenizer: tuple, run_dir: RunFolder):
    from harness.score.cache import RequestCache
    from harness.score.lm import EngineLM

    source, tokenizer = tokenizer
    lm = EngineLM(endpoint.base_url, endpoint.model, endpoint.api_key,
                  concurrency=cfg.score.concurrency, tokenizer=tokenizer,
                  max_length=cfg.score.max_length or _max_length(endpoint, tokenizer),
                  cache=RequestCache(run_dir.file("requests.jsonl")), timeout=cfg.score.timeout_s)
    lm.tokenizer_source = source
    return lm


def _tokenizer(cfg: ScoreConfig, model_path: str | None):
    """(source, tokenizer) of the served model, or (None, None) where there is none to read:
    an external engine without --tokenizer, or no transformers here."""
    from harness.engine_session import resolve_tokenizer_source

    src = resolve_tokenizer_source(cfg, model_path)
    gguf = None
    if src is None and model_path and model_path.endswith(".gguf"):
        src, gguf = str(Path(model_path).parent), Path(model_path).name
    if src is None:
        return None, None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        log.warning("transformers is not installed: scoring without a tokenizer (no perplexity)")
        return None, None
    try:
        tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf) if gguf else AutoTokenizer.from_pretrained(src)
    except Exception as e:  # transformers raises many types for a bad folder
        raise HyperbenchError(f"cannot load a tokenizer from {src}: {type(e).__name__}") from None
    return src + (f" ({gguf})" if gguf else ""), tok


def _max_length(endpoint, tokenizer) -> int:
    """The engine's context length (`max_model_len` in /v1/models, as vLLM reports it), else the
    tokenizer's, else 2048."""
    import asyncio

    from harness.adapter import EngineClient

    async def models():
        async with EngineClient(endpoint.base_url, endpoint.model, endpoint.api_key, timeout=30) as c:
            return await c.get("/models")

    try:
        for m in asyncio.run(models()).get("data", []):
            if m.get("id") == endpoint.model and m.get("max_model_len"):
                return int(m["max_model_len"])
    except Exception:  # optional information: any failure falls back
        pass
    n = getattr(tokenizer, "model_max_length", None)
    return int(n) if n and n < 1_000_000 else 2048


def _evaluate(cfg: ScoreConfig, lm, prepared, run_dir: RunFolder) -> dict:
    import lm_eval

    spec = cfg.score
    gen_kwargs = dict(spec.gen_kwargs)
    if float(gen_kwargs.get("temperature") or 0) > 0:
        gen_kwargs.setdefault("do_sample", True)  # else lm-eval would quietly stay greedy
    from harness.score.tasks import quiet_git_hash

    try:
        with quiet_git_hash():
            return lm_eval.simple_evaluate(
                model=lm, tasks=prepared.names, task_manager=prepared.tm,
                num_fewshot=spec.num_fewshot, limit=spec.limit, gen_kwargs=gen_kwargs or None,
                bootstrap_iters=spec.bootstrap_iters, log_samples=True,
                apply_chat_template=spec.chat_template, fewshot_as_multiturn=spec.chat_template,
                fewshot_random_seed=spec.fewshot_seed,
                confirm_run_unsafe_code=spec.allow_code_execution,
            )  # fmt: skip
    except (HyperbenchError, KeyboardInterrupt):
        raise
    except Exception as e:  # lm-eval / datasets failures: one line, the traceback kept
        atomic_write_text(run_dir.file("error.log"), traceback.format_exc())
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise HyperbenchError(f"lm-eval failed: {type(e).__name__}: {first} "
                              f"(traceback in {run_dir.file('error.log')})") from None


def _finished_requests(run_dir: RunFolder) -> int:
    path = run_dir.file("requests.jsonl")
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.endswith(b"\n"))
    except OSError:
        return 0


def _write_report(run_dir: RunFolder) -> None:
    from harness.score.report import write_report

    try:
        write_report(run_dir)
    except Exception as e:  # a report problem must never lose the run's data
        atomic_write_text(run_dir.file("report.md"), f"report failed: {type(e).__name__}: {e}\n")


def load_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())
