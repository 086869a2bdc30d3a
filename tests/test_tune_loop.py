"""The tune's trial loop and its pieces, without an engine: crash safety at every step, failed
trials, the search space, objectives, and the held-out statistics.

The "measurement" here is a DETERMINISTIC FUNCTION OF THE PARAMETERS (labelled as such), not a
model: what is tested is the loop's bookkeeping with real Ax, which does not care where numbers
come from. Quasi-random search keeps Ax's part instant; the Bayesian path is exercised by
tests/test_tune_search.py and the end-to-end tests.
"""

from __future__ import annotations

import json
import math

import pytest

from harness.errors import HyperbenchError
from harness.tune import stats
from harness.tune.loop import TrialFailed, TrialStore, optimize
from harness.tune.measure import Measurement, summarize
from harness.tune.objectives import Objective, parse_constraints, parse_objectives, pareto_front
from harness.tune.space import Param, SearchSpace, build_space, gen_kwargs
from harness.tune.study import Study

SPACE = SearchSpace([Param("temperature", "sampling", "float", 0.0, 1.5, baseline=0.8),
                     Param("top_p", "sampling", "float", 0.05, 1.0, baseline=0.95)])
OBJ = [Objective("accuracy", True)]


def known_function(params: dict) -> float:
    """DETERMINISTIC test objective (not a model): peak 1.0 at temperature 0.35, top_p 0.8."""
    return math.exp(-((params["temperature"] - 0.35) / 0.3) ** 2 - ((params["top_p"] - 0.8) / 0.25) ** 2)


def deterministic(folder, params) -> Measurement:
    return Measurement(metrics={"accuracy": {"mean": known_function(params), "sem": 0.01, "n": 1}}, items=[])


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (a BaseException, like KeyboardInterrupt)."""


def new_study(folder, strategy="random"):
    return Study.create(folder, SPACE, OBJ, [], strategy, 0, None, [])


def outcome(folder) -> list[tuple]:
    study = Study.load(folder, 0)
    return [(i, status, round(p["temperature"], 9), round(p["top_p"], 9))
            for i, (status, p, _) in study.trials().items()]


BUDGET = 4


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    optimize(new_study(folder), deterministic, TrialStore(folder), BUDGET, ["accuracy"])
    return outcome(folder)


def test_uninterrupted_run(reference):
    assert [r[0] for r in reference] == list(range(BUDGET))
    assert all(r[1] == "completed" for r in reference)
    assert reference[0][2:] == (0.8, 0.95)  # the baseline is trial 0


def _saves(folder) -> int:
    calls = 0
    real = Study.save

    def counting(self):
        nonlocal calls
        calls += 1
        real(self)

    Study.save = counting
    try:
        optimize(new_study(folder), deterministic, TrialStore(folder), BUDGET, ["accuracy"])
    finally:
        Study.save = real
    return calls


def test_killed_at_every_state_write_resumes_as_if_uninterrupted(reference, tmp_path, monkeypatch):
    """A kill just before each write of Ax's state, and just before each trial record write:
    the resumed run ends with the same trials, ids and parameters, each measured once."""
    import harness.tune.loop as loop

    n_saves = _saves(tmp_path / "count")
    points = [("save", k) for k in range(1, n_saves + 1)] + [("record", k) for k in range(1, 2 * BUDGET)]
    real_save, real_write = Study.save, TrialStore.write
    for what, k in points:
        folder = tmp_path / f"{what}-{k}"
        new_study(folder)  # set-up done (its own save is not counted)
        calls = 0
        measured: list[int] = []

        def crash(real):
            def wrapped(*a, **kw):
                nonlocal calls
                calls += 1
                if calls == k:
                    raise Killed
                return real(*a, **kw)
            return wrapped

        monkeypatch.setattr(Study, "save", crash(real_save) if what == "save" else real_save)
        monkeypatch.setattr(TrialStore, "write", crash(real_write) if what == "record" else real_write)

        def counted(folder_, params):
            measured.append(json.loads((folder_ / "trial.json").read_text())["index"])
            return deterministic(folder_, params)

        try:
            optimize(Study.load(folder, 0), counted, TrialStore(folder), BUDGET, ["accuracy"])
        except Killed:
            pass
        monkeypatch.setattr(Study, "save", real_save)
        monkeypatch.setattr(TrialStore, "write", real_write)
        optimize(Study.load(folder, 0), counted, TrialStore(folder), BUDGET, ["accuracy"])
        assert outcome(folder) == reference, (what, k)
        records = TrialStore(folder).all()
        assert [r["index"] for r in records] == list(range(BUDGET)), (what, k)
        # a measurement is repeated only if the kill came before its result was on disk
        assert sorted(set(measured)) == list(range(BUDGET))
        assert len(measured) - BUDGET <= 1, (what, k, measured)
    assert loop.MAX_ATTEMPTS >= 2


def test_killed_mid_measurement_resumes_that_trial(reference, tmp_path):
    folder = tmp_path / "mid"
    study = new_study(folder)
    seen = []

    def dies_in_trial_3(folder_, params):
        seen.append(folder_.name)
        if folder_.name == "0003" and seen.count("0003") == 1:
            raise KeyboardInterrupt  # Ctrl-C / SIGTERM inside a trial
        return deterministic(folder_, params)

    with pytest.raises(KeyboardInterrupt):
        optimize(study, dies_in_trial_3, TrialStore(folder), BUDGET, ["accuracy"])
    assert Study.load(folder, 0).running() == [3]
    optimize(Study.load(folder, 0), dies_in_trial_3, TrialStore(folder), BUDGET, ["accuracy"])
    assert outcome(folder) == reference
    rec = TrialStore(folder).read(3)
    assert rec["attempts"] == 2 and rec["status"] == "completed"
    assert [r["attempts"] for r in TrialStore(folder).all()] == [1, 1, 1, 2]


def test_failed_trial_is_reported_to_ax_and_not_retried(tmp_path):
    study = new_study(tmp_path)

    def fails_on_2(folder_, params):
        if folder_.name == "0002":
            raise TrialFailed("engine died: exit code -9")
        return deterministic(folder_, params)

    optimize(study, fails_on_2, TrialStore(tmp_path), BUDGET, ["accuracy"])
    statuses = {i: s for i, (s, _, _) in Study.load(tmp_path, 0).trials().items()}
    assert statuses == {0: "completed", 1: "completed", 2: "failed", 3: "completed"}
    rec = TrialStore(tmp_path).read(2)
    assert rec["status"] == "failed" and "engine died" in rec["error"] and rec["attempts"] == 1


def test_consecutive_failures_stop_the_tune(tmp_path):
    def always(folder_, params):
        raise TrialFailed("HTTP 500")

    with pytest.raises(HyperbenchError, match="3 trials in a row failed"):
        optimize(new_study(tmp_path), always, TrialStore(tmp_path), 10, ["accuracy"])
    assert Study.load(tmp_path, 0).count() == 3  # the baseline and two more, each failed once


def test_missing_metric_fails_the_trial(tmp_path):
    def no_tpot(folder_, params):
        return Measurement(metrics={"accuracy": {"mean": 0.5, "sem": 0.1}, "tpot_ms": {"mean": None}}, items=[])

    with pytest.raises(HyperbenchError):
        optimize(Study.create(tmp_path, SPACE, OBJ, [], "random", 0, None, ["tpot_ms"]), no_tpot,
                 TrialStore(tmp_path), 4, ["accuracy", "tpot_ms"])
    assert "TPOT needs answers of 2+ tokens" in TrialStore(tmp_path).read(0)["error"]


# ---------------------------------------------------------------------------- pieces


def test_space_per_engine_and_fixed_baseline():
    from backends.hf.spec import HFConfig

    space = build_space(["temperature", "top_k", "max_batch_size=1:8"], HFConfig(max_batch_size=4),
                        {"temperature": 0.8, "top_p": 0.95})
    assert [(p.name, p.kind, p.type, p.low, p.high, p.baseline) for p in space.params] == [
        ("temperature", "sampling", "float", 0.0, 1.5, 0.8), ("top_k", "sampling", "int", 0, 100, 0),
        ("max_batch_size", "engine", "int", 1, 8, 4)]
    assert space.fixed == {"top_p": 0.95}  # in the baseline, not tuned: every trial sends it
    sampling, engine = space.split({"temperature": 0.5, "top_k": 0, "max_batch_size": 4})
    assert engine == {"max_batch_size": 4}
    kw = gen_kwargs(sampling, seed=7, max_gen_toks=16)
    assert kw == {"temperature": 0.5, "top_p": 0.95, "do_sample": True, "seed": 7, "max_gen_toks": 16}
    assert "top_k" not in kw  # 0 means off: left out, every engine's default
    assert gen_kwargs({"temperature": 0.0}, 0, None)["do_sample"] is False


def test_engine_param_baseline_must_be_in_range():
    from backends.hf.spec import HFConfig

    with pytest.raises(HyperbenchError, match="baseline's max_batch_size=32 is outside"):
        build_space(["max_batch_size=1:8"], HFConfig(), {})
    space = build_space(["max_batch_size=1:8"], HFConfig(max_batch_size=4), {})
    assert space.params[0].baseline == 4


def test_objectives_and_pareto_front():
    objs = parse_objectives(["accuracy", "-tpot"])
    assert [o.ax() for o in objs] == ["accuracy", "-tpot_ms"]
    assert [c.ax() for c in parse_constraints(["tpot_ms<=40"], objs)] == ["tpot_ms <= 40.0"]
    pts = [(0, {"accuracy": 0.5, "tpot_ms": 10}), (1, {"accuracy": 0.6, "tpot_ms": 12}),
           (2, {"accuracy": 0.4, "tpot_ms": 11}), (3, {"accuracy": 0.6, "tpot_ms": 11})]
    assert sorted(pareto_front(pts, objs)) == [0, 3]


def test_accuracy_sem_is_never_zero():
    items = [{"score": 0.0, "ttft_ms": 10.0, "tpot_ms": 2.0, "e2e_ms": 20.0, "output_tokens": 5,
              "wall": [float(i), i + 0.02]} for i in range(20)]
    m = summarize(items)
    assert m["accuracy"]["mean"] == 0.0 and 0 < m["accuracy"]["sem"] < 0.07
    assert m["tpot_ms"] == {"mean": 2.0, "sem": 0.0, "n": 20}
    assert m["output_tok_s"]["mean"] == pytest.approx(100 / 0.4)  # 100 tokens over 20 x 20 ms busy


def test_mcnemar_exact_and_paired_comparison():
    import numpy as np

    a = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=float)
    b = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 0], dtype=float)
    assert stats.mcnemar_exact(a, b) == pytest.approx(2 / 2**8)  # 8 discordant, all one way
    assert stats.mcnemar_exact(a, a) == 1.0
    base = [{"doc_id": i, "score": 0.0, "tpot_ms": 10.0 + (i % 3), "e2e_ms": 100.0, "output_tokens": 10}
            for i in range(40)]
    same = [dict(r) for r in base]
    faster = [dict(r, tpot_ms=r["tpot_ms"] - 2.0) for r in base]
    r = stats.compare(base, same, ["accuracy", "tpot_ms"], 0.05)
    assert not r["accuracy"]["significant"] and not r["tpot_ms"]["significant"]
    assert stats.verdict(r, ["accuracy", "tpot_ms"]) == "no significant difference from the baseline on the held-out split"
    r = stats.compare(base, faster, ["accuracy", "tpot_ms"], 0.05)
    t = r["tpot_ms"]
    assert t["diff"] == pytest.approx(-2.0) and t["ci"][1] < 0 and t["significant"] and t["better"] is True
    assert "significantly better than the baseline on TPOT" in stats.verdict(r, ["accuracy", "tpot_ms"])


def test_accuracy_error_bars_stay_within_0_and_1():
    # an accuracy of 0 with its (k+1)/(n+2) SEM of 0.19 was drawn down to -0.19 in the plots
    from harness.tune.report import clipped_err

    low, high = clipped_err([0.0, 0.5, 0.95], [0.19, 0.1, 0.2], 0.0, 1.0)
    assert low == pytest.approx([0.0, 0.1, 0.2]) and high == pytest.approx([0.19, 0.1, 0.05])


def test_holdout_rounds_alternate_finely_while_keeping_the_engine_loaded():
    # 4 rounds of 6 items let one load spike on a shared machine make a TTFT "difference"
    # (p=0.004) between configurations that cannot differ in TTFT: finer rounds at concurrency 1
    from harness.tune.select import HOLDOUT_ROUNDS_MAX, holdout_rounds

    assert holdout_rounds(24, 1, True) == 12  # 2 items a round, one in flight
    assert holdout_rounds(24, 4, True) == 4  # at least 4; 8 items a round would be 3
    assert holdout_rounds(200, 4, True) == HOLDOUT_ROUNDS_MAX
    assert holdout_rounds(3, 1, True) == 3 and holdout_rounds(1, 1, True) == 1
    assert holdout_rounds(24, 1, False) == 1  # an engine option differs: no restart per round


def test_vllm_prefix_caching_is_off_in_a_tune_unless_asked():
    # every trial sends the same dev prompts: with vLLM's prefix cache on, the baseline (trial 0)
    # paid cold prefills that later trials did not (dev TTFT 591 ms vs ~250 ms, real CPU tune)
    from harness.tune.run import tune_engine

    engine, notes = tune_engine({"kind": "vllm", "model": "m"})
    assert engine["enable_prefix_caching"] is False and "prefix caching is off" in notes[0]
    assert tune_engine({"kind": "vllm", "enable_prefix_caching": True}) == (
        {"kind": "vllm", "enable_prefix_caching": True}, [])
    assert tune_engine({"kind": "hf"}) == ({"kind": "hf"}, [])
