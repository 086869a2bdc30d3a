"""Apptainer launcher: the engine's image as a SIF instance, for HPC nodes (no root, no daemon).

    apptainer build hf.sif docker-daemon://hyperbench/hf:latest     # where the image was built
    hyperbench bench --launcher apptainer --engine hf ...            # on the node

The engine runs in a named instance (`apptainer instance start`), serving through the same
`serve.sh` as in Docker (`apptainer exec instance://NAME ...`), on a free loopback port (Apptainer
shares the host's network). Teardown stops the server, then the instance, whatever happened.

- SIF file: $HYPERBENCH_SIF_<KIND>, else $HYPERBENCH_SIF_DIR/<kind>.sif (default
  <cache>/sif/<kind>.sif).
- GPUs: `--nv` when the node has an NVIDIA GPU (HYPERBENCH_GPUS=none|all overrides).
- The image is read-only: the model folder is bound read-only at its own path, the hyperbench
  cache read-write at its own path, and every writable cache (HF_HOME, TRITON_CACHE_DIR,
  VLLM_CACHE_ROOT, TORCHINDUCTOR_CACHE_DIR, XDG_CACHE_HOME) points into it. HYPERBENCH_BINDS
  adds binds (`src[:dst[:opts]],...`, Apptainer's own syntax).
- Nothing left behind: an instance is named hyperbench-<engine>-<pid of the harness>-<random>,
  and every start first stops this user's hyperbench instances whose harness is gone (killed with
  -9, a node's OOM killer): a dead harness's engine never holds the GPU or the port for the next.
- Offline: the harness resolved the model before the engine starts, so the engine never needs
  the hub: HF_HUB_OFFLINE=1 and no usage statistics, with --cleanenv so the host's environment
  (PYTHONPATH, a conda env...) does not leak into the image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

from harness.errors import EngineError, HyperbenchError
from harness.launchers.base import Endpoint, Launcher, wait_healthy
from harness.launchers.containers import model_root, offline_env, serve_args
from harness.launchers.process import check_port_free, free_port, last_log_lines


def apptainer_binary() -> str | None:
    return shutil.which(os.environ.get("HYPERBENCH_APPTAINER", "apptainer")) or shutil.which("singularity")


def sif_path(kind: str) -> Path:
    if env := os.environ.get(f"HYPERBENCH_SIF_{kind.upper()}"):
        return Path(env)
    from harness.models import cache_dir

    return Path(os.environ.get("HYPERBENCH_SIF_DIR") or cache_dir() / "sif") / f"{kind}.sif"


def want_gpu() -> bool:
    want = os.environ.get("HYPERBENCH_GPUS", "auto").strip().lower()
    if want != "auto":
        return want not in ("none", "")
    from harness.telemetry import nvml

    return nvml() is not None or shutil.which("nvidia-smi") is not None


def engine_env(cache: Path, port: int) -> dict[str, str]:
    """Environment of the server inside the instance (all writable paths under the cache). The API
    key is not here: it goes through APPTAINERENV_HYPERBENCH_API_KEY, never a command line that
    `ps` shows every user of a shared node."""
    env = {
        **offline_env(),
        "HF_HUB_OFFLINE": "1",
        "HYPERBENCH_CACHE": str(cache),
        "HF_HOME": str(cache / "hf"),
        "TRITON_CACHE_DIR": str(cache / "triton"),
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "XDG_CACHE_HOME": str(cache / "xdg"),
        "MPLCONFIGDIR": str(cache / "matplotlib"),
        "HYPERBENCH_HOST": "127.0.0.1",
        "HYPERBENCH_PORT": str(port),
    }
    return env


def binds(model_path: str, cache: Path) -> list[str]:
    root = model_root(model_path)
    out = [f"{root}:{root}:ro", f"{cache}:{cache}"]
    if extra := os.environ.get("HYPERBENCH_BINDS"):
        out += [b for b in extra.split(",") if b.strip()]
    return out


def instance_start_cmd(apptainer: str, sif: Path, name: str, model_path: str, cache: Path, gpu: bool) -> list[str]:
    cmd = [apptainer, "instance", "start", "--cleanenv"]
    if gpu:
        cmd.append("--nv")
    for b in binds(model_path, cache):
        cmd += ["--bind", b]
    return [*cmd, str(sif), name]


def exec_cmd(apptainer: str, name: str, kind: str, engine, model_path: str, env: dict[str, str]) -> list[str]:
    cmd = [apptainer, "exec", "--cleanenv"]
    for key, value in env.items():
        cmd += ["--env", f"{key}={value}"]
    return [*cmd, f"instance://{name}", "/opt/hyperbench/entry.sh", "/opt/hyperbench/serve.sh", kind,
            *serve_args(engine, model_path)]


def instance_stop_cmd(apptainer: str, name: str) -> list[str]:
    return [apptainer, "instance", "stop", "--timeout", "15", name]


def instance_name(kind: str) -> str:
    """hyperbench-<engine>-<harness pid>-<random>: the owner's pid is how a later start tells a
    leftover from an instance that another live harness on the node is using."""
    return f"hyperbench-{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


_OWNED = re.compile(r"^hyperbench-[a-z0-9_]+-(\d+)-[0-9a-f]{8}$")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def leftover_instances(listing: str) -> list[str]:
    """Names in `apptainer instance list --json` output that a dead harness started."""
    try:
        instances = json.loads(listing or "{}").get("instances") or []
    except (ValueError, AttributeError):
        return []
    names = [i.get("instance", "") for i in instances if isinstance(i, dict)]
    return [n for n in names if (m := _OWNED.match(n)) and not pid_alive(int(m[1]))]


def reap_leftovers(apptainer: str, log) -> list[str]:
    """Stop the instances of harnesses that died without tearing down (best effort: a failure
    here must not stop this run; it is written to the engine log)."""
    try:
        listing = subprocess.run([apptainer, "instance", "list", "--json"], capture_output=True, text=True,
                                 stdin=subprocess.DEVNULL, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    reaped = leftover_instances(listing)
    for name in reaped:
        log.write(f"# stopping leftover instance {name} (its harness is gone)\n".encode())
        log.flush()
        subprocess.run(instance_stop_cmd(apptainer, name), stdout=log,
                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=60)
    return reaped


class ApptainerLauncher(Launcher):
    holds_process = True  # the `apptainer exec` child is the engine's process

    def __init__(self, engine, model_path: str, log_path: Path | None = None, port: int | None = None,
                 startup_timeout_s: float = 600, image: str | None = None, **_):
        self.engine = engine
        self.model_path = model_path
        self.port = port
        self.timeout = startup_timeout_s
        self.sif = Path(image) if image else sif_path(engine.kind)
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(suffix="-engine.log")[1])
        self.name = instance_name(engine.kind)
        self.proc: subprocess.Popen | None = None
        self.started = False
        self.apptainer = apptainer_binary()

    def commands(self, port: int, gpu: bool | None = None) -> dict[str, list[str]]:
        """The three command lines this launcher runs (pure: tested without Apptainer)."""
        from harness.models import cache_dir

        cache = cache_dir().resolve()
        app = self.apptainer or "apptainer"
        gpu = want_gpu() if gpu is None else gpu
        env = engine_env(cache, port)
        return {
            "start": instance_start_cmd(app, self.sif, self.name, self.model_path, cache, gpu),
            "exec": exec_cmd(app, self.name, self.engine.kind, self.engine, self.model_path, env),
            "stop": instance_stop_cmd(app, self.name),
        }

    def __enter__(self) -> Endpoint:
        if self.apptainer is None:
            raise HyperbenchError("the apptainer launcher needs `apptainer` (or `singularity`) on PATH "
                                  "(`module load apptainer` on most clusters)")
        if not self.sif.is_file():
            raise HyperbenchError(
                f"no SIF for engine {self.engine.kind} at {self.sif}: build it with `apptainer build "
                f"{self.sif} docker-daemon://hyperbench/{self.engine.kind}:latest` (or "
                f"containers/apptainer/{self.engine.kind}.def), or set HYPERBENCH_SIF_DIR"
            )
        from harness.models import cache_dir

        cache_dir().mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        else:
            check_port_free("127.0.0.1", self.port)
        cmds = self.commands(self.port)
        with open(self.log_path, "ab") as log:
            reap_leftovers(cmds["start"][0], log)
            log.write(("$ " + " ".join(cmds["start"]) + "\n").encode())
            log.flush()
            start = subprocess.run(cmds["start"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if start.returncode != 0:
                hint = (last_log_lines(self.log_path, 1) or ["no output"])[-1]
                raise EngineError(f"apptainer instance start failed (code {start.returncode}): {hint} "
                                  f"[log: {self.log_path}]")
            self.started = True
            log.write(("$ " + " ".join(cmds["exec"]) + "\n").encode())
            log.flush()
            env = dict(os.environ)
            if self.engine.api_key:  # passed into the instance even under --cleanenv
                env["APPTAINERENV_HYPERBENCH_API_KEY"] = env["SINGULARITYENV_HYPERBENCH_API_KEY"] = self.engine.api_key
            self.proc = subprocess.Popen(cmds["exec"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        url = f"http://127.0.0.1:{self.port}/v1"
        try:
            wait_healthy(url, self.timeout, self.alive, self.death_reason, self.engine.api_key)
        except BaseException:
            self.stop()
            raise
        return Endpoint(url, self.engine.display_name(), self.engine.api_key)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def death_reason(self) -> str:
        rc = self.proc.poll() if self.proc else None
        lines = last_log_lines(self.log_path, 8)
        last = "\n  ".join(ln[:300] for ln in lines) or "no output"
        return f"engine in instance {self.name} exited (code {rc}); last lines:\n  {last}\n[log: {self.log_path}]"

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=5)
                except ProcessLookupError:
                    pass
        finally:
            if self.started:  # the instance goes whatever happened to the server
                self.started = False
                with open(self.log_path, "ab") as log:
                    subprocess.run(self.commands(self.port or 0)["stop"], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, timeout=60)
