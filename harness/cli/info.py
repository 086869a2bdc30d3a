"""`hyperbench engines`, `models`, `env`: what this machine has."""

from __future__ import annotations

import json
import sys

import click


@click.command()
def engines():
    """Engines known, whether each can run here, and what each supports."""
    from rich.console import Console
    from rich.table import Table

    from backends import available_engines

    t = Table("engine", "runs here", "quantizations", "sampling parameters", "speculative")
    for kind, cls in available_engines().items():
        ok, why = cls.installed()
        cap = cls().capabilities()
        t.add_row(kind, "yes" if ok else f"no: {why}", ", ".join(cap.quantizations),
                  ", ".join(cap.sampling_params), ", ".join(cap.speculative) or "-")
    # a pipe has no width: 80 columns cut 'repetition_penalty' to 'repetition_pena…'
    Console(width=None if sys.stdout.isatty() else 200).print(t)


@click.command()
def models():
    """Built-in models (staged offline on first use)."""
    from harness.models import BUILTIN_MODELS

    for name, desc in BUILTIN_MODELS.items():
        click.echo(f"{name:16s} {desc}")


@click.command()
def env():
    """Print the environment capture (what every run folder records) as JSON."""
    from harness.envinfo import capture

    click.echo(json.dumps(capture(), indent=2))
