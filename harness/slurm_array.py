"""SLURM job arrays, the one machinery of every `--executor slurm`: compare's cells, tune's trials
(harness/tune/slurm_trials.py) and study's cells (harness/study/slurm_executor.py). Each writes its
tasks' inputs into a jobs folder, `submit_array` writes the array script there (one task per
index, its log jobs/<index>.out with the task's own start/end stamps) and sbatches it, `follow`
waits on the tasks (scontrol) and `task_record` says how each ended.

    hyperbench compare --engines hf,llamacpp:q8_0,vllm --model smollm2-135m --launcher apptainer \\
        --executor slurm --max-parallel 3 --partition gpu --gpus 1

`compare --executor slurm`: the comparison folder is made here, on the login node, as for a local
compare. Each cell's bench config (fully resolved) is written to <folder>/jobs/<i>.yaml; one array
job (`--array=0-N%P`, P = --max-parallel) runs `hyperbench bench --config
jobs/$SLURM_ARRAY_TASK_ID.yaml` per task, writing its run folder to <folder>/runs/<cell> on the
shared filesystem, exactly where the local compare writes it. This process follows the tasks, then
writes the same compare.json/report as a local run from whatever run folders exist. A task that
fails or is cancelled is recorded as failed (jobs/jobs.json has every task's state, exit code,
start and end); the others finish.

The scheduler is SLURM's own (a plain sbatch array): no home-made queue, and the user's cluster
limits (QOS, fair share) apply unchanged.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from harness.config import BenchConfig, jsonable
from harness.errors import HyperbenchError, Interrupted
from harness.slurm import SlurmJob, node_setup, sbatch_directives, until_done
from harness.slurm_follow import CUT, TERMINAL, _FIELD, _run, sbatch


def cell_config(bench: BenchConfig) -> str:
    tree = jsonable(bench)
    tree["output"]["results_dir"] = str(Path(bench.output.results_dir).resolve())  # the task runs elsewhere
    tree["engine"] = jsonable(bench.engine_config().model_dump(mode="json", exclude={"api_key"}))
    return yaml.safe_dump(tree, sort_keys=False)


def python_on_node(job: SlurmJob) -> str:
    """The Python a task runs harness modules with: the --venv's, else this one (a cluster's
    software lives on the shared filesystem, where the login node and the compute nodes see it)."""
    return "python" if job.venv else shlex.quote(sys.executable)


def array_spec(indices: list[int], max_parallel: int | None) -> str:
    """--array's value: 0-3%2, or 5,6,9 for the tasks of a tune batch (task id = trial index)."""
    lo, hi = min(indices), max(indices)
    spec = f"{lo}-{hi}" if sorted(indices) == list(range(lo, hi + 1)) else ",".join(map(str, sorted(indices)))
    return spec + (f"%{max_parallel}" if max_parallel else "")


def array_script(jobs_dir: Path, indices: list[int], job: SlurmJob, max_parallel: int | None, sif_kinds: list[str],
                 name: str, command: str, what: str) -> str:
    """One array task per index, each running `command` (which reads $SLURM_ARRAY_TASK_ID) in
    `jobs_dir`, its log jobs_dir/<index>.out, stamped with the task's own start and end."""
    directives = sbatch_directives(job.model_copy(update={"job_log": str(jobs_dir / "%a.out")}), name)
    lines = ["#!/bin/bash", *[f"#SBATCH {d}" for d in directives],
             f"#SBATCH --array={array_spec(indices, max_parallel)}", "#", f"# {what}"]
    lines += node_setup(job, sif_kinds)
    lines += [f"cd {shlex.quote(str(jobs_dir))}",
              # the job's own clock, beside scontrol's (whole seconds): when the cell really ran
              'echo "hyperbench-task-start $(date +%s.%N)"',
              'trap \'echo "hyperbench-task-end $(date +%s.%N)"\' EXIT',
              *until_done(command)]
    return "\n".join(line for line in lines if line is not None) + "\n"


def submit_array(jobs_dir: Path, indices: list[int], job: SlurmJob, max_parallel: int | None,
                 sif_kinds: list[str], name: str, command: str, what: str, script: str = "array.sbatch") -> str:
    """Write the array's script beside its tasks' logs and sbatch it; the array's job id."""
    jobs_dir.mkdir(parents=True, exist_ok=True)
    text = array_script(jobs_dir, indices, job, max_parallel, sif_kinds, name, command, what)
    (jobs_dir / script).write_text(text)
    return sbatch(text)


def array_tasks(array_id: str) -> dict[int, dict[str, str]]:
    """task index -> scontrol's record, for every task the controller knows of."""
    r = _run(["scontrol", "show", "job", "-o", array_id])
    out = {}
    for line in r.stdout.splitlines() if r.returncode == 0 else []:
        info = dict(_FIELD.findall(line))
        task = info.get("ArrayTaskId", "")
        if task.isdigit():
            out[int(task)] = info
        elif task:  # pending tasks not yet split off: "2-3%3" or "2,4%3"
            for part in task.split("%")[0].split(","):
                lo, _, hi = part.partition("-")
                if lo.isdigit():
                    for i in range(int(lo), int(hi or lo) + 1):
                        out[i] = info
    return out


def stamps(log: Path) -> dict[str, float]:
    out = {}
    try:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("hyperbench-task-"):
                key, _, value = line.partition(" ")
                out[key.removeprefix("hyperbench-task-")] = float(value)
    except (OSError, ValueError):
        pass
    return out


def follow(array_id: str, labels: dict[int, str], echo: Callable[[str], None], prefix: str,
           poll_s: float = 1.0, stop_hint: str = "") -> dict[int, dict[str, str]]:
    """Follow the array's tasks (index -> label) until every one has ended; scontrol's record of
    each. Ctrl-C stops following, not the tasks (SLURM's, not ours)."""
    seen: dict[int, str] = {}
    try:
        while True:
            tasks = array_tasks(array_id)
            for i, info in sorted(tasks.items()):
                state = info.get("JobState", "?")
                if i in labels and seen.get(i) != state:
                    seen[i] = state
                    echo(f"{prefix}: {labels[i]} (task {array_id}_{i}): {state}")
            if set(labels) <= set(tasks) and all(tasks[i].get("JobState") in TERMINAL for i in labels):
                return tasks
            if not tasks:
                raise HyperbenchError(f"job array {array_id} vanished from scontrol before it ended")
            time.sleep(poll_s)
    except KeyboardInterrupt:
        raise Interrupted(f"stopped following job array {array_id}; its tasks go on (scancel {array_id} "
                          f"stops them){stop_hint}") from None


def task_record(jobs_dir: Path, array_id: str, i: int, label: str, info: dict[str, str]) -> dict:
    """What a task did: state, exit code, node, both clocks; for one that did not complete, the
    reason with its log's last line (the job's own error)."""
    state = info.get("JobState", "UNKNOWN")
    log = jobs_dir / f"{i}.out"
    rec = {"cell": label, "task": f"{array_id}_{i}", "state": state, "exit_code": info.get("ExitCode"),
           "node": info.get("NodeList"), "slurm_start": info.get("StartTime"), "slurm_end": info.get("EndTime"),
           **stamps(log), "log": str(log)}
    if state != "COMPLETED":
        lines = [ln for ln in (log.read_text(errors="replace").splitlines() if log.is_file() else [])
                 if ln.strip() and not ln.startswith("hyperbench-task-")]
        rec["error"] = f"{state}" + (" (cancelled)" if state in CUT else "") + (f": {lines[-1]}" if lines else "")
    return rec


def run_cells(folder: Path, cells: list[tuple[str, BenchConfig]], job: SlurmJob, max_parallel: int | None,
              echo: Callable[[str], None], poll_s: float = 1.0) -> list[dict]:
    """Submit the cells as one array, follow it to the end; one record per cell (jobs/jobs.json)."""
    jobs_dir = folder / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    for i, (_, bench) in enumerate(cells):
        (jobs_dir / f"{i}.yaml").write_text(cell_config(bench))
    sif_kinds = sorted({b.engine_config().kind for _, b in cells if b.target.launcher == "apptainer"})
    indices = list(range(len(cells)))
    array_id = submit_array(jobs_dir, indices, job, max_parallel, sif_kinds, job.job_name or "hyperbench-compare",
                            'hyperbench bench --config "$SLURM_ARRAY_TASK_ID.yaml"',
                            "hyperbench compare --executor slurm: one task per cell; configs in this folder.")
    echo(f"compare: job array {array_id}, {len(cells)} cells"
         + (f", at most {max_parallel} at once" if max_parallel else ""))
    tasks = follow(array_id, {i: label for i, (label, _) in enumerate(cells)}, echo, "compare", poll_s,
                   f"; compare their run folders later: hyperbench compare {folder}/runs/*")
    records = []
    for i, (label, _) in enumerate(cells):
        rec = task_record(jobs_dir, array_id, i, label, tasks[i])
        if "error" in rec:
            echo(f"compare: {label} failed: {rec['error']}")
        records.append(rec)
    (jobs_dir / "jobs.json").write_text(json.dumps(records, indent=2))
    return records
