"""`tune --executor slurm`: each trial of a batch is a task of one SLURM job array (the array
machinery of `compare --executor slurm`, harness/slurm_array.py), task id = trial index, running
`python -m harness.tune.trial_job RUN_DIR $SLURM_ARRAY_TASK_ID`; its log is jobs/<index>.out.

Where each trial runs is written into its trial.json before this process waits on it, so a
resumed tune (after this process was killed) finds every trial's job:
- `job_name` is written before sbatch, `job` (the array's id) right after;
- a trial whose job is still known to the scheduler is adopted (followed, not submitted again);
- a trial whose job ended without a result (its log exists) is failed with the job's last line;
- a trial that never reached the scheduler (no job under its name, no log) is submitted.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path

from harness.errors import HyperbenchError
from harness.slurm import SlurmJob
from harness.slurm_array import array_tasks, follow, python_on_node, submit_array, task_record
from harness.slurm_follow import _run
from harness.tune.batch import ENDED
from harness.tune.loop import TrialStore

JOBS = "jobs"


def _queued_under(name: str) -> str | None:
    """The id of a job array of this name that the scheduler still holds (pending or running)."""
    r = _run(["squeue", "-h", "-n", name, "-o", "%F"])
    ids = sorted(set(r.stdout.split())) if r.returncode == 0 else []
    return ids[0] if ids else None


class SlurmTrials:
    def __init__(self, run_dir: Path, job: SlurmJob, parallel: int, sif_kinds: list[str],
                 echo: Callable[[str], None], poll_s: float = 1.0):
        self.run_dir, self.job, self.parallel, self.sif_kinds = Path(run_dir), job, parallel, sif_kinds
        self.echo, self.poll_s = echo, poll_s
        self.store = TrialStore(run_dir)
        self.jobs_dir = self.run_dir / JOBS

    def _fail(self, rec: dict, why: str) -> None:
        rec.update(status="failed", error=why, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.store.write(rec["index"], rec)

    def __call__(self, batch: list[dict]) -> None:
        following: dict[str, list[int]] = {}
        submit: list[dict] = []
        for rec in batch:
            if rec.get("status") in ENDED:
                continue
            index, log = rec["index"], self.jobs_dir / f"{rec['index']}.out"
            array = rec.get("job") or (_queued_under(rec["job_name"]) if rec.get("job_name") else None)
            if array and index in array_tasks(array):  # the scheduler still knows it: adopt
                if not rec.get("job"):
                    self.store.write(index, {**rec, "job": array})
                following.setdefault(array, []).append(index)
            elif log.is_file():  # it ran, and ended (forgotten by the scheduler) without a result
                self._fail(rec, task_record(self.jobs_dir, array or "?", index, f"trial {index}", {})["error"])
            else:  # it never reached the scheduler
                submit.append(rec)
        if submit:
            following.setdefault(self._submit(submit), []).extend(r["index"] for r in submit)
        for array, indices in following.items():
            tasks = follow(array, {i: f"trial {i}" for i in indices}, self.echo, "tune", self.poll_s,
                           f"; then: hyperbench tune --resume {self.run_dir}")
            for i in indices:
                rec = self.store.read(i)
                slurm = task_record(self.jobs_dir, array, i, f"trial {i}", tasks[i])
                if rec.get("status") not in ENDED:  # the job died before writing its result
                    rec.update(status="failed", error=slurm.get("error") or "the job wrote no result",
                               finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                self.store.write(i, {**rec, "slurm": {k: v for k, v in slurm.items() if k != "cell"}})

    def _submit(self, recs: list[dict]) -> str:
        first = recs[0]["index"]
        name = f"{self.job.job_name or 'hyperbench-tune'}-{self.run_dir.name}-{first}"
        for rec in recs:  # before sbatch: a resume that finds no job id looks for this name
            rec["job_name"] = name
            self.store.write(rec["index"], rec)
        command = f"{python_on_node(self.job)} -m harness.tune.trial_job {shlex.quote(str(self.run_dir))} " \
                  '"$SLURM_ARRAY_TASK_ID"'
        array = submit_array(self.jobs_dir, [r["index"] for r in recs], self.job, self.parallel, self.sif_kinds,
                             name, command, "hyperbench tune --executor slurm: one task per trial (task id = "
                             "trial index)", script=f"trials-{first}.sbatch")
        for rec in recs:
            rec["job"] = array
            self.store.write(rec["index"], rec)
        self.echo(f"tune: job array {array}: trials {', '.join(str(r['index']) for r in recs)}")
        return array

    def holdout(self) -> None:
        """The held-out phase as one job (its engine on a compute node, as the trials'); waits for it."""
        from harness.results import read_json
        from harness.tune.trial_job import HOLDOUT

        marker = self.jobs_dir / "holdout.json"
        array = read_json(marker).get("job") if marker.is_file() else None
        if not (array and 0 in array_tasks(array)):  # none running to adopt: submit one
            command = f"{python_on_node(self.job)} -m harness.tune.trial_job {shlex.quote(str(self.run_dir))} holdout"
            array = submit_array(self.jobs_dir / "holdout", [0], self.job, None, self.sif_kinds,
                                 f"{self.job.job_name or 'hyperbench-tune'}-{self.run_dir.name}-holdout", command,
                                 "hyperbench tune --executor slurm: the held-out phase")
            from harness.results import atomic_write_json

            atomic_write_json(marker, {"job": array})
        tasks = follow(array, {0: "held-out phase"}, self.echo, "tune", self.poll_s,
                       f"; then: hyperbench tune --resume {self.run_dir}")
        if not (self.run_dir / HOLDOUT).is_file():
            rec = task_record(self.jobs_dir / "holdout", array, 0, "held-out phase", tasks[0])
            raise HyperbenchError(f"the held-out phase's job {array}_0 ended without a result: {rec.get('error')}")
