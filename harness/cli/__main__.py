"""`python -m harness.cli`: the same as the `hyperbench` entry point."""

from harness.cli.main import main

main()
