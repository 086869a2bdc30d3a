"""Sample efficiency of the search on a cheap objective with a known optimum.

The objective is a DETERMINISTIC FUNCTION OF THE PARAMETERS (tests/test_tune_loop.known_function:
a smooth peak of 1.0 at temperature 0.35, top_p 0.8), not a model: it isolates what the search
itself contributes. The same loop, Ax client and budget run with `--strategy bayes` and
`--strategy random`; Ax's Bayesian optimization must reach within 5% of the optimum in fewer trials
than random search, median over three seeds. (The region within 5% of the peak is about 0.85% of
the search space, so random search needs ~80 trials on average.)
"""

from __future__ import annotations

import statistics

import pytest

from harness.tune.loop import TrialStore, optimize
from harness.tune.study import Study
from test_tune_loop import OBJ, SPACE, deterministic, known_function

TOLERANCE = 0.95  # of the optimum, 1.0
BUDGET = 20  # trials, the baseline included
SEEDS = (0, 1, 2)


def trials_to_reach(folder, strategy: str, seed: int) -> int:
    """Trials (the baseline included) until one is within tolerance; BUDGET + 1 if none is."""
    study = Study.create(folder, SPACE, OBJ, [], strategy, seed, None, [])
    store = TrialStore(folder)
    for budget in range(1, BUDGET + 1):
        optimize(study, deterministic, store, budget, ["accuracy"])
        if max(known_function(r["params"]) for r in store.all() if r["status"] == "completed") >= TOLERANCE:
            return budget
    return BUDGET + 1


@pytest.mark.slow
def test_bayesian_optimization_needs_fewer_trials_than_random_search(tmp_path):
    bayes = [trials_to_reach(tmp_path / f"bayes-{s}", "bayes", s) for s in SEEDS]
    rand = [trials_to_reach(tmp_path / f"random-{s}", "random", s) for s in SEEDS]
    fmt = lambda xs: ", ".join(str(x) if x <= BUDGET else f">{BUDGET}" for x in xs)  # noqa: E731
    print(f"\ntrials to within {1 - TOLERANCE:.0%} of the optimum (seeds {SEEDS}): "
          f"Ax BO {fmt(bayes)} (median {statistics.median(bayes)}), random {fmt(rand)} "
          f"(median {statistics.median(rand)})")
    assert statistics.median(bayes) <= BUDGET
    assert statistics.median(bayes) < statistics.median(rand)

    # the Bayesian step proposes the same point from the saved state, every time: a resumed
    # tune continues as the uninterrupted one would have
    folder = tmp_path / "bayes-0"
    a = Study.load(folder, 0).new_trial()
    b = Study.load(folder, 0).new_trial()
    assert a == b
