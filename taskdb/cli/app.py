"""The ``taskdb`` command group. Each command lives in its own module, imported
when the command runs (``taskdb --help`` imports none); each parses, calls the
library, formats.

Bad input becomes one line on stderr and a non-zero exit, in one place
(:class:`_Group`): library errors (``TaskdbError``) and usage errors alike;
nothing prints a traceback. URLs are only ever printed as ``db.safe_url``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, NamedTuple

import click

from taskdb.cli import logs
from taskdb.errors import TaskdbError


class Entry(NamedTuple):
    """Where a command lives (``module:attribute``), and its line in ``taskdb --help``."""

    target: str
    summary: str


COMMANDS = {
    "blob": Entry("taskdb.cli.blobs:blob", "List blobs or stream one out."),
    "dashboard": Entry(
        "taskdb.cli.dashboard:dashboard", "Serve the web dashboard, its JSON API and /metrics."
    ),
    "defer": Entry("taskdb.cli.jobs:defer", "Defer a task of an App; print the job id."),
    "demo": Entry("taskdb.cli.demo:demo", "A guided tour, on the embedded SQLite default."),
    "feed": Entry("taskdb.cli.feed:feed", "Read the change feed."),
    "gc": Entry("taskdb.cli.blobs:gc", "Remove blobs that nothing refers to."),
    "job": Entry("taskdb.cli.jobs:job", "Inspect or act on one job."),
    "jobs": Entry("taskdb.cli.jobs:jobs", "List jobs, newest first."),
    "migrate": Entry(
        "taskdb.cli.migrate:migrate", "Upgrade the database schema to the latest revision."
    ),
    "queue": Entry("taskdb.cli.stats:queue", "Pause or resume a queue."),
    "schedule": Entry(
        "taskdb.cli.schedules:schedule", "Pause, resume, trigger or delete a periodic schedule."
    ),
    "scheduler": Entry(
        "taskdb.cli.serve:scheduler_command", "Enqueue an App's periodic jobs, running none."
    ),
    "schedules": Entry(
        "taskdb.cli.schedules:schedules", "List periodic schedules, their ticks and state."
    ),
    "stats": Entry("taskdb.cli.stats:stats", "Jobs per queue and status, lag, blob store size."),
    "submit": Entry("taskdb.cli.jobs:submit", "Enqueue a job with a JSON payload; print its id."),
    "wait": Entry("taskdb.cli.jobs:wait", "Wait for a job to end; print its output as JSON."),
    "watch": Entry("taskdb.cli.watch:watch", "Print job transitions and progress live."),
    "worker": Entry(
        "taskdb.cli.serve:worker", "Serve queues until SIGINT/SIGTERM, then stop gracefully."
    ),
    "workers": Entry("taskdb.cli.stats:workers", "List running workers from their heartbeats."),
}
"""Every command, by name."""


class _UsageError(click.ClickException):
    exit_code = 2


class _Group(click.Group):
    """Loads each command of :data:`COMMANDS` on first use, giving it the logging
    options (:mod:`taskdb.cli.logs`), and turns every TaskdbError and usage error
    into one clean line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        loaded = self.commands.get(cmd_name)
        entry = COMMANDS.get(cmd_name)
        if loaded is None and entry is not None:
            module, attribute = entry.target.split(":")
            loaded = getattr(importlib.import_module(module), attribute)
            assert isinstance(loaded, click.Command)
            loaded.short_help = entry.summary
            _with_log_options(loaded)
            self.commands[cmd_name] = loaded
        return loaded

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from :data:`COMMANDS` alone (no command is imported)."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, entry.summary) for name, entry in sorted(COMMANDS.items())])

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TaskdbError as exc:
            raise click.ClickException(str(exc)) from None
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "taskdb"
            hint = f" (see `{where} --help`)"
            raise _UsageError(exc.format_message().rstrip(".") + hint) from None
        except KeyboardInterrupt:
            raise click.Abort() from None
        except BrokenPipeError:  # `taskdb blob cat ... | head`: the reader left
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)


def _with_log_options(cmd: click.Command) -> None:
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            _with_log_options(sub)
    else:
        cmd.params.extend(logs.options())


@click.group(cls=_Group)
@click.version_option(package_name="taskdb", prog_name="taskdb")
def cli() -> None:
    """taskdb: durable jobs, task graphs and binary streams in PostgreSQL or SQLite."""


def main() -> None:
    cli(prog_name="taskdb")
