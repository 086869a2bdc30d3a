"""The report of an agree run folder: a view of its summary.json (which stays canonical)."""

from __future__ import annotations

from harness.results import RunFolder, slug

def weights_of(entry: dict) -> str:
    info = entry.get("engine_info") or {}
    parts = [str(info.get("quantization") or "?")]
    if info.get("dtype") and info.get("dtype") != info.get("quantization"):
        parts.append(str(info["dtype"]))
    if info.get("weight_bytes"):
        parts.append(f"{info['weight_bytes'] / 1e6:,.1f} MB")
    return ", ".join(parts)


COLUMNS = (
    ("greedy identical", lambda a: f"{a['greedy']['identical']}/{a['greedy']['prompts']}"),
    ("first divergence (min)", lambda a: a["greedy"]["min_first_divergence"]),
    ("matched tokens (mean)", lambda a: a["greedy"]["mean_matched_tokens"]),
    ("max abs Δ logprob", lambda a: a["prompt_logprobs"]["max_abs_diff"]),
    ("mean abs Δ logprob", lambda a: a["prompt_logprobs"]["mean_abs_diff"]),
    ("KL mean", lambda a: a["next_token"]["kl_mean"]),
    ("KL p99", lambda a: a["next_token"]["kl_p99"]),
    ("KL max", lambda a: a["next_token"]["kl_max"]),
    ("top-1 agree", lambda a: a["next_token"]["top1_agreement"]),
)


def num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        return f"{v:.3g}" if abs(v) >= 1e-3 else f"{v:.2e}"
    return str(v)


def rows(summary: dict) -> list[list[str]]:
    """One row per engine: label, weights, compared by, then COLUMNS (the reference: '-')."""
    out = []
    for e in summary["engines"]:
        a = summary["agreement"].get(e["label"])
        head = [e["label"] + (" (reference)" if e["label"] == summary["reference"] else ""), weights_of(e)]
        if a is not None:
            out.append(head + [a["compared_by"]] + [num(f(a)) for _, f in COLUMNS])
        else:
            status = "reference" if e["status"] == "ok" else e["status"]
            out.append(head + [status] + ["-"] * len(COLUMNS))
    return out


def render(summary: dict, folder: RunFolder) -> str:
    env = folder.read_json("env.json")
    lines = [f"# hyperbench agree: {summary['model']}", ""]
    if summary.get("status") != "complete":
        lines += [f"> **status: {summary.get('status')}**: {summary.get('reason', '')}", ""]
    lines += [
        f"- run folder: `{folder.path}`; started {summary['started']}  ",
        f"- reference: **{summary['reference']}**; {summary['prompts']} prompts "
        f"({summary['prompt_tokens']} prompt tokens), {summary['max_tokens']} greedy tokens each, "
        f"top-{summary['top_logprobs']} logprobs  ",
        f"- machine: {env.get('cpu', {}).get('model')}, "
        + (", ".join(g["name"] for g in env.get("gpus", [])) or "no GPU")
        + f"; hyperbench {env.get('hyperbench')} ({env.get('git_commit')})",
        "",
        "| engine | weights | compared by | " + " | ".join(c for c, _ in COLUMNS) + " |",
        "|" + "---|" * (len(COLUMNS) + 3),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows(summary)]
    failed = [e for e in summary["engines"] if e["status"] not in ("ok",)]
    if failed:
        lines += ["", "Engines that did not finish:", ""]
        lines += [f"- {e['label']}: {e['status']}: {e.get('reason', '')} (log: `logs/{slug(e['label'])}.log`)"
                  for e in failed]
    lines += [
        "",
        "How to read it:",
        "",
        "- **greedy**: every prompt generates the same number of tokens at temperature 0 "
        "(`ignore_eos`); *identical* counts prompts whose tokens all match the reference's, "
        "*first divergence* is the index of the first generated token that differs (0 = the first), "
        "*matched tokens* the mean length of the matching prefix.",
        "- **Δ logprob**: |logprob(reference) - logprob(engine)| of each prompt token given its "
        "prefix (every prompt position but the first), from `echo` + `logprobs`.",
        "- **KL**: KL(reference || engine) of the next-token distribution at every prompt position "
        "and after the prompt, in nats. Engines return only the top-K logprobs, so it is computed over "
        "the tokens both list plus one bucket for all other tokens (1 - the listed mass on each side): "
        "a **lower bound** of the full-vocabulary KL (coarsening never increases KL), exact when the "
        "shared top-K hold all the mass. Mean reference mass in the shared tokens: "
        + ", ".join(f"{label} {num(a['next_token']['ref_mass_shared'])}" for label, a in summary["agreement"].items())
        + ".",
        "- **compared by**: `ids` when both engines named tokens by id; `text` when one could only "
        "name them by text (its text mapped back to an id where exactly one id reads that way; tokens "
        "several ids share go to the rest bucket of the KL, and greedy matches on them are counted "
        "in summary.json as `ambiguous_matches`).",
    ]
    return "\n".join(lines) + "\n"
