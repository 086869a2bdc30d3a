"""The wire contract on every engine with the tiny model, and on smollm2-135m (slow tier)."""

import pytest

from tests.conftest import ENGINE_PARAMS, SMOLLM2_CONTRACT_PARAMS, serve_param, start_server

# the llamacpp engine batching 4 sequences (--parallel 4): the same contract as one at a time
BATCHED_LLAMACPP = "llamacpp-parallel4"
BATCHED_PARAMS = [pytest.param(BATCHED_LLAMACPP, id=BATCHED_LLAMACPP, marks=pytest.mark.llamacpp)]


@pytest.fixture(scope="module", params=ENGINE_PARAMS + BATCHED_PARAMS + SMOLLM2_CONTRACT_PARAMS)
def engine_server(request, tiny_model, tmp_path_factory):
    if request.param == BATCHED_LLAMACPP:
        server = start_server("llamacpp", tiny_model, tmp_path_factory.mktemp("engine"), parallel=4, n_ctx=4 * 2048)
    else:
        server = serve_param(request.param, tiny_model, tmp_path_factory)
    with server as s:
        yield s
