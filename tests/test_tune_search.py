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


# ---------------------------------------------------------------------------- N trials at a time
# Sample efficiency of batches against random search is a benchmark (benchmarks/tune_batch_search.py:
# three seeds of Ax's fits take ~6 min); this test checks what batches must do, on one seed.

PARALLEL = 4  # `tune --executor slurm --max-parallel 4`: Ax asked for 4 trials at a time
BATCH_BUDGET = 9  # the baseline, four quasi-random (Sobol) trials, then one batch from Ax's model


def test_batches_with_pending_points_ask_new_points_from_the_model(tmp_path):
    from harness.tune.batch import in_turn, optimize_batches

    study = Study.create(tmp_path, SPACE, OBJ, [], "bayes", 0, None, [])
    store = TrialStore(tmp_path)
    optimize_batches(study, store, BATCH_BUDGET, PARALLEL, in_turn(store, deterministic, ["accuracy"]), ["accuracy"])
    recs = store.all()
    assert [r["index"] for r in recs] == list(range(BATCH_BUDGET))
    assert all(r["status"] == "completed" and r["attempts"] == 1 for r in recs)
    # pending points at work: no two trials of a batch (or ever) ask the same thing
    points = {(round(r["params"]["temperature"], 6), round(r["params"]["top_p"], 6)) for r in recs}
    assert len(points) == BATCH_BUDGET
    # past the quasi-random start, a whole batch came from Ax's model (MBM), not single trials
    generators = [r["generator"] for r in recs]
    assert generators[-PARALLEL:] == ["MBM"] * PARALLEL, generators
