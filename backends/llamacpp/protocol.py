"""What the llama.cpp engine makes of a wire-contract request (backends/openai_server): its
`Sampling`. Beyond the common fields it honours n > 1 and presence/frequency penalties;
stop_token_ids is refused by the serving layer (not in HONOURS)."""

from __future__ import annotations

from backends.llamacpp.engine import Sampling

HONOURS = frozenset({"n", "presence_penalty", "frequency_penalty"})


def sampling(req, max_tokens: int, logprobs: int | None, echo: bool, index: int) -> Sampling:
    """The `index`-th of the request's n samples (None fields: vLLM's defaults, every filter off)."""
    seed = req.seed
    if seed is not None and index:
        seed += index  # n > 1 with a seed: different but reproducible samples

    def pick(value, default):
        return default if value is None else value

    return Sampling(
        max_tokens=max_tokens, temperature=pick(req.temperature, 1.0), top_p=pick(req.top_p, 1.0),
        top_k=pick(req.top_k, -1), min_p=pick(req.min_p, 0.0),
        repetition_penalty=pick(req.repetition_penalty, 1.0),
        presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
        seed=seed, stop=req.stops(), min_tokens=req.min_tokens, ignore_eos=req.ignore_eos,
        logprobs=logprobs, prompt_logprobs=echo and logprobs is not None,
    )  # fmt: skip
