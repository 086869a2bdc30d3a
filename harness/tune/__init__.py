"""`hyperbench tune`: Ax Bayesian optimization of sampling parameters (and engine options) per
backend, against quality and speed together, with a held-out check of whether a gain is real.

- `config`: the config tree (CLI flags derive from it); `space`: the search space per engine;
  `objectives`: metrics, objectives, constraints, Pareto front;
- `study`: the Ax client and its atomically saved state; `loop`: the crash-safe trial loop;
  `batch`: trials N at a time (pending points); `slurm_trials` and `trial_job`: each trial a
  SLURM array task (`--executor slurm`), and what the task runs;
- `measure`: one configuration scored on task items through the score path, speed from the same
  streamed requests; `engine`: one engine kept up across trials, restarted for engine options;
- `select` and `stats`: the picks for the held-out split and the paired comparison; `report`.

Ax, lm-eval and torch are imported lazily: the CLI imports this package to build its flags.
"""
