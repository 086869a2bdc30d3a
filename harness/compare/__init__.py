"""`hyperbench compare`: bench engines in turn on one workload, or put finished run folders side
by side (bench speed beside score accuracy).

Modules: run (the config, the run, reading run folders into entries), report (report.md: the
tables, accuracy beside speed, workload mismatches), plots (throughput and latency against load),
gpu (the GPU table: peak memory, joules per token, roofline share).
"""
