"""`hyperbench compare`: bench engines in turn on one workload, or put finished run folders side
by side (bench speed beside score accuracy).

Modules: run (the config, the run, reading run folders, the comparison and its plots), gpu (the
GPU table: peak memory, joules per token, roofline share).
"""
