"""Sample efficiency of `tune --executor slurm --max-parallel N`: Ax asked for N trials at a time.

The objective is the test suite's deterministic function of the parameters (tests/test_tune_loop:
a smooth peak of 1.0 at temperature 0.35, top_p 0.8), not a model: it isolates what the search
contributes. The same batched loop (harness/tune/batch.py, pending points) runs with Ax's Bayesian
optimization and with random search; printed: trials until one is within 5% of the optimum, per
seed, and the medians. (The region within 5% of the peak is ~0.85% of the space: random search
needs ~80 trials on average.) A benchmark, not a test: three seeds of Ax's model fits take ~6 min
on a 2-core machine.

    python benchmarks/tune_batch_search.py [--parallel 4] [--budget 16] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the known objective

from harness.tune.batch import in_turn, optimize_batches  # noqa: E402
from harness.tune.loop import TrialStore  # noqa: E402
from harness.tune.study import Study  # noqa: E402
from test_tune_loop import OBJ, SPACE, deterministic, known_function  # noqa: E402

TOLERANCE = 0.95  # of the optimum, 1.0


def trials_to_reach(folder: Path, strategy: str, seed: int, budget: int, parallel: int) -> int:
    study = Study.create(folder, SPACE, OBJ, [], strategy, seed, None, [])
    store = TrialStore(folder)
    optimize_batches(study, store, budget, parallel, in_turn(store, deterministic, ["accuracy"]), ["accuracy"])
    return next((r["index"] + 1 for r in store.all() if known_function(r["params"]) >= TOLERANCE), budget + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--seeds", default="0,1,2")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        got = {s: [trials_to_reach(Path(tmp) / f"{s}-{seed}", s, seed, a.budget, a.parallel) for seed in seeds]
               for s in ("bayes", "random")}
    fmt = lambda xs: ", ".join(str(x) if x <= a.budget else f">{a.budget}" for x in xs)  # noqa: E731
    print(f"batches of {a.parallel}, budget {a.budget}: trials to within {1 - TOLERANCE:.0%} of the optimum "
          f"(seeds {a.seeds})")
    for s, xs in got.items():
        print(f"  {s:6}: {fmt(xs)} (median {statistics.median(xs)})")


if __name__ == "__main__":
    main()
