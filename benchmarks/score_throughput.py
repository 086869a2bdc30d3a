"""Items/s of `score`'s loglikelihood path per engine on a fixed MMLU subset, beside lm-eval's own
`hf` model on the same weights (the in-process baseline a served engine has to beat), interleaved.

    python benchmarks/score_throughput.py                       # smollm2-135m, hf + llamacpp + vllm
    python benchmarks/score_throughput.py --engines hf --concurrency 1,4,16 --limit 100 --rounds 3

Every engine server and lm-eval's model stay loaded; each round runs every path once (the order
rotating from round to round), so a load change on a shared machine hits all paths alike. The
table gives each path's median items/s over the rounds and its median ratio to the fastest
lm-eval `hf` row of the same round: on a shared machine, trust the ratios, not the absolute
numbers. Time is what the model path spends answering loglikelihood requests (EngineLM's time
waiting on the engine; HFLM's time inside `loglikelihood`), so lm-eval's task setup, identical
for both, is left out. Every configuration scores the same items: accuracy must agree (up to
engine numerics), and is printed as a check. Writes a JSON beside the table with --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def evaluate(lm, args, prepared) -> dict:
    import lm_eval

    r = lm_eval.simple_evaluate(model=lm, tasks=prepared.names, task_manager=prepared.tm,
                                limit=args.limit, num_fewshot=args.num_fewshot, bootstrap_iters=0,
                                log_samples=False)  # fmt: skip
    task = prepared.names[0]
    return {"items": r["n-samples"][task]["effective"], "acc": r["results"][task]["acc,none"]}


def engine_paths(kind: str, model, args, prepared, stack) -> list:
    """(label, parallel, run) per concurrency of engine `kind`, its server started in `stack`."""
    from backends import engine_class
    from harness.launchers.process import ProcessLauncher
    from harness.score.cache import RequestCache
    from harness.score.lm import EngineLM
    from transformers import AutoTokenizer

    options = {"hf": {"dtype": args.dtype, "device": args.device}, "llamacpp": {"quant": args.quant},
               "vllm": {"dtype": args.dtype}}
    cls = engine_class(kind)
    ok, why = cls.installed()
    if not ok:
        print(f"skipping {kind}: not installed here ({why})", file=sys.stderr)
        return []
    cfg = cls(model=str(model.path), served_model_name="m", **options.get(kind, {}))
    log = Path(tempfile.mkdtemp()) / f"{kind}.log"
    ep = stack.enter_context(ProcessLauncher(cfg, str(model.path), log_path=log, startup_timeout_s=900))
    tok = AutoTokenizer.from_pretrained(model.path)
    label = kind + (f" ({args.quant})" if kind == "llamacpp" else f" ({args.dtype})")

    def run(c: int) -> dict:
        lm = EngineLM(ep.base_url, ep.model, concurrency=c, tokenizer=tok, cache=RequestCache(None),
                      progress=False)  # fmt: skip
        lm.check_prompt_logprobs()  # also warms the server up
        out = evaluate(lm, args, prepared)
        return {**out, "seconds": lm.busy_s, "alignment": dict(lm.alignment)}

    levels = args.llamacpp_concurrency if kind == "llamacpp" and args.llamacpp_concurrency else args.concurrency
    return [(f"score / {label}", f"concurrency {c}", lambda c=c: run(c)) for c in levels]


def lm_eval_paths(model, args, prepared) -> list:
    import torch
    from lm_eval.models.huggingface import HFLM

    dtype = "float32" if args.dtype == "auto" else args.dtype
    paths = []
    for bs in args.hf_batch_size:
        lm = HFLM(pretrained=str(model.path), dtype=dtype, device="cpu" if args.device == "auto" else args.device,
                  batch_size=bs)
        spent = [0.0]
        inner = lm.loglikelihood

        def timed(requests, *a, inner=inner, spent=spent, **k):
            t0 = time.perf_counter()
            try:
                return inner(requests, *a, **k)
            finally:
                spent[0] += time.perf_counter() - t0

        lm.loglikelihood = timed

        for threads in args.lm_eval_threads:
            def run(lm=lm, spent=spent, threads=threads) -> dict:
                before = torch.get_num_threads()
                torch.set_num_threads(threads or before)
                spent[0] = 0.0
                try:
                    return {**evaluate(lm, args, prepared), "seconds": spent[0]}
                finally:
                    torch.set_num_threads(before)

            paths.append((f"lm-eval hf ({dtype}, in-process)",
                          f"batch {bs}, {threads or torch.get_num_threads()} torch threads", run))
    return paths


def interleave(paths: list, rounds: int) -> list[dict]:
    """Every path once per round, the order rotating; per round, each path's ratio to the
    fastest lm-eval row of that round."""
    runs: dict[int, list[dict]] = {i: [] for i in range(len(paths))}
    for r in range(rounds):
        order = [(r + j) % len(paths) for j in range(len(paths))]
        this = {}
        for i in order:
            label, parallel, run = paths[i]
            out = run()
            out["items_per_s"] = out["items"] / out["seconds"]
            this[i] = out
            print(f"round {r + 1}: {label} {parallel}: {out}", file=sys.stderr)
        base = max(o["items_per_s"] for i, o in this.items() if paths[i][0].startswith("lm-eval"))
        for i, o in this.items():
            runs[i].append({**o, "ratio": o["items_per_s"] / base})
    rows = []
    for i, (label, parallel, _) in enumerate(paths):
        rs = runs[i]
        rows.append({"path": label, "parallel": parallel, "items": rs[0]["items"], "acc": rs[0]["acc"],
                     "items_per_s": statistics.median(x["items_per_s"] for x in rs),
                     "ratio": statistics.median(x["ratio"] for x in rs),
                     "seconds": statistics.median(x["seconds"] for x in rs), "rounds": rs})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="mmlu_high_school_geography")
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--engines", default="hf,llamacpp,vllm")
    p.add_argument("--concurrency", default="1,8", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--hf-batch-size", default="1,8", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (every path once per round)")
    p.add_argument("--llamacpp-concurrency", type=lambda s: [int(x) for x in s.split(",")],
                   help="default: --concurrency")
    p.add_argument("--lm-eval-threads", default="1,0", type=lambda s: [int(x) for x in s.split(",")],
                   help="torch threads for lm-eval's hf model (0: torch's default, all cores); the hf "
                        "engine uses all cores but one on CPU, so 1 on a 2-core machine")
    p.add_argument("--dtype", default="float32", help="hf and vllm engines' and lm-eval hf's dtype")
    p.add_argument("--device", default="auto")
    p.add_argument("--quant", default="native", help="llamacpp weights (native: the model's GGUF)")
    p.add_argument("--data-dir", type=Path, help="default: MMLU staged from the registry package")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    from harness.models import resolve_model
    from harness.score.staging import ensure_staged
    from harness.score.tasks import prepare

    model = resolve_model(args.model)
    data = args.data_dir or ensure_staged(("mmlu",))
    prepared = prepare([args.task], data, Path(tempfile.mkdtemp()))
    with contextlib.ExitStack() as stack:  # every engine server up for the whole interleaved run
        paths = []
        for kind in [e for e in args.engines.split(",") if e]:
            paths += engine_paths(kind, model, args, prepared, stack)
        paths += lm_eval_paths(model, args, prepared)
        load = os.getloadavg()[0]
        rows = interleave(paths, args.rounds)
        load = (load, os.getloadavg()[0])

    print(f"\n{args.model}, {args.task}, {rows[0]['items']} items x 4 choices, {args.num_fewshot}-shot, "
          f"{os.cpu_count()} CPUs, {args.rounds} interleaved rounds, load average {load[0]:.1f} -> {load[1]:.1f}\n")
    print("| path | parallel | items/s (median) | × fastest lm-eval hf (median) | seconds | acc |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['path']} | {r['parallel']} | {r['items_per_s']:.2f} | {r['ratio']:.2f} | "
              f"{r['seconds']:.1f} | {r['acc']:.3f} |")
    if args.out:
        meta = {k: str(v) for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"args": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
