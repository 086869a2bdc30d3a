"""`hyperbench study`: bench, score, agree (and tune) every variant of a model, then one verdict.

Modules: config (the config tree), variants (spec parsing and what each variant can run), cells
(the plan: one run folder of an existing job per cell), executor (how cells run: local in turn),
slurm_executor (each cell a task of one SLURM job array), cell (one cell in its own process), run (run and resume),
paired (the paired accuracy test), verdict (numbers from the cells' own run folders), report.
"""
