"""What the transformers engine makes of a wire-contract request (backends/openai_server):
its SamplingParams. The engine honours stop_token_ids; n, presence_penalty and
frequency_penalty are refused by the serving layer (not in HONOURS)."""

from __future__ import annotations

from backends.hf.sampling import SamplingParams

HONOURS = frozenset({"stop_token_ids"})


def sampling_params(req, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None) -> SamplingParams:
    def pick(value, default):
        return default if value is None else value

    return SamplingParams(
        max_tokens=max_tokens,
        temperature=pick(req.temperature, 1.0),
        top_p=pick(req.top_p, 1.0),
        top_k=max(pick(req.top_k, 0), 0),
        min_p=pick(req.min_p, 0.0),
        repetition_penalty=pick(req.repetition_penalty, 1.0),
        seed=req.seed,
        min_tokens=req.min_tokens,
        ignore_eos=req.ignore_eos,
        stop_token_ids=tuple(req.stop_token_ids or ()),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )
