"""`hyperbench slurm`: a ready SLURM batch script for a bench run under Apptainer.

    hyperbench slurm --engine vllm --model smollm2-135m --concurrency 1,8 --partition gpu > job.sbatch
    sbatch job.sbatch

The bench flags are validated here, into the same config tree `bench` uses, and the resolved
config travels inside the script as YAML (`hyperbench bench --config`), so the job runs exactly
what was validated, with `--launcher apptainer` (engines as SIF instances, `--nv` on GPU nodes).
Compute nodes are usually offline: the script sets the hub offline and checks, before anything
starts, that apptainer and the engine's SIF are there; the comment block says what to stage on a
login node first (the SIF, the model).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from harness.config import BenchConfig, jsonable


class SlurmJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_name: str | None = Field(None, description="SLURM job name (default: hyperbench-<engine>).")
    partition: str | None = Field(None, description="SLURM partition.")
    account: str | None = Field(None, description="SLURM account to charge.")
    qos: str | None = Field(None, description="SLURM quality of service.")
    time_limit: str = Field("01:00:00", description="SLURM time limit (HH:MM:SS).")
    gpus: int = Field(1, ge=0, description="GPUs for the job (--gres=gpu:N; 0 for a CPU job).")
    cpus_per_task: int = Field(8, ge=1, description="CPU cores for the job.")
    mem: str = Field("64G", description="Memory for the job (SLURM syntax).")
    job_log: str = Field("%x-%j.out", description="SLURM --output file pattern.")
    sif_dir: str | None = Field(None, description="Folder of the engines' SIF files on the cluster "
                                "(default: $HYPERBENCH_CACHE/sif).")
    cache: str | None = Field(None, description="HYPERBENCH_CACHE on the cluster (default: "
                              "$HYPERBENCH_CACHE, else ~/.cache/hyperbench).")
    modules: list[str] = Field(default_factory=list, description="Environment modules to load, e.g. apptainer.")
    venv: str | None = Field(None, description="Virtualenv with hyperbench installed, to activate.")
    submit: bool = Field(False, description="Submit the script with sbatch and follow the job (state, "
                         "log) until it ends; the exit status is the run's.")


def sbatch_directives(job: SlurmJob, name: str) -> list[str]:
    sbatch = [f"--job-name={name}"]
    for key, value in (("partition", job.partition), ("account", job.account), ("qos", job.qos)):
        if value:
            sbatch.append(f"--{key}={value}")
    sbatch += [f"--time={job.time_limit}", "--nodes=1", "--ntasks=1", f"--cpus-per-task={job.cpus_per_task}",
               f"--mem={job.mem}", f"--output={job.job_log}"]
    if job.gpus:
        sbatch.append(f"--gres=gpu:{job.gpus}")
    return sbatch


def node_setup(job: SlurmJob, sif_kinds: list[str]) -> list[str]:
    """The job's first lines: modules, venv, the cache, the hub off, and a one-line error (the
    job's last line, which `--submit` repeats) for whatever the node lacks, before anything runs.
    `sif_kinds`: engines whose SIF the job needs (none when they run as processes)."""
    cache = shlex.quote(job.cache) if job.cache else '"${HYPERBENCH_CACHE:-$HOME/.cache/hyperbench}"'
    sif_dir = shlex.quote(job.sif_dir) if job.sif_dir else '"$HYPERBENCH_CACHE/sif"'
    lines = ["", "set -euo pipefail"]
    lines += [f"module load {shlex.quote(m)}" for m in job.modules]
    if job.venv:
        lines.append(f"source {shlex.quote(str(Path(job.venv) / 'bin' / 'activate'))}")
    lines += [
        f"export HYPERBENCH_CACHE={cache}",
        f"export HYPERBENCH_SIF_DIR={sif_dir}",
        "# compute nodes have no hub: everything was staged ahead",
        "export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1",
        "" if job.gpus else "export HYPERBENCH_GPUS=none",
    ]
    if sif_kinds:
        lines += ["command -v apptainer >/dev/null || command -v singularity >/dev/null \\",
                  "    || { echo \"hyperbench: no apptainer on $(hostname) (module load apptainer?)\" >&2; exit 1; }"]
    for kind in sif_kinds:
        lines += [f"[ -f \"$HYPERBENCH_SIF_DIR/{kind}.sif\" ] \\",
                  f"    || {{ echo \"hyperbench: no $HYPERBENCH_SIF_DIR/{kind}.sif (apptainer build it first)\" >&2; exit 1; }}"]
    lines.append("command -v hyperbench >/dev/null || { echo \"hyperbench: not on PATH (--venv?)\" >&2; exit 1; }")
    return lines


def until_done(command: str) -> list[str]:
    """Run `command` and wait for it even through SIGTERM. scancel and the time limit signal every
    process of the job: hyperbench then marks its run incomplete and stops its engine. A shell that
    died at once would end the job (and the follower's wait) before that was written, and leave
    hyperbench untracked; so the shell outlives it, and the job ends when hyperbench does (or at
    KillWait's SIGKILL)."""
    return [f"{command} &",
            "child=$!",
            "trap : TERM INT",
            "status=0",
            'while kill -0 "$child" 2>/dev/null; do wait "$child" && status=0 || status=$?; done',
            'exit "$status"']


def render(bench: BenchConfig, job: SlurmJob, argv: list[str] | None = None) -> str:
    from harness import __version__

    engine = bench.engine_config()
    kind = engine.kind
    cfg = bench.model_copy(update={"target": bench.target.model_copy(update={"launcher": "apptainer"})})
    tree = jsonable(cfg)
    # the engine fully resolved (defaults included): the job runs this config, not the defaults
    # of whatever hyperbench version the cluster has
    tree["engine"] = jsonable(engine.model_dump(mode="json", exclude={"api_key"}))
    run_name = tree["output"].pop("run_name", None)
    config_yaml = yaml.safe_dump(tree, sort_keys=False).rstrip()
    name = job.job_name or f"hyperbench-{kind}"
    shown = list(argv or [])
    for i, arg in enumerate(shown):  # the command line is echoed into the script: no secret in it
        if arg == "--api-key" and i + 1 < len(shown):
            shown[i + 1] = "***"
        elif arg.startswith("--api-key="):
            shown[i] = "--api-key=***"

    sbatch = sbatch_directives(job, name)
    model = engine.model
    lines = ["#!/bin/bash", *[f"#SBATCH {s}" for s in sbatch], "#",
             f"# Generated by hyperbench {__version__} on {time.strftime('%Y-%m-%d %H:%M')}:",
             f"#   {shlex.join(['hyperbench', 'slurm', *shown])}",
             "# Submit: sbatch <this file>. Once, where there is network (a login node):",
             f"#   apptainer build <sif dir>/{kind}.sif docker-daemon://hyperbench/{kind}:latest"
             f"   (or docker://<your registry>/hyperbench/{kind}:latest)",
             f"#   python -c \"from harness.models import resolve_model; resolve_model('{model}')\""
             "   (stages the model into the cache)"]  # fmt: skip
    if engine.api_key:
        lines.append("# The API key was left out of this file: pass it with --api-key on the bench line.")
    lines += node_setup(job, [kind])
    lines += [
        'cd "${SLURM_SUBMIT_DIR:-.}"',
        "",
        'config="$(mktemp)"',
        "trap 'rm -f \"$config\"' EXIT",
        "cat > \"$config\" <<'HYPERBENCH_CONFIG'",
        config_yaml,
        "HYPERBENCH_CONFIG",
        "",
        *until_done("hyperbench bench --config \"$config\" --run-name "
                    + (shlex.quote(run_name) if run_name else '"${SLURM_JOB_NAME:-hyperbench}-${SLURM_JOB_ID:-local}"')),
    ]  # fmt: skip
    return "\n".join(line for line in lines if line is not None) + "\n"
