"""`hyperbench agree` and `hyperbench quantize`: cross-engine agreement on the same weights.

Modules: run (the config, the engine variants and the run folder), agreement (greedy-token and
logprob agreement, next-token KL), report (report.md and the table rows), quantize (GGUF
variants of one model), cli (the two commands).
"""
