"""vLLM engine: the harness starts vLLM's own OpenAI-compatible server (no server code here).

`spec.py` maps the engine config to vLLM's arguments; `metrics.py` reads its speculative
decoding counters from /metrics.
"""
