"""What the HPC tiers share: finding apptainer and the one-node SLURM cluster, and SIF files built
(once, cached) from the CPU engine images that tests/test_containers.py builds.

scripts/apptainer_setup.sh and scripts/slurm_setup.sh make both on a bare Debian machine
(scripts/test.sh runs them); a test whose part is missing skips with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFS = REPO / "containers" / "apptainer"


def cache() -> Path:
    return Path(os.environ.get("HYPERBENCH_CACHE") or Path.home() / ".cache" / "hyperbench")


def apptainer() -> str:
    """The apptainer binary (PATH, HYPERBENCH_APPTAINER, or scripts/apptainer_setup.sh's
    wrapper), or an exception naming why there is none."""
    for candidate in (os.environ.get("HYPERBENCH_APPTAINER"), shutil.which("apptainer"),
                      str(cache() / "apptainer" / "bin" / "apptainer")):
        if candidate and Path(candidate).is_file():
            r = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=60)
            if r.returncode == 0:
                return candidate
            raise RuntimeError(f"{candidate} --version failed: {r.stderr.strip()[-300:]}")
    raise RuntimeError("no apptainer (run scripts/apptainer_setup.sh, or put apptainer on PATH)")


def slurm_up() -> str | None:
    """None when a SLURM controller answers with an idle/mixed node, else why not."""
    if shutil.which("sinfo") is None:
        return "no SLURM client here (run scripts/slurm_setup.sh)"
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=60)
    states = r.stdout.split()
    if r.returncode != 0 or not {"idle", "mixed", "allocated"} & set(states):
        return f"no usable SLURM node ({(r.stderr.strip() or ' '.join(states) or '?')[:200]}): run scripts/slurm_setup.sh"
    return None


def instances(binary: str) -> list[str]:
    r = subprocess.run([binary, "instance", "list", "--json"], capture_output=True, text=True, timeout=60)
    return [i["instance"] for i in json.loads(r.stdout or "{}").get("instances") or []]


def build_sif(binary: str, docker, name: str) -> Path:
    """<cache>/sif/<name>.sif from containers/apptainer/<name>.def (Bootstrap: docker-daemon),
    rebuilt only when the Docker image changed (its id is kept beside the SIF)."""
    image_id = docker.run("image", "inspect", "-f", "{{.Id}}", f"hyperbench/{name}:latest").stdout.strip()
    sif_dir = cache() / "sif"
    sif_dir.mkdir(parents=True, exist_ok=True)
    sif, stamp = sif_dir / f"{name}.sif", sif_dir / f"{name}.sif.image-id"
    if sif.is_file() and stamp.is_file() and stamp.read_text().strip() == image_id:
        return sif
    start = time.monotonic()
    tmp = sif_dir / f"{name}.sif.building"
    # --notest: the build's own %test asks root's full capability set, which this sandbox lacks
    # (the reason for `root default capabilities = no`); `apptainer test` runs it right after
    # lz4, not the default gzip: ~4x faster to build on 2 cores (llamacpp.sif: 32 s), and this
    # apptainer mounts it (a user's cluster may only take gzip: the README's builds use the default)
    r = subprocess.run([binary, "build", "--notest", "-F", "--mksquashfs-args", "-comp lz4", str(tmp),
                        str(DEFS / f"{name}.def")], capture_output=True,
                       text=True, timeout=2400, env={**os.environ, "APPTAINER_TMPDIR": str(sif_dir)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    r = subprocess.run([binary, "test", str(tmp)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "hyperbench" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
    tmp.replace(sif)
    stamp.write_text(image_id)
    print(f"\n[apptainer] built {sif.name} ({sif.stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - start:.0f} s",
          file=sys.stderr)
    return sif


def hyperbench(*args, env=None, timeout=900, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
                                                **(env or {})}, **kw)


def wait_for_records(path: Path, n: int, proc: subprocess.Popen | None = None, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and len(path.read_text().splitlines()) >= n):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"ended before {n} records: " + (proc.stdout.read() if proc.stdout else ""))
        assert time.monotonic() < deadline, f"fewer than {n} records in {path} after {timeout_s:.0f} s"
        time.sleep(0.3)


def queued(job_name: str) -> list[str]:
    """Ids of the jobs (array tasks: <array>_<i>) of this name that SLURM still holds."""
    return subprocess.run(["squeue", "-h", "-n", job_name, "-o", "%i"], capture_output=True, text=True).stdout.split()


def stop(proc: subprocess.Popen | None, job_name: str) -> None:
    """Whatever a test leaves running, gone: its harness process and every job of its name."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    subprocess.run(["scancel", "-n", job_name])


def cancel_when_recorded(proc: subprocess.Popen, records: Path, n: int, job_name: str,
                         task_suffix: str = "") -> tuple[str, str, str]:
    """Once `records` holds n records, scancel the job of `job_name` (the array task whose id ends
    in `task_suffix`) and let `proc` (the follower) end; nothing is left running either way.
    Returns (the job cancelled, proc's stdout, its stderr)."""
    try:
        wait_for_records(records, n, proc)
        job = next(t for t in queued(job_name) if t.endswith(task_suffix))
        subprocess.run(["scancel", job], check=True)
        out, err = proc.communicate(timeout=600)
    finally:
        stop(proc, job_name)
    return job, out, err
