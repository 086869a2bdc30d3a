"""Launchers bring an engine up, wait for /health, notice early death, keep its log, tear down.

`external` (a URL someone else runs), `process` (a local subprocess), `docker` (the engine's image
as a container, through the Docker SDK) and `apptainer` (the same image as a SIF instance on HPC
nodes) share one interface; heavy imports (the Docker SDK) happen only when a launcher starts.
"""

from __future__ import annotations

from harness.errors import HyperbenchError
from harness.launchers.apptainer import ApptainerLauncher
from harness.launchers.base import Endpoint, Launcher
from harness.launchers.docker import DockerLauncher
from harness.launchers.external import ExternalLauncher
from harness.launchers.process import ProcessLauncher

LAUNCHERS: dict[str, type[Launcher]] = {
    "process": ProcessLauncher,
    "external": ExternalLauncher,
    "docker": DockerLauncher,
    "apptainer": ApptainerLauncher,
}


def launcher_class(name: str) -> type[Launcher]:
    """The launcher of that name, whose class attributes say what it can do (starts_engine, ...)."""
    try:
        return LAUNCHERS[name]
    except KeyError:
        raise HyperbenchError(
            f"launcher {name!r} is not available here: choose one of {', '.join(LAUNCHERS)}"
        ) from None


def make_launcher(name: str, **kwargs) -> Launcher:
    return launcher_class(name)(**kwargs)


__all__ = ["Endpoint", "Launcher", "launcher_class", "make_launcher", "LAUNCHERS"]
