"""Turn lm-eval's results into the run folder's files: summary.json (canonical), per-item samples,
and lm-eval's own results JSON (minus samples) for anyone who wants its exact layout."""

from __future__ import annotations

import json
import math

from harness.results import RunFolder, atomic_write_text
from harness.score.lm import wire_params


def _num(v):
    if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
        return v
    return None  # lm-eval writes "N/A" where it has no stderr


def metrics_of(entry: dict) -> dict:
    """{'acc,none': .5, 'acc_stderr,none': .1} -> {'acc': {'value': .5, 'stderr': .1}}; a filter
    other than 'none' stays in the name: 'exact_match,strict-match'."""
    out = {}
    for key, value in entry.items():
        if "," not in key or "_stderr," in key:
            continue
        metric, filt = key.split(",", 1)
        name = metric if filt == "none" else f"{metric},{filt}"
        out[name] = {"value": _num(value), "stderr": _num(entry.get(f"{metric}_stderr,{filt}"))}
    return out


def _generation(cfg_entry: dict, task_kwargs: dict | None, overrides: dict) -> dict:
    """What a generative task asked for, what the user changed, and what went on the wire."""
    effective = dict(cfg_entry.get("generation_kwargs") or {})
    wire, ignored = wire_params(effective)
    return {
        "task": task_kwargs,
        "overrides": overrides or {},
        "sent": wire,
        "greedy": wire.get("temperature", 0) == 0,
        "fixed_by_task": sorted(k for k in (task_kwargs or {}) if k not in (overrides or {})),
        **({"not_on_wire": ignored} if ignored else {}),
    }


def write_results(run_dir: RunFolder, summary: dict, results: dict, prepared, lm, cfg, elapsed: float) -> None:
    from lm_eval.utils import handle_non_serializable

    samples = results.pop("samples", {}) or {}
    (run_dir.path / "samples").mkdir(exist_ok=True)
    for task, rows in samples.items():
        text = "".join(json.dumps(r, default=handle_non_serializable, ensure_ascii=False) + "\n" for r in rows)
        atomic_write_text(run_dir.path / "samples" / f"{task}.jsonl", text)
    atomic_write_text(run_dir.file("lm_eval_results.json"),
                      json.dumps(results, default=handle_non_serializable, indent=2) + "\n")

    n_samples = results.get("n-samples", {})
    configs = results.get("configs", {})
    tasks = {}
    for name, entry in results.get("results", {}).items():
        if name in results.get("groups", {}):
            continue
        conf = configs.get(name, {})
        info = {
            "alias": entry.get("alias", name).strip(" -"),
            "output_type": conf.get("output_type"),
            "metrics": metrics_of(entry),
            "higher_is_better": results.get("higher_is_better", {}).get(name),
            "n": n_samples.get(name, {}).get("effective"),
            "n_total": n_samples.get(name, {}).get("original"),
            "num_fewshot": results.get("n-shot", {}).get(name),
            "version": results.get("versions", {}).get(name),
            "data": prepared.data.get(name),
        }
        if conf.get("output_type") == "generate_until":
            info["generation"] = _generation(conf, prepared.gen_kwargs.get(name), cfg.score.gen_kwargs)
        tasks[name] = info
    groups = {
        name: {"metrics": metrics_of(entry), "subtasks": results.get("group_subtasks", {}).get(name, [])}
        for name, entry in results.get("groups", {}).items()
    }
    asked = cfg.score.num_fewshot
    fixed = sorted(n for n, t in tasks.items() if asked is not None and t["num_fewshot"] is not None
                   and t["num_fewshot"] != asked and n != "perplexity")
    if fixed:  # lm-eval keeps a task's own num_fewshot (truthfulqa: 0, its prompt has 6 examples)
        shots = sorted({tasks[n]["num_fewshot"] for n in fixed})
        summary["notes"] = [*summary.get("notes", []),
                            f"--num-fewshot {asked} not applied to {', '.join(fixed)}: the task fixes "
                            f"num_fewshot={'/'.join(map(str, shots))}"]
    items = sum(t["n"] or 0 for t in tasks.values())
    requests = lm.cache.stats()
    sent = sum(v["sent"] for v in requests.values())
    ppl = samples.get("perplexity")
    if ppl and all(s["doc"]["text"] in lm.rolling_tokens for s in ppl):
        # lm-eval reports word and byte perplexity; tokens are the served model's tokenizer's
        ll = sum(float(s["resps"][0][0]) for s in ppl)
        n = sum(lm.rolling_tokens[s["doc"]["text"]] for s in ppl)
        tasks["perplexity"]["metrics"]["token_perplexity"] = {"value": math.exp(-ll / n), "stderr": None}
        tasks["perplexity"]["tokens"] = n
    summary.update(
        tasks=tasks,
        groups=groups,
        requests=requests,
        throughput={"elapsed_s": round(elapsed, 3), "engine_s": round(lm.busy_s, 3), "items": items,
                    "items_per_s": items / lm.busy_s if lm.busy_s else None,
                    "requests_sent": sent, "requests_per_s": sent / lm.busy_s if lm.busy_s else None},
        lm={**summary.get("lm", {}), "alignment": dict(lm.alignment), "tokens_sent": dict(lm.tokens),
            "max_tokens_floor": lm.max_tokens_floor},
        lm_eval={"version": results.get("lm_eval_version"), "limit": cfg.score.limit,
                 "num_fewshot": cfg.score.num_fewshot, "fewshot_seed": cfg.score.fewshot_seed,
                 "bootstrap_iters": cfg.score.bootstrap_iters, "chat_template": cfg.score.chat_template},
    )  # fmt: skip
