"""How ``taskdb`` commands log: ``--log-level`` and ``--log-format text|json`` on every
command. The library only logs under ``taskdb.*``; configuring the root logger
is the application's business, and here the CLI is the application."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import click

LEVELS = ("debug", "info", "warning", "error")
FIELDS = ("job_id", "queue", "task", "attempt")
"""Record attributes taskdb sets on job-related lines (``extra=``), kept as JSON fields."""

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_json_lines = False  # --log-format json: stderr carries JSON lines only
_status = logging.getLogger("taskdb.cli")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the job fields, and
    the traceback of an exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str, fmt: str) -> None:
    """Send taskdb's log records of ``level`` and above to stderr, as text or JSON
    lines (other libraries' from WARNING on)."""
    global _json_lines
    _json_lines = fmt == "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("taskdb").setLevel(level.upper())


def status(message: str) -> None:
    """A command's own progress line for the operator (a worker serving, stopping):
    plain text on stderr, or an INFO record under ``--log-format json`` so stderr
    stays one JSON object per line."""
    if _json_lines:
        _status.info(message)
    else:
        click.echo(message, err=True)


def _on_level(ctx: click.Context, _param: click.Parameter, value: str) -> str:
    ctx.meta["taskdb_log_level"] = value
    return value


def _on_format(ctx: click.Context, _param: click.Parameter, value: str) -> str:
    configure(ctx.meta.get("taskdb_log_level", "info"), value)
    return value


def options() -> list[click.Option]:
    """The two logging options every command takes (they configure logging as soon
    as they are parsed, before the command runs)."""
    return [
        click.Option(
            ["--log-level"],
            type=click.Choice(LEVELS, case_sensitive=False),
            default="info",
            show_default=True,
            is_eager=True,
            expose_value=False,
            callback=_on_level,
            help="taskdb's log records of this level and above go to stderr.",
        ),
        click.Option(
            ["--log-format"],
            type=click.Choice(["text", "json"]),
            default="text",
            show_default=True,
            expose_value=False,
            callback=_on_format,
            help="Log lines as text, or one JSON object each (with job_id, queue, task).",
        ),
    ]
