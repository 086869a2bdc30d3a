"""Launchers bring an engine up, wait for /health, notice early death, keep its log, tear down.

`external` (a URL someone else runs) and `process` (a local subprocess) live here; `docker` and
`apptainer` plug into the same interface.
"""

from __future__ import annotations

from harness.errors import HyperbenchError
from harness.launchers.base import Endpoint, Launcher
from harness.launchers.external import ExternalLauncher
from harness.launchers.process import ProcessLauncher

LAUNCHERS: dict[str, type[Launcher]] = {"process": ProcessLauncher, "external": ExternalLauncher}


def make_launcher(name: str, **kwargs) -> Launcher:
    try:
        cls = LAUNCHERS[name]
    except KeyError:
        raise HyperbenchError(
            f"launcher {name!r} is not available here: choose one of {', '.join(LAUNCHERS)}"
        ) from None
    return cls(**kwargs)


__all__ = ["Endpoint", "Launcher", "make_launcher", "LAUNCHERS"]
