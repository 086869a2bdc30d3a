"""`hyperbench slurm ... --submit`: sbatch the generated script, follow the job, say how it ended.

    hyperbench slurm --engine llamacpp --model smollm2-135m --gpus 0 --submit
    job 42 submitted (log: /home/u/hyperbench-llamacpp-42.out)
    job 42: PENDING (Resources)
    job 42: RUNNING on node07
      | ... the job's own log, as it grows ...
    job 42: COMPLETED: run folder /home/u/results/hyperbench-llamacpp-42 (complete)

Following needs only what every SLURM installation has: `sbatch --parsable` and `scontrol show
job -o` (no accounting database: a finished job stays visible for MinJobAge, 5 minutes by
default, and the follower sees it end within a second or two). The run folder lands on the shared
filesystem where the job wrote it; the follower only reads its summary.

How a job ends, as the user sees it:
- COMPLETED: the run folder and its status; exit 0.
- CANCELLED / TIMEOUT / PREEMPTED (scancel, the time limit: SIGTERM, then SIGKILL after KillWait):
  the harness in the job caught SIGTERM and marked its run incomplete; its own last line (what was
  kept, how to resume) is repeated with the run folder; exit 130, as for Ctrl-C.
- FAILED before a run folder existed (no SIF, no apptainer, a bad flag that only the job's node
  rejects): one line, the job's own error (the last line of its log); exit 1.
- Ctrl-C of the follower: the job goes on; one line says so and how to stop it (scancel).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from harness.errors import HyperbenchError, Interrupted

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT"}
CUT = {"CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE", "NODE_FAIL"}  # stopped from outside
# pending reasons that no amount of waiting resolves: the job asks what the partition or the
# account can never give (sbatch accepts such jobs unless the cluster sets EnforcePartLimits)
NEVER = {"PartitionConfig", "BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit", "AccountNotAllowed",
         "QOSNotAllowed", "InvalidAccount", "InvalidQOS", "ReqNodeNotAvail,_UnavailableNodes:"}


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
    except FileNotFoundError:
        raise HyperbenchError(f"`{cmd[0]}` is not on PATH: --submit runs on a SLURM login node "
                              "(or print the script without --submit and sbatch it there)") from None
    except subprocess.TimeoutExpired:
        raise HyperbenchError(f"`{' '.join(cmd[:2])}` did not answer in 60 s (is slurmctld up?)") from None


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def sbatch(script: str, cwd: Path | None = None) -> str:
    """Submit the script on stdin; the job id. A refusal (bad partition, account...) is sbatch's
    own line."""
    r = _run(["sbatch", "--parsable"], input=script, cwd=cwd)
    if r.returncode != 0:
        why = last_line(r.stderr) or last_line(r.stdout) or f"exit code {r.returncode}"
        raise HyperbenchError(f"sbatch refused the job: {why.removeprefix('sbatch: error: ')}")
    job_id = r.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise HyperbenchError(f"sbatch gave no job id: {r.stdout.strip()!r}")
    return job_id


_FIELD = re.compile(r"(\w+(?::\w+)?)=(\S*)")


def job_info(job_id: str) -> dict[str, str] | None:
    """scontrol's view of the job (JobState, Reason, ExitCode, StdOut, NodeList...); None once
    the controller has forgotten it."""
    r = _run(["scontrol", "show", "job", "-o", job_id])
    if r.returncode != 0 or not r.stdout.strip():
        return None
    return dict(_FIELD.findall(r.stdout.splitlines()[0]))


def wait_completing(job_id: str, poll_s: float, limit_s: float = 600) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        r = _run(["squeue", "-h", "-j", job_id, "-o", "%T"])
        if "COMPLETING" not in r.stdout:
            break
        time.sleep(poll_s)
    time.sleep(poll_s)  # the node flushes the log's last lines after the state changes


class LogTail:
    """New complete lines of the job's log since the last call (the file appears when the job
    starts, on the shared filesystem)."""

    def __init__(self, path: Path | None):
        self.path, self.offset = path, 0

    def read(self) -> list[str]:
        if self.path is None or not self.path.is_file():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode(errors="replace").splitlines()


def follow(job_id: str, echo: Callable[[str], None], poll_s: float = 1.0, show_log: bool = True) -> dict[str, str]:
    """Echo the job's state changes and log lines until it ends; its last scontrol record."""
    last_state, info = None, {}
    tail = None
    while True:
        now = job_info(job_id)
        if now is None:  # forgotten (MinJobAge passed while we slept): what we saw last stands
            info.setdefault("JobState", "UNKNOWN")
            break
        info = now
        if tail is None and info.get("StdOut"):
            tail = LogTail(Path(info["StdOut"]))
        state = info.get("JobState", "UNKNOWN")
        if state == "PENDING" and info.get("Reason") in NEVER:
            _run(["scancel", job_id])
            raise HyperbenchError(f"job {job_id} can never start here ({info['Reason']}: it asks more CPUs, "
                                  "memory, time or GPUs than the partition has, or an account/QOS it may "
                                  "not use): cancelled; see `scontrol show partition`")
        if state != last_state:
            where = {"PENDING": f" ({info.get('Reason', '?')})", "RUNNING": f" on {info.get('NodeList', '?')}"}
            if state not in TERMINAL:
                echo(f"job {job_id}: {state}{where.get(state, '')}")
            last_state = state
        for line in tail.read() if (tail and show_log) else []:
            echo(f"  | {line}")
        if state in TERMINAL:
            # a cancelled job's processes are still unwinding (marking the run incomplete, tearing
            # the engine down) until KillWait ends them: squeue says COMPLETING until then
            wait_completing(job_id, poll_s)
            for line in tail.read() if (tail and show_log) else []:
                echo(f"  | {line}")
            break
        time.sleep(poll_s)
    return info


def run_folder(results_dir: Path, run_name: str) -> tuple[Path, dict | None]:
    folder = results_dir / run_name
    try:
        return folder, json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return folder, None


def outcome(job_id: str, info: dict[str, str], folder: Path, summary: dict | None, log: Path | None) -> tuple[int, str]:
    """(exit code, the one line that says how the job ended)."""
    state = info.get("JobState", "UNKNOWN")
    code = info.get("ExitCode", "?")
    log_text = log.read_text(errors="replace") if log and log.is_file() else ""
    job_says = last_line(log_text)
    status = (summary or {}).get("status")
    if state == "COMPLETED" and status == "complete":
        return 0, f"job {job_id}: COMPLETED: run folder {folder} (complete)"
    if summary is not None:
        reason = summary.get("reason") or ""
        said = f"; the job said: {job_says}" if job_says else ""
        rc = 130 if state in CUT else 1
        return rc, f"job {job_id}: {state} (exit {code}): run folder {folder} is {status}" \
                   + (f" ({reason})" if reason else "") + said
    if state in CUT:
        return 130, f"job {job_id}: {state} before its run folder existed" + (f"; the job said: {job_says}" if job_says else "")
    return 1, (f"job {job_id}: {state} (exit {code}): {job_says or 'no output'}"
               + (f" [log: {log}]" if log else ""))


def submit(bench, job, argv: list[str] | None, echo: Callable[[str], None], poll_s: float = 1.0) -> tuple[int, str]:
    """Render the script for this bench (results folder made absolute: the follower reads it
    back), submit it from the current folder, follow it to its end."""
    from harness.slurm import render

    results_dir = Path(bench.output.results_dir).resolve()
    bench = bench.model_copy(update={"output": bench.output.model_copy(update={"results_dir": results_dir})})
    job_id = sbatch(render(bench, job, argv))
    run_name = bench.output.run_name or f"{job.job_name or 'hyperbench-' + bench.engine_config().kind}-{job_id}"
    info = job_info(job_id) or {}
    log = Path(info["StdOut"]) if info.get("StdOut") else None
    echo(f"job {job_id} submitted" + (f" (log: {log})" if log else ""))
    try:
        info = follow(job_id, echo, poll_s)
    except KeyboardInterrupt:
        raise Interrupted(f"stopped following job {job_id}; it goes on (scancel {job_id} stops it; "
                          f"its run folder will be {results_dir / run_name})") from None
    log = Path(info["StdOut"]) if info.get("StdOut") else log
    folder, summary = run_folder(results_dir, run_name)
    return outcome(job_id, info, folder, summary, log)
