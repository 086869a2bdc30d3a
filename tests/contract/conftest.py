"""The wire contract on every engine with the tiny model, and on smollm2-135m (slow tier)."""

import pytest

from tests.conftest import ENGINE_PARAMS, SMOLLM2_CONTRACT_PARAMS, serve_param


@pytest.fixture(scope="module", params=ENGINE_PARAMS + SMOLLM2_CONTRACT_PARAMS)
def engine_server(request, tiny_model, tmp_path_factory):
    with serve_param(request.param, tiny_model, tmp_path_factory) as server:
        yield server
