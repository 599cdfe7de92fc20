"""The README's command-line reference matches the commands' `--help`."""

from __future__ import annotations

import itertools
import re

import click

from taskdb.cli import cli
from tests.cli.helpers import ROOT
from tests.cli.test_cli import command_at, command_paths

GLOBAL = {"--help", "--db", "--log-level", "--log-format"}  # stated once above the table


def reference_rows() -> dict[str, str]:
    """``command path -> row`` of the README's command table."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("| `taskdb "):
            usage = line.split("`")[1].split()[1:]  # the words after `taskdb`
            words = itertools.takewhile(lambda w: re.fullmatch(r"[a-z]+", w), usage)
            rows[" ".join(words)] = line
    return rows


def test_every_command_and_option_is_in_the_readme() -> None:
    rows = reference_rows()
    leaves = []
    for path in command_paths(cli):
        command = command_at(path)
        if isinstance(command, click.Group):
            continue
        name = " ".join(path)
        leaves.append(name)
        assert name in rows, f"the README's command table has no row for `taskdb {name}`"
        for param in command.params:
            if isinstance(param, click.Option) and param.opts[0] not in GLOBAL:
                assert param.opts[0] in rows[name], f"`taskdb {name}` row lacks {param.opts[0]}"
    assert sorted(rows) == sorted(leaves), "the README names a command that does not exist"
