"""The ``taskdb`` admin CLI: a thin click shell over the library."""

from taskdb.cli.app import cli, main

__all__ = ["cli", "main"]
