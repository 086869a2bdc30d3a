"""`hyperbench agree` and `hyperbench quantize`: cross-engine agreement on the same weights.

Modules: config (settings, engine specs, prompts), run (each engine asked in turn, the run folder,
resume), agreement (greedy-token and logprob agreement, next-token KL), report (report.md and the
table rows), quantize (GGUF variants of one model).
"""
