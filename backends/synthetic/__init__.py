"""A synthetic engine whose timing is known, to test the harness client's measurement.

It is not an LLM. It speaks the wire contract (OpenAI-compatible streaming `/v1/completions` and
`/v1/chat/completions`, `/health`, `/v1/models`, `GET /v1/engine` -> {"engine": "synthetic"}) and
emits exactly `max_tokens` tokens (whatever `min_tokens`/`ignore_eos` say), one per SSE chunk:
token k is due `ttft_ms + k * itl_ms` after the request arrived. To test how a client times
tokens rather than text, tokens can travel several to a chunk (`tokens_per_chunk`, the chunk due
with its last token), every Nth token can decode to empty text (`empty_text_every`), and a chunk
of empty text only can be sent or skipped (`empty_chunks`, skipped tokens ride in the next
chunk); with `stream_options.continuous_usage_stats` every chunk carries the usage so far, as
vLLM's do. Deadlines are absolute, so timer
errors never accumulate. The request's arrival is stamped in the protocol callback, before any
other connection's work, and tokens leave from timer callbacks (no coroutine per token; tokens
due together go out in one write, so `itl_ms 0` streams as fast as the client reads). The loop
waits in select(2), whose timeout has microsecond resolution where epoll's rounds up to a
millisecond (select caps the server near 1000 connections). `/v1/engine` reports how late tokens
left, so a benchmark can tell the server's scheduling error from the client's measurement error;
`GET /v1/engine/trace` gives, per streamed request, when it arrived and when its first token left
(monotonic clock, which is the harness's perf_counter on Linux).

Stdlib only: it runs in the base harness install (uvicorn is an engine extra).

    python -m backends.synthetic --port 8000 --ttft-ms 50 --itl-ms 10
    with start_in_thread(ttft_ms=50, itl_ms=10) as srv: ...srv.base_url...   # in-process
    with launch(ttft_ms=50, itl_ms=10) as endpoint: ...                      # subprocess
"""

from backends.synthetic.engine import SyntheticEngine
from backends.synthetic.server import ServerThread, launch, run_loop, serve, start_in_thread
from backends.synthetic.spec import SyntheticConfig

__all__ = ["ServerThread", "SyntheticConfig", "SyntheticEngine", "launch", "run_loop", "serve",
           "start_in_thread"]
