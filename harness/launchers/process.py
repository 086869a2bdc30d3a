"""Start an engine server as a local subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from harness.errors import HyperbenchError
from harness.launchers.base import Endpoint, Launcher, wait_healthy


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            raise HyperbenchError(f"port {port} is in use on {host}: choose another --port") from None


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
    def __init__(self, engine, model_path: str, log_path: Path | None = None, host: str = "127.0.0.1",
                 port: int | None = None, startup_timeout_s: float = 600, env: dict | None = None, **_):
        self.engine = engine
        self.model_path = model_path
        self.host = host
        self.port = port
        self.timeout = startup_timeout_s
        self.env = env
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(suffix="-engine.log")[1])
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Endpoint:
        self.engine.check()
        if self.port is None:
            self.port = free_port(self.host)
        else:
            check_port_free(self.host, self.port)
        cmd = self.engine.server_command(self.host, self.port, self.model_path)
        engine_env = self.engine.server_env()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **engine_env, **(self.env or {})}
        with open(self.log_path, "ab") as log:
            log.write(("$ " + shown_command(cmd, engine_env) + "\n").encode())
            log.flush()
            # own session: teardown signals the whole group (engines may fork workers)
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, env=env)
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
        rc = self.proc.poll() if self.proc else None
        lines = last_log_lines(self.log_path)
        # the engine's own one-line error is usually its last line
        hint = lines[-1].strip() if lines else "no output"
        return f"engine exited (code {rc}): {hint[:300]} [log: {self.log_path}]"

    def stop(self) -> None:
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
