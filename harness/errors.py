"""User-facing errors: the CLI prints them as one line and exits 2, never with a traceback."""


class HyperbenchError(Exception):
    """A problem the user can fix (bad flag, missing model, port in use, dead engine...)."""

    exit_code = 2


class EngineError(HyperbenchError):
    """The engine could not be started, or died."""


def missing_extra(extra: str, module: str) -> HyperbenchError:
    return HyperbenchError(
        f"{module} is not installed: install it with `pip install 'hyperbench[{extra}]'`"
    )
