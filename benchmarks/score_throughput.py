"""Items/s of `score`'s loglikelihood path per engine on a fixed MMLU subset, beside lm-eval's own
`hf` model on the same weights (the in-process baseline a served engine has to beat).

    python benchmarks/score_throughput.py                       # smollm2-135m, hf + llamacpp + vllm
    python benchmarks/score_throughput.py --engines hf --concurrency 1,4,16 --limit 100

Time is what the model path spends answering loglikelihood requests (EngineLM's time waiting on
the engine; HFLM's time inside `loglikelihood`), so lm-eval's task setup, identical for both,
is left out. Every configuration scores the same items: accuracy must agree (up to engine
numerics), and is printed as a check. Writes a JSON beside the table with --out.
"""

from __future__ import annotations

import argparse
import json
import os
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


def bench_engine(kind: str, model, args, prepared) -> list[dict]:
    from backends import engine_class
    from harness.launchers.process import ProcessLauncher
    from harness.score.cache import RequestCache
    from harness.score.lm import EngineLM

    options = {"hf": {"dtype": args.dtype, "device": args.device}, "llamacpp": {"quant": args.quant},
               "vllm": {"dtype": args.dtype}}
    cls = engine_class(kind)
    ok, why = cls.installed()
    if not ok:
        print(f"skipping {kind}: not installed here ({why})", file=sys.stderr)
        return []
    cfg = cls(model=str(model.path), served_model_name="m", **options.get(kind, {}))
    rows = []
    log = Path(tempfile.mkdtemp()) / f"{kind}.log"
    with ProcessLauncher(cfg, str(model.path), log_path=log, startup_timeout_s=900) as ep:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model.path)
        for c in args.concurrency:
            lm = EngineLM(ep.base_url, ep.model, concurrency=c, tokenizer=tok, cache=RequestCache(None),
                          progress=False)
            lm.check_prompt_logprobs()  # also warms the server up
            out = evaluate(lm, args, prepared)
            sent = sum(v["sent"] for v in lm.cache.stats().values())
            label = kind + (f" ({args.quant})" if kind == "llamacpp" else f" ({args.dtype})")
            rows.append({"path": f"score / {label}", "parallel": f"concurrency {c}", **out,
                         "requests": sent, "seconds": lm.busy_s, "items_per_s": out["items"] / lm.busy_s,
                         "alignment": dict(lm.alignment)})
            print(rows[-1], file=sys.stderr)
    return rows


def bench_lm_eval_hf(model, args, prepared) -> list[dict]:
    from lm_eval.models.huggingface import HFLM

    dtype = "float32" if args.dtype == "auto" else args.dtype
    rows = []
    for bs in args.hf_batch_size:
        lm = HFLM(pretrained=str(model.path), dtype=dtype, device="cpu" if args.device == "auto" else args.device,
                  batch_size=bs)
        spent = [0.0]
        inner = lm.loglikelihood

        def timed(requests, *a, **k):
            t0 = time.perf_counter()
            try:
                return inner(requests, *a, **k)
            finally:
                spent[0] += time.perf_counter() - t0

        lm.loglikelihood = timed
        out = evaluate(lm, args, prepared)
        rows.append({"path": f"lm-eval hf ({dtype}, in-process)", "parallel": f"batch {bs}", **out,
                     "requests": out["items"] * 4, "seconds": spent[0], "items_per_s": out["items"] / spent[0]})
        print(rows[-1], file=sys.stderr)
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
    rows = []
    for kind in [e for e in args.engines.split(",") if e]:
        rows += bench_engine(kind, model, args, prepared)
    rows += bench_lm_eval_hf(model, args, prepared)

    print(f"\n{args.model}, {args.task}, {rows[0]['items']} items x 4 choices, "
          f"{args.num_fewshot}-shot, {os.cpu_count()} CPUs\n")
    print("| path | parallel | items/s | requests | seconds | acc |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['path']} | {r['parallel']} | {r['items_per_s']:.2f} | {r['requests']} | "
              f"{r['seconds']:.1f} | {r['acc']:.3f} |")
    if args.out:
        meta = {k: str(v) for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"args": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
