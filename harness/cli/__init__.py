"""The `hyperbench` command: one module per command group; options.py derives flags from the
config tree, merge.py puts file + flags + engine together, main.py holds the group and turns
errors and Ctrl-C into one line."""

from harness.cli.main import cli, main

__all__ = ["cli", "main"]
