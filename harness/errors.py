"""User-facing errors: the CLI prints them as one line and exits 2, never with a traceback."""


class HyperbenchError(Exception):
    """A problem the user can fix (bad flag, missing model, port in use, dead engine...)."""

    exit_code = 2


class EngineError(HyperbenchError):
    """The engine could not be started, or died."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) that a run has handled: the message says what was kept and how to go
    on, and is the one line the CLI prints before it exits 130."""


def missing_extra(extra: str, module: str) -> HyperbenchError:
    return HyperbenchError(
        f"{module} is not installed: install it with `pip install 'hyperbench[{extra}]'`"
    )
