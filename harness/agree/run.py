"""`hyperbench agree`: the same weights served by several engines (and quantizations), each
measured against a reference before any benchmark, so a user sees what a quantization costs.

    hyperbench agree --engines hf,llamacpp:f16,llamacpp:q8_0,llamacpp:q4_k_m,vllm --model smollm2-135m

Each engine is brought up in turn with the bench launchers (process, docker, apptainer), gets the
same prompts as token ids (the model's own tokenizer, so no engine re-tokenizes), and answers two
requests per prompt on /v1/completions: greedy generation (temperature 0, `ignore_eos`, fixed
length) and prompt scoring (`echo`, `logprobs=K`, one token). harness/agree/agreement.py turns the
answers into: greedy token agreement (first divergence), max |Δ| of prompt logprobs, and the KL
of next-token distributions at every prompt position, against the reference (the first engine,
or --reference).

An engine spec is `kind[:quant][:option=value...]`: `llamacpp:q4_k_m`, `hf:int8`,
`hf:dtype=bfloat16`, `llamacpp:q8_0:kv_cache_type=f16`; an option's value may hold ':'
(`hf:speculative=draft:tiny-llama`). Engine flags (`--n-ctx 1024`) apply to
every listed engine that has them. Unless a spec says otherwise every engine runs at full
precision around its weights (`dtype=float32`, llama.cpp `kv_cache_type=f32`): what is measured
is the weights' quantization, not a bf16 compute path or a half-precision KV cache.

Run folder: config.json, env.json, summary.json (canonical, versioned: every engine's status and
engine info, every variant's agreement numbers), outputs/<engine>.json (every token and top-K
distribution each engine returned: the numbers can be recomputed), logs/<engine>.log, report.md.
"""

from __future__ import annotations

import json
import time
from functools import partial

from harness.agree.agreement import ID_PREFIX, EngineOutput, Tokens, compare, parse_generation, parse_scoring
from harness.agree.config import (AgreeConfig, AgreeSettings, check_engines, engine_dicts, prompt_texts,
                                  tokenizer_source)
from harness.config import BenchConfig
from harness.engine_session import engine_info, engine_up, resolve_model_path
from harness.errors import EngineError, HyperbenchError
from harness.results import RunFolder, atomic_write_text, slug
from harness.run_lifecycle import close_summary, interruption, reopen, run_stoppable, start_run, write_config

# ---------------------------------------------------------------------------- asking one engine


async def _ask(client, body: dict) -> dict:
    """POST /completions naming tokens by id (`return_tokens_as_token_ids`: vLLM and both
    in-house servers honour it; a server that ignores it names them by text)."""
    return await client.complete({**body, "return_tokens_as_token_ids": True})


async def query_engine(endpoint, label: str, prompts: list[list[int]], s: AgreeSettings,
                       tokens: Tokens) -> EngineOutput:
    from harness.adapter import EngineClient, EngineHTTPError

    out = EngineOutput(label=label, token_ids=True)
    async with EngineClient(endpoint.base_url, endpoint.model, endpoint.api_key) as client:
        for i, ids in enumerate(prompts):
            try:
                gen = await _ask(client, {"prompt": ids, "max_tokens": s.max_tokens, "temperature": 0,
                                          "ignore_eos": True, "logprobs": 1})
                score = await _ask(client, {"prompt": ids, "max_tokens": 1, "temperature": 0,
                                            "echo": True, "logprobs": s.top_logprobs})
            except EngineHTTPError as e:
                raise EngineError(f"refused prompt {i}: {e}") from None
            except Exception as e:  # network trouble, a dead engine
                raise EngineError(f"request failed on prompt {i}: {type(e).__name__}: {e}") from None
            choice = score["choices"][0]
            echoed = choice["logprobs"]["tokens"][: len(ids)]
            as_ids = all(t.startswith(ID_PREFIX) for t in echoed)
            out.token_ids = out.token_ids and as_ids
            if as_ids and [tokens.token(t)[0] for t in echoed] != ids:
                raise EngineError(f"echoed other tokens than the prompt ids it was sent (prompt {i})")
            try:
                out.scoring.append(parse_scoring(choice, len(ids), tokens))
            except ValueError as e:
                raise EngineError(f"{e} (prompt {i})") from None
            out.greedy.append(parse_generation(gen["choices"][0], tokens))
            out.texts.append(gen["choices"][0]["text"])
    return out


# ---------------------------------------------------------------------------- the run


def resume(path, progress=None) -> RunFolder:
    """Finish a cut agree run: the engines whose outputs it saved are read back, not run again."""
    from harness.launchers.process import stop_orphan

    folder, summary = RunFolder.open_to_resume(path, "agree")
    saved = folder.read_json("config.json")
    saved.pop("resolved_engines", None)
    cfg = AgreeConfig(**saved)
    stop_orphan(folder.path / "logs")  # an engine an older harness left behind
    outputs = {}
    for label in cfg.engines:
        p = folder.path / "outputs" / f"{slug(label)}.json"
        if p.is_file():
            o = json.loads(p.read_text())
            outputs[label] = EngineOutput(label=label, token_ids=o["token_ids"], greedy=o["greedy"],
                                          texts=o["texts"], scoring=o["scoring"])
    summary["engines"] = [e for e in summary.get("engines", []) if e["label"] in outputs]
    summary["agreement"] = {k: v for k, v in summary.get("agreement", {}).items() if k in outputs}
    reopen(summary)
    return run(cfg, progress, resumed=(folder, summary, outputs))


def run(cfg: AgreeConfig, progress=None, resumed=None) -> RunFolder:
    """A new agree run; or (`resumed`: its folder, summary and saved outputs) the rest of one."""
    from harness.bench.workload import load_tokenizer

    engines = engine_dicts(cfg)
    typed = check_engines(cfg, engines)
    s = cfg.agree
    texts = prompt_texts(s)
    tokenizer = load_tokenizer(tokenizer_source(cfg))
    prompts = [tokenizer(t).input_ids for t in texts]
    short = [i for i, p in enumerate(prompts) if len(p) < 2]
    if short:
        raise HyperbenchError(f"prompt {short[0]} is one token long: scoring needs two or more")
    tokens = Tokens.from_tokenizer(tokenizer)
    model = str(cfg.engine.get("model", typed[0].model))
    shown = {label: {k: v for k, v in e.items() if k != "api_key"} for label, e in engines}
    ref = cfg.reference()
    if resumed is not None:
        folder, summary, outputs = resumed
        return _run_engines(cfg, engines, typed, shown, ref, prompts, tokens, folder, summary, outputs, progress)
    folder, summary = start_run(
        cfg.output, "agree", model, "agree", model=model, reference=ref,
        prompts=len(prompts), prompt_tokens=sum(len(p) for p in prompts),
        max_tokens=s.max_tokens, top_logprobs=s.top_logprobs,
        kl="lower bound: KL(ref || engine) over the tokens both list in their top-K plus one "
           "bucket for the rest of the vocabulary",
        engines=[], agreement={},
    )  # fmt: skip
    (folder.path / "outputs").mkdir()
    (folder.path / "logs").mkdir()
    # every engine's resolved config: agree runs several, not the one of write_resolved
    write_config(folder, {**cfg.model_dump(mode="json", exclude={"engine": {"api_key"}}), "resolved_engines": shown})
    return _run_engines(cfg, engines, typed, shown, ref, prompts, tokens, folder, summary, {}, progress)


def _run_engines(cfg, engines, typed, shown, ref, prompts, tokens, folder: RunFolder, summary: dict,
                 outputs: dict[str, EngineOutput], progress) -> RunFolder:
    """Each engine in turn (the reference first) that has no saved output yet; the summary and
    report written however it ends."""
    s = cfg.agree
    folder.write_json("summary.json", summary)
    order = sorted(range(len(engines)), key=lambda i: engines[i][0] != ref)  # reference first
    try:
        for i in order:
            label, _ = engines[i]
            if label in outputs:
                if label != ref and label not in summary["agreement"]:
                    summary["agreement"][label] = compare(outputs[ref], outputs[label], tokens)
                continue  # a resumed run: its output was saved before the cut
            engine = typed[i]
            entry = {"label": label, "kind": engine.kind, "config": shown[label], "status": "running"}
            summary["engines"].append(entry)
            if progress:
                progress(label)
            t0 = time.monotonic()
            bench_cfg = BenchConfig(engine=engines[i][1], target=cfg.target)
            try:
                model_path = resolve_model_path(bench_cfg, engine)
                with engine_up(bench_cfg, engine, model_path, folder.path / "logs" / f"{slug(label)}.log") \
                        as (endpoint, _):
                    entry["engine_info"] = engine_info(endpoint)
                    result = run_stoppable(partial(query_engine, endpoint, label, prompts, s, tokens))
            except HyperbenchError as e:
                entry.update(status="failed", reason=str(e).splitlines()[0], seconds=time.monotonic() - t0)
                folder.write_json("summary.json", summary)
                if progress:
                    progress(label, failed=entry["reason"])
                if label == ref:
                    raise HyperbenchError(f"the reference {ref} failed: {entry['reason']}") from None
                continue
            entry.update(status="ok", token_ids=result.token_ids, seconds=time.monotonic() - t0)
            outputs[label] = result
            folder.write_json(f"outputs/{slug(label)}.json", {
                "label": label, "token_ids": result.token_ids, "prompts": prompts, "greedy": result.greedy,
                "texts": result.texts, "scoring": result.scoring})  # fmt: skip
            if label != ref:
                summary["agreement"][label] = compare(outputs[ref], result, tokens)
            folder.write_json("summary.json", summary)
        failed = [e["label"] for e in summary["engines"] if e["status"] != "ok"]
        summary["status"] = "incomplete" if failed else "complete"
        if failed:
            first = next(e for e in summary["engines"] if e["status"] != "ok")
            summary["reason"] = (f"{len(failed)} of {len(engines)} engines failed ({', '.join(failed)}); "
                                 f"{first['label']}: {first['reason']}")
    except KeyboardInterrupt:
        done = sum(e["status"] == "ok" for e in summary["engines"])
        raise interruption(summary, "agree", folder, f"the outputs of {done} engine(s)") from None
    except HyperbenchError as e:
        summary["status"] = "failed" if not summary["agreement"] else "incomplete"
        summary["reason"] = str(e)
        raise
    finally:
        for e in summary["engines"]:
            if e["status"] == "running":
                e["status"] = "interrupted"
        close_summary(folder, summary)
        try:
            from harness.agree.report import render

            atomic_write_text(folder.file("report.md"), render(summary, folder))
        except Exception as e:  # a report problem must never lose the run's data
            atomic_write_text(folder.file("report.md"), f"report failed: {type(e).__name__}: {e}\n")
    return folder
