"""The `hyperbench` group: every command registered in one list, and main(), which turns a
HyperbenchError, a click usage error, an OSError or Ctrl-C into one line and an exit code."""

from __future__ import annotations

import sys

import click

from harness.cli.agree import agree, quantize
from harness.cli.bench import bench
from harness.cli.compare import compare
from harness.cli.export import export
from harness.cli.info import engines, env, models
from harness.cli.lora import merge_lora
from harness.cli.report import report
from harness.cli.score import data, score
from harness.cli.serve import serve
from harness.cli.slurm import slurm
from harness.cli.study import study
from harness.cli.tune import tune
from harness.errors import HyperbenchError, Interrupted


class _Stopped(Exception):
    """Ctrl-C (or SIGTERM) carried past click.main as a plain exception, with the run's message:
    click (standalone_mode=False) would turn the KeyboardInterrupt into Abort after a blank line,
    and the run's message (what was kept, how to resume) would be lost."""


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            raise _Stopped(str(e) if isinstance(e, Interrupted) else "") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hyperbench")
def cli():
    """Bench, tune and score LLM inference engines through one wire contract."""


# click lists them sorted by name in --help, whatever the order here
COMMANDS = (engines, models, env, serve, bench, report, compare, slurm, score, data, tune, quantize, agree,
            study, merge_lora, export)
for _command in COMMANDS:
    cli.add_command(_command)


def _sigterm(signum, frame):
    # a batch scheduler or `docker stop` sends SIGTERM: unwind like Ctrl-C so the engine is torn
    # down and the run folder is marked incomplete
    raise KeyboardInterrupt


def main(argv=None) -> None:
    import signal

    signal.signal(signal.SIGTERM, _sigterm)
    try:
        cli.main(args=argv, prog_name="hyperbench", standalone_mode=False)
    except HyperbenchError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except _Stopped as e:  # during a command: the run's own line when it has one
        _interrupted(str(e), close_echo=True)
    except click.exceptions.Abort:  # before one ran (click has closed the terminal's ^C line)
        _interrupted("", close_echo=False)
    except KeyboardInterrupt as e:  # after click let go
        _interrupted(str(e) if isinstance(e, Interrupted) else "", close_echo=True)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except OSError as e:  # a full disk, a read-only folder, a file gone: the system's word, one line
        click.echo(f"error: {os_error_line(e)}", err=True)
        sys.exit(2)


def os_error_line(e: OSError) -> str:
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror or type(e).__name__}{where}" if e.strerror else str(e) or type(e).__name__


def _interrupted(message: str, close_echo: bool) -> None:
    """One line on stderr, exit 130 (128 + SIGINT, as a shell reports Ctrl-C), no traceback."""
    if close_echo and sys.stderr.isatty():
        click.echo(err=True)  # the terminal echoed ^C without a newline
    click.echo(message or "interrupted", err=True)
    sys.exit(130)

