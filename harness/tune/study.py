"""The Ax side of a tune: one `ax.api.client.Client`, its state saved atomically after every
change, so a killed tune resumes from the file with no trial lost or run twice.

Reproducibility: Ax's own seed is not part of its JSON snapshot, so every generation call is
seeded here from (run seed, trial index): a resumed run proposes what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

from harness.errors import HyperbenchError
from harness.results import temp_beside
from harness.tune.objectives import Constraint, Objective
from harness.tune.space import SearchSpace

STATE = "ax_state.json"
QUIET = ("botorch", "gpytorch", "linear_operator")


@contextlib.contextmanager
def _quiet():
    """Ax logs every trial at INFO and warns about its own internals: the run folder is the log.
    Ax attaches its stderr handler to the "ax" logger and advises setting the level there."""
    import ax.api.client  # noqa: F401  (the "ax" logger has its handler from here on)

    handlers = list(logging.getLogger("ax").handlers)
    levels = [h.level for h in handlers]
    others = [logging.getLogger(n) for n in QUIET]
    other_levels = [lg.level for lg in others]
    for h in handlers:
        h.setLevel(logging.ERROR)
    for lg in others:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for h, lv in zip(handlers, levels):
            h.setLevel(lv)
        for lg, lv in zip(others, other_levels):
            lg.setLevel(lv)


class Study:
    def __init__(self, client, path: Path, seed: int):
        self.client = client
        self.path = Path(path)
        self.seed = seed

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, folder: Path, space: SearchSpace, objectives: list[Objective],
               constraints: list[Constraint], strategy: str, seed: int, init_trials: int | None,
               tracking: list[str]) -> Study:
        with _quiet():
            from ax.api.client import Client

            client = Client()
            client.configure_experiment(parameters=[p.ax() for p in space.params], name="hyperbench-tune")
            client.configure_optimization(
                objective=", ".join(o.ax() for o in objectives),
                outcome_constraints=[c.ax() for c in constraints] or None,
            )
            if tracking:
                client.configure_tracking_metrics(tracking)
            client.configure_generation_strategy(
                method="random_search" if strategy == "random" else "fast",
                initialization_budget=init_trials, initialization_random_seed=seed,
            )
            Path(folder).mkdir(parents=True, exist_ok=True)
            study = cls(client, Path(folder) / STATE, seed)
            index = client.attach_baseline(_ax_values(space, space.baseline()))
        if index != 0:  # pragma: no cover - Ax numbers trials from 0
            raise HyperbenchError(f"Ax numbered the baseline trial {index}, not 0")
        study.save()
        return study

    @classmethod
    def load(cls, folder: Path, seed: int) -> Study:
        path = Path(folder) / STATE
        try:
            with _quiet():
                from ax.api.client import Client

                client = Client.load_from_json_file(str(path))
        except FileNotFoundError:
            raise HyperbenchError(f"{path} not found: the tune never got past its set-up") from None
        except Exception as e:  # a decoding failure of Ax's own format
            raise HyperbenchError(f"cannot read the Ax state {path}: {type(e).__name__}: {e}") from None
        return cls(client, path, seed)

    def save(self) -> None:
        """Ax writes the file in place; write a temporary file beside it and rename it over."""
        fd, tmp = temp_beside(self.path)  # the mode open() would give: others may read the run folder
        os.close(fd)
        try:
            with _quiet():
                self.client.save_to_json_file(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # ------------------------------------------------------------------ trials

    def trials(self) -> dict[int, tuple[str, dict, str]]:
        """index -> (status name, parameters, generator) of every trial Ax knows."""
        out = {}
        for index, t in sorted(self.client._experiment.trials.items()):
            arm = t.arm
            gr = getattr(t, "generator_run", None)
            node = getattr(gr, "_generation_node_name", None) if gr is not None else None
            out[index] = (t.status.name.lower(), dict(arm.parameters) if arm else {},
                          "baseline" if index == 0 else (node or "-"))
        return out

    def running(self) -> list[int]:
        return [i for i, (status, _, _) in self.trials().items() if status == "running"]

    def count(self) -> int:
        return len(self.client._experiment.trials)

    def new_trial(self) -> tuple[int, dict] | None:
        """Ask Ax for one more trial (seeded by its index); None when Ax has nothing new to offer
        (e.g. every point of a small discrete space was tried)."""
        got = self.new_trials(1)
        return got[0] if got else None

    def new_trials(self, n: int) -> list[tuple[int, dict]]:
        """Ask Ax for up to n trials at once (a batch to run side by side), seeded by the index of
        the first: Ax treats every RUNNING trial as a pending point and spreads the batch
        around them (GenerationStrategy.gen extracts and extends the pending observations), so no
        two trials of a batch, or of a batch and the trials still running, ask the same thing.
        Fewer than n (or none) when Ax can offer no more: its initialization step may cap a batch
        at what is left of it, and a small discrete space runs out."""
        from ax.utils.common.random import with_rng_seed

        with _quiet(), with_rng_seed((self.seed * 1_000_003 + self.count()) % 2**31):
            try:
                got = self.client.get_next_trials(max_trials=n)
            except Exception as e:  # Ax raises its own types when the space is exhausted
                if "exhaust" in str(e).lower() or "dedup" in str(e).lower() or "no more" in str(e).lower():
                    return []
                raise
        return [(index, dict(params)) for index, params in sorted(got.items())]

    def complete(self, index: int, raw: dict) -> None:
        with _quiet():
            self.client.complete_trial(trial_index=index, raw_data=raw)

    def fail(self, index: int, reason: str) -> None:
        with _quiet():
            self.client.mark_trial_failed(trial_index=index, failed_reason=reason[:500])

    def best(self) -> int | None:
        """Ax's pick for a single objective (model predictions, so noise counts); None if it has
        none (no feasible trial, or a Pareto search)."""
        with _quiet():
            try:
                _, _, index, _ = self.client.get_best_parameterization(use_model_predictions=True)
                return int(index)
            except Exception:  # Ax raises when nothing is feasible or the model cannot fit
                return None


def _ax_values(space: SearchSpace, values: dict) -> dict:
    out = {}
    for p in space.params:
        v = values[p.name]
        if p.type == "choice" and not isinstance(v, (bool, int, float)):
            v = str(v)
        out[p.name] = v
    return out
