"""Start an engine server as a local subprocess on a free loopback port.

The engine never outlives the harness, whatever kills it: the child asks the kernel for SIGTERM
when its parent dies (PR_SET_PDEATHSIG, set between fork and exec), and our engines also watch
their parent (backends.base.exit_with_parent, through HYPERBENCH_PARENT_PID) in case the signal
is lost (an engine that re-execs, a platform without prctl). The engine's pid is written beside
its log, so a resumed run can still stop an engine that an older harness left behind.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.errors import HyperbenchError
from harness.launchers.base import Endpoint, Launcher, wait_healthy


PID_FILE = "engine.pid.json"  # beside engine.log: which process a resumed run may have to stop
PARENT_ENV = "HYPERBENCH_PARENT_PID"  # the engine exits when its parent is no longer this pid
_PR_SET_PDEATHSIG = 1


def die_with_parent():
    """A preexec_fn: SIGTERM this child when the harness dies (even by SIGKILL). The kernel sends it
    when the *thread* that forked exits, so launchers must start engines from the main thread (they
    do). None where prctl does not exist (not Linux): the engine's own watcher covers it there."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: no dlsym in the child
    parent = os.getpid()

    def preexec() -> None:  # runs in the forked child: no imports, no locks (other threads' are gone)
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the harness died between fork and prctl: no signal will come
            os._exit(1)

    return preexec


def key_off_argv(cmd: list[str]) -> tuple[list[str], str | None]:
    """The engine command without `--api-key KEY`, and the key: a command line is world-readable
    (`ps`, /proc/PID/cmdline), so the key goes to the server through its environment instead."""
    if "--api-key" not in cmd:
        return cmd, None
    i = cmd.index("--api-key")
    return cmd[:i] + cmd[i + 2:], cmd[i + 1]


def key_env(engine, key: str | None) -> dict[str, str]:
    """The environment that gives `engine`'s server its API key (the variable it reads); empty
    without a key, so that a variable of that name the harness happens to have is not taken."""
    return {engine.api_key_env: key or ""}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    """Refuse, in one line that names the real cause, a port or host the engine could not bind."""
    if not 0 <= port <= 65535:
        raise HyperbenchError(f"port {port} is out of range: give 0 to 65535 (0: any free port)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise HyperbenchError(f"host {host!r} is not a name or address this machine can resolve") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family) as s:
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise HyperbenchError(f"port {port} is in use on {host}: choose another --port") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise HyperbenchError(f"{host} is not an address of this machine: listen on one of its "
                                      "own (127.0.0.1, 0.0.0.0 for every interface)") from None
            raise HyperbenchError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def shown_command(cmd: list[str], env: dict[str, str]) -> str:
    """The command line as the engine log records it, the API key (and secret-named
    variables) replaced: the log is a file of the run folder, which people share."""
    from harness.envinfo import SECRET

    shown = ["<redacted>" if i and cmd[i - 1] == "--api-key" else a for i, a in enumerate(cmd)]
    return "".join(f"{k}={'<redacted>' if SECRET.search(k) else v} " for k, v in env.items()) + " ".join(shown)


def last_log_lines(path: Path, n: int = 20) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [ln for ln in lines if ln.strip()][-n:]


class ProcessLauncher(Launcher):
    holds_process = True
    uses_host_install = True

    def __init__(self, engine, model_path: str, log_path: Path | None = None, host: str = "127.0.0.1",
                 port: int | None = None, startup_timeout_s: float = 600, env: dict | None = None, **_):
        self.engine = engine
        self.model_path = model_path
        self.host = host
        self.port = port
        self.timeout = startup_timeout_s
        self.env = env
        # the pid file lives in the run folder only: a temporary log's folder is shared by all
        self.pid_file = Path(log_path).parent / PID_FILE if log_path else None
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(suffix="-engine.log")[1])
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Endpoint:
        self.engine.check()
        if self.port is None:
            self.port = free_port(self.host)
        else:
            check_port_free(self.host, self.port)
        cmd, key = key_off_argv(self.engine.server_command(self.host, self.port, self.model_path))
        engine_env = {**self.engine.server_env(), **key_env(self.engine, key)}
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **engine_env, **(self.env or {}),
               PARENT_ENV: str(os.getpid())}
        with open(self.log_path, "ab") as log:
            log.write(("$ " + shown_command(cmd, engine_env) + "\n").encode())
            log.flush()
            # own session: teardown signals the whole group (engines may fork workers)
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, env=env,
                                         preexec_fn=die_with_parent())
        if self.pid_file is not None:
            write_pid_file(self.pid_file, self.proc.pid)
        url = f"http://{self.host}:{self.port}/v1"
        try:
            wait_healthy(url, self.timeout, self.alive, self.death_reason, self.engine.api_key)
        except BaseException:
            self.stop()
            raise
        return Endpoint(url, self.engine.display_name(), self.engine.api_key)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def death_reason(self) -> str:
        return exit_reason(self.proc.poll() if self.proc else None, self.log_path)

    def stop(self) -> None:
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass


def exit_reason(rc: int | None, log_path: Path) -> str:
    """How the engine ended (its exit code, or the signal that killed it by name) and the last
    meaningful lines of its log: a signal death leaves no error line of its own, so the lines
    before it (what it was doing) are what tells the story; uvicorn's shutdown chatter is not."""
    if rc is not None and rc < 0:
        how = f"killed by signal {-rc} ({signal.Signals(-rc).name})" if -rc in signal.valid_signals() \
            else f"killed by signal {-rc}"
    else:
        how = f"exited (code {rc})"
    lines = [ln.strip()[:300] for ln in last_log_lines(log_path, 40) if not _NOISE.search(ln)][-3:]
    tail = " | ".join(lines) or "no output"
    return f"engine {how}; last log lines: {tail} [log: {log_path}]"


_NOISE = re.compile(r"^\$ |Shutting down|Waiting for application shutdown|Application shutdown|"
                    r"Finished server process|GET /health|Started server process|Waiting for background")


def write_pid_file(path: Path, pid: int) -> None:
    """pid, command line and start time of the engine: enough to know later that a pid still
    names the same process (pids are reused)."""
    try:
        import psutil

        p = psutil.Process(pid)
        info = {"pid": pid, "cmdline": p.cmdline(), "create_time": p.create_time()}
        Path(path).write_text(json.dumps(info))
    except Exception:  # gone already, or a read-only folder: nothing to clean up later
        pass


def stop_orphan(folder: Path) -> str | None:
    """Stop the engine that a killed run (of an older harness, or one whose parent-death signal
    was lost) left running, if its pid still names the same process; returns what was done."""
    path = Path(folder) / PID_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
        import psutil

        p = psutil.Process(info["pid"])
        same = p.cmdline() == info["cmdline"] and abs(p.create_time() - info["create_time"]) < 1e-3
    except Exception:  # no such process, unreadable file: nothing of ours is running
        path.unlink(missing_ok=True)
        return None
    path.unlink(missing_ok=True)
    if not same:
        return None
    try:
        os.killpg(info["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 15
        while p.is_running() and p.status() != "zombie" and time.monotonic() < deadline:
            time.sleep(0.2)
        if p.is_running() and p.status() != "zombie":
            os.killpg(info["pid"], signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return None
    return f"stopped the engine (pid {info['pid']}) that the interrupted run left running"
