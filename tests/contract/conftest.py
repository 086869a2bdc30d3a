"""The wire contract on every engine with the tiny model, and on smollm2-135m (slow tier)."""

import pytest

from tests.conftest import ENGINE_PARAMS, SMOLLM2_CONTRACT_PARAMS, serve_param, start_server

# the llamacpp engine one request at a time (--parallel 1): the same contract as its default,
# 4 sequences batched (ENGINE_PARAMS' "llamacpp")
SERIAL_LLAMACPP = "llamacpp-parallel1"
# llama.cpp's own llama-server (scripts/build_llama_server.sh; skipped with that hint without it)
LLAMA_SERVER = "llama-server"
MORE_PARAMS = [
    pytest.param(SERIAL_LLAMACPP, id=SERIAL_LLAMACPP, marks=pytest.mark.llamacpp),
    pytest.param(LLAMA_SERVER, id=LLAMA_SERVER, marks=pytest.mark.llamacpp),
]

# what llama-server does not do of the contract, each with its reason: skipped, never dropped
WRONG_ECHO = "llama-server's echo prompt logprobs are wrong (llama.cpp #27174): score refuses loglikelihood on it"
LLAMA_SERVER_LIMITS = {
    "test_engine_info": "llama-server has no GET /v1/engine (hyperbench's namespaced route)",
    "test_echo_logprobs_match_forward_pass": WRONG_ECHO,
    "test_echo_with_max_tokens_zero_scores_the_prompt": WRONG_ECHO,
    "test_length_control_gives_exact_token_counts[min_tokens]": "llama-server has no min_tokens (ignore_eos works)",
    "test_unknown_parameter_is_400": "llama-server accepts and ignores unknown fields",
    "test_bad_parameter_is_400": "llama-server accepts out-of-range sampling values without a 400",
    "test_batch_of_prompts": "llama-server's usage for a list of prompts counts one prompt's tokens",
    "test_streaming_completion": "llama-server's include_usage chunk carries a choice (OpenAI's has choices: [])",
    "test_generated_logprobs": "llama-server's /v1/completions logprobs are not OpenAI's legacy format (no tokens list)",
}


@pytest.fixture(scope="module", params=ENGINE_PARAMS + MORE_PARAMS + SMOLLM2_CONTRACT_PARAMS)
def engine_server(request, tiny_model, tmp_path_factory):
    if request.param == SERIAL_LLAMACPP:
        server = start_server("llamacpp", tiny_model, tmp_path_factory.mktemp("engine"), parallel=1)
    elif request.param == LLAMA_SERVER:
        server = start_server("llama-server", tiny_model, tmp_path_factory.mktemp("engine"), quant="f32",
                              kv_cache_type="f32", parallel=4, n_ctx=4 * 2048)  # fmt: skip
    else:
        server = serve_param(request.param, tiny_model, tmp_path_factory)
    with server as s:
        yield s


@pytest.fixture(autouse=True)
def _declared_limits(request):
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("engine_server") != LLAMA_SERVER:
        return
    name = request.node.originalname
    keys = [name, *(f"{name}[{v}]" for v in callspec.params.values() if isinstance(v, str))]
    reason = next((LLAMA_SERVER_LIMITS[k] for k in keys if k in LLAMA_SERVER_LIMITS), None)
    if reason:
        pytest.skip(reason)
