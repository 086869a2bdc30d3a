"""Launchers say what they can do; jobs ask that, not the launcher's name."""

import pytest

from harness.config import BenchConfig, Target
from harness.errors import HyperbenchError
from harness.launchers import LAUNCHERS, Launcher, launcher_class


@pytest.mark.parametrize("name,starts,restarts,holds,host", [
    ("process", True, True, True, True),
    ("apptainer", True, True, True, False),
    ("docker", True, True, False, False),
    ("external", False, False, False, False),
])
def test_each_launcher_states_its_capabilities(name, starts, restarts, holds, host):
    cls = launcher_class(name)
    assert (cls.starts_engine, cls.can_restart, cls.holds_process, cls.uses_host_install) == (starts, restarts, holds, host)


def test_unknown_launcher_is_one_line():
    with pytest.raises(HyperbenchError, match="launcher 'ssh' is not available here: choose one of process"):
        launcher_class("ssh")


def test_a_launcher_that_starts_no_engine_is_asked_by_its_capability(monkeypatch):
    """A launcher added under a new name that runs no engine of its own is treated as the external
    one everywhere the jobs ask: it needs --url, and the run is labelled `external`."""

    class Remote(Launcher):
        starts_engine = False
        can_restart = False

    monkeypatch.setitem(LAUNCHERS, "external", Remote)
    with pytest.raises(ValueError, match="the external launcher needs --url"):
        Target(launcher="external")
    cfg = BenchConfig(target={"launcher": "external", "url": "http://127.0.0.1:1/v1"})
    assert cfg.target.launcher_class is Remote
    from harness.engine_session import resolve_model_path

    assert resolve_model_path(cfg, cfg.engine_config()) is None  # nothing to stage: no engine to start
