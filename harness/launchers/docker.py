"""Docker launcher: the harness starts the engine's image as a container, and always removes it.

This is what lets one command compare engines on one GPU in turn (`hyperbench compare --launcher
docker`): each engine comes up in its own image, is benched, and goes away before the next.

Where the engine is reachable depends on where the harness runs:

- on the host: the container's port 8000 is published on 127.0.0.1 (a free port); the resolved
  model folder is bind-mounted read-only under /mnt/hyperbench/model; the engine writes its own cache
  (GGUF conversions...) into the `hyperbench-cache` volume.
- in a container (the compose `harness` service with compose/docker-compose.launcher.yml, which
  mounts the Docker socket): the engine joins the harness's network and is reached at its address
  there, nothing published; it gets the same volumes as the harness at the same mount points for
  the model and the cache, so every path the harness resolved means the same in the engine.

Mounting the Docker socket gives the harness container full control of the Docker host: that
mode is opt-in (its own compose file) for exactly that reason.

Settings from the environment (the config tree has no image field yet): HYPERBENCH_IMAGE_<KIND>
(image of an engine, default hyperbench/<kind>:$HYPERBENCH_TAG), HYPERBENCH_GPUS (all | none |
0,1,...; default: all when the harness sees an NVIDIA GPU), HYPERBENCH_DOCKER_SHM (1g).
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import threading
import uuid
from pathlib import Path

from harness.errors import EngineError, HyperbenchError
from harness.launchers.base import Endpoint, Launcher, wait_healthy
from harness.launchers.containers import image_name, model_root, offline_env, serve_args

CONTAINER_PORT = 8000
HOST_MODEL_MOUNT = "/mnt/hyperbench/model"  # where a host-side model folder appears in the engine
LABEL = "hyperbench.launcher"
# who started a container: a harness killed with SIGKILL cannot remove its engine container, so the
# next start of the docker launcher removes the containers whose harness is gone (reap_orphans)
OWNER_HOST, OWNER_PID, OWNER_STARTED, OWNER_CONTAINER = (
    "hyperbench.owner.host", "hyperbench.owner.pid", "hyperbench.owner.started", "hyperbench.owner.container")


def docker_client():
    try:
        import docker
    except ImportError:
        raise HyperbenchError("the docker launcher needs the Docker SDK: pip install 'hyperbench[docker]'") from None
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as e:  # DockerException, connection errors, permission on the socket...
        raise HyperbenchError(
            f"cannot reach the Docker daemon ({_first_line(e)}): is dockerd running, and is its "
            "socket mounted (compose/docker-compose.launcher.yml) and readable (DOCKER_GID)?"
        ) from None
    return client


def own_container(client):
    """The container this process runs in, or None on a host (compose sets the hostname to the
    short container id; the cgroup path names it where the hostname was changed)."""
    import docker

    if not Path("/.dockerenv").exists():
        return None
    candidates = [socket.gethostname()]
    try:
        candidates += re.findall(r"[0-9a-f]{64}", Path("/proc/self/cgroup").read_text())
    except OSError:
        pass
    for cid in candidates:
        try:
            return client.containers.get(cid)
        except (docker.errors.NotFound, docker.errors.APIError):
            continue
    return None


def gpu_requests():
    import docker

    want = os.environ.get("HYPERBENCH_GPUS", "auto").strip().lower()
    if want == "auto":
        from harness.telemetry import nvml

        want = "all" if nvml() is not None else "none"
    if want in ("none", "", "0 gpus"):
        return []
    if want == "all":
        return [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return [docker.types.DeviceRequest(device_ids=want.split(","), capabilities=[["gpu"]])]


class DockerLauncher(Launcher):
    def __init__(self, engine, model_path: str, log_path: Path | None = None, port: int | None = None,
                 startup_timeout_s: float = 600, image: str | None = None, **_):
        self.engine = engine
        self.model_path = model_path
        self.port = port  # host port to publish on (host mode only); None: a free one
        self.timeout = startup_timeout_s
        self.image = image or image_name(engine.kind)
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(suffix="-engine.log")[1])
        self.name = f"hyperbench-{engine.kind}-{uuid.uuid4().hex[:8]}"
        self.container = None
        self._log_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ up

    def __enter__(self) -> Endpoint:
        import docker

        client = docker_client()
        try:
            client.images.get(self.image)
        except docker.errors.ImageNotFound:
            raise HyperbenchError(
                f"image {self.image} not found: build it with "
                f"`docker compose -f compose/docker-compose.yml build {self.engine.kind}`"
            ) from None
        me = own_container(client)
        reaped = reap_orphans(client)
        run_kw = self._placement(client, me)
        env = {**offline_env(), "HYPERBENCH_PORT": str(CONTAINER_PORT)}
        if self.engine.api_key:
            env["HYPERBENCH_API_KEY"] = self.engine.api_key
        cmd = serve_args(self.engine, self.model_path)
        with open(self.log_path, "ab") as log:
            for name in reaped:
                log.write(f"[hyperbench] removed {name}, left running by a harness that was killed\n".encode())
            log.write(f"$ docker run {self.image} {' '.join(cmd)}  [{self.name}]\n".encode())
        try:
            self.container = client.containers.run(
                self.image, command=cmd, name=self.name, detach=True, init=True,
                environment=env, labels={LABEL: "docker", "hyperbench.engine": self.engine.kind, **owner_labels(me)},
                device_requests=gpu_requests(), shm_size=os.environ.get("HYPERBENCH_DOCKER_SHM", "1g"),
                cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
                **run_kw,
            )  # fmt: skip
        except docker.errors.APIError as e:
            self._remove(client)
            raise EngineError(f"docker could not start {self.image}: {_first_line(e)}") from None
        self._log_thread = threading.Thread(target=self._follow_logs, daemon=True)
        self._log_thread.start()
        try:
            url = self._url(me)
            wait_healthy(url, self.timeout, self.alive, self.death_reason, self.engine.api_key)
        except BaseException:
            self.stop()
            raise
        return Endpoint(url, self.engine.display_name(), self.engine.api_key)

    def _placement(self, client, me) -> dict:
        """Network, ports and mounts: see the module docstring."""
        from docker.types import Mount

        cache = os.environ.get("HYPERBENCH_CACHE") or str(Path.home() / ".cache" / "hyperbench")
        if me is None:  # on the host
            mounts = [Mount("/cache", "hyperbench-cache", type="volume")]
            root = model_root(self.model_path)
            if root.exists():
                # a neutral mount point: the host path's parents may not be traversable by the
                # image's user (/root is 0700 in the image)
                inside = Path(HOST_MODEL_MOUNT) / root.name
                mounts.append(Mount(str(inside), str(root.resolve()), type="bind", read_only=True))
                self.model_path = str(inside / Path(self.model_path).relative_to(root))
            return {"mounts": mounts, "ports": {f"{CONTAINER_PORT}/tcp": ("127.0.0.1", self.port)}}
        networks = [n for n in me.attrs["NetworkSettings"]["Networks"] if n not in ("host", "none")]
        if not networks:
            raise HyperbenchError("the harness container has no network an engine container can join")
        wanted: dict[str, tuple[dict, bool]] = {}  # destination -> (mount, writable)
        for path, writable in ((str(model_root(self.model_path)), False), (cache, True)):
            m = _covering_mount(me.attrs.get("Mounts", []), path)
            if m is None:
                if not writable:
                    raise HyperbenchError(
                        f"model path {self.model_path} is inside the harness container, where an "
                        "engine container cannot see it: put it under /models, /data or /cache"
                    )
                continue
            prev = wanted.get(m["Destination"], (m, False))[1]
            wanted[m["Destination"]] = (m, prev or writable)
        mounts = [
            Mount(dest, m["Name"] if m["Type"] == "volume" else m["Source"], type=m["Type"],
                  read_only=not (writable and m.get("RW", True)))
            for dest, (m, writable) in wanted.items()
        ]
        return {"mounts": mounts, "network": networks[0]}

    def _url(self, me) -> str:
        self.container.reload()
        settings = self.container.attrs["NetworkSettings"]
        if me is None:
            bound = (settings.get("Ports") or {}).get(f"{CONTAINER_PORT}/tcp") or []
            if not bound:
                raise EngineError(self.death_reason())
            return f"http://127.0.0.1:{bound[0]['HostPort']}/v1"
        name, net = next(iter(settings["Networks"].items()))
        if name == "bridge":  # Docker's default network has no DNS: the address it is
            return f"http://{net['IPAddress']}:{CONTAINER_PORT}/v1"
        # by name on a user-defined network (compose's): when the container dies its name stops
        # resolving and requests fail at once, where a dead IP would hang each one until timeout
        return f"http://{self.name}:{CONTAINER_PORT}/v1"

    # ------------------------------------------------------------------ watching

    def _follow_logs(self) -> None:
        """Stream the container's output into the run folder as it comes (ends when it stops)."""
        try:
            with open(self.log_path, "ab") as log:
                for chunk in self.container.logs(stream=True, follow=True):
                    log.write(chunk)
                    log.flush()
        except Exception:  # the container went away under us: stop() says how
            pass

    def alive(self) -> bool:
        if self.container is None:
            return False
        try:
            self.container.reload()
        except Exception:
            return False
        return self.container.status in ("created", "running")

    def death_reason(self) -> str:
        code, lines = None, []
        try:
            self.container.reload()
            code = self.container.attrs["State"].get("ExitCode")
            tail = self.container.logs(tail=40).decode(errors="replace").splitlines()
            lines = [ln for ln in tail if ln.strip()][-8:]
        except Exception:
            pass
        last = "\n  ".join(ln[:300] for ln in lines) or "no output"
        return (f"engine container {self.name} ({self.image}) exited (code {code}); "
                f"last lines:\n  {last}\n[log: {self.log_path}]")

    # ------------------------------------------------------------------ down

    def stop(self) -> None:
        if self.container is None:
            return
        try:
            self.container.stop(timeout=15)  # SIGTERM through tini (init=True), then SIGKILL
            self.container.reload()
            code = self.container.attrs["State"].get("ExitCode")
            if self._log_thread is not None:
                self._log_thread.join(timeout=10)
            with open(self.log_path, "ab") as log:
                log.write(f"[hyperbench] container {self.name} stopped, exit code {code}\n".encode())
        except Exception:
            pass
        finally:
            self._remove(None)

    def _remove(self, client) -> None:
        import docker

        try:
            client = client or docker_client()
            client.containers.get(self.name).remove(force=True)
        except (docker.errors.NotFound, HyperbenchError):
            pass
        except docker.errors.APIError as e:
            if "already in progress" not in str(e):
                raise EngineError(f"could not remove container {self.name}: {_first_line(e)}") from None
        self.container = None


def owner_labels(me) -> dict[str, str]:
    """Labels naming this harness: its host and process (pid and start time: pids are reused), or
    the container it runs in (whose pids mean nothing outside it)."""
    import psutil

    return {OWNER_HOST: socket.gethostname(), OWNER_PID: str(os.getpid()),
            OWNER_STARTED: repr(psutil.Process().create_time()), OWNER_CONTAINER: me.id if me is not None else ""}


def owner_gone(labels: dict, client) -> bool:
    """Whether the harness that started a container is gone. Unknown owners (another host, a
    container without owner labels) are never taken for gone: the daemon may be shared."""
    import docker
    import psutil

    if labels.get(OWNER_CONTAINER):
        try:
            return client.containers.get(labels[OWNER_CONTAINER]).status not in ("created", "running")
        except docker.errors.NotFound:
            return True
    if labels.get(OWNER_HOST) != socket.gethostname() or not labels.get(OWNER_PID):
        return False
    try:
        p = psutil.Process(int(labels[OWNER_PID]))
        return abs(p.create_time() - float(labels[OWNER_STARTED])) > 1e-3 or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except (ValueError, KeyError, psutil.Error):
        return False


def reap_orphans(client) -> list[str]:
    """Remove the engine containers whose harness was killed; their names."""
    import docker

    removed = []
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}=docker"}):
        if owner_gone(c.labels, client):
            try:
                c.remove(force=True)
                removed.append(c.name)
            except docker.errors.APIError:  # being removed already, by its owner or another reaper
                pass
    return removed


def _covering_mount(mounts: list[dict], path: str) -> dict | None:
    """The mount of the harness container that holds `path` (the deepest one), if any."""
    best = None
    for m in mounts:
        dest = m.get("Destination", "").rstrip("/") or "/"
        if m.get("Type") not in ("volume", "bind") or dest.endswith("docker.sock"):
            continue
        if path == dest or path.startswith(dest + "/"):
            if best is None or len(dest) > len(best["Destination"]):
                best = m
    return best


def _first_line(e: Exception) -> str:
    text = getattr(e, "explanation", None) or str(e)
    return (str(text).strip().splitlines() or [type(e).__name__])[0][:300]
