"""``taskdb blob ls|cat`` and ``taskdb gc``: the blob store from the shell."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import Any, BinaryIO

import click
from rich.box import SIMPLE
from rich.table import Table

from taskdb.admin import Admin
from taskdb.cli.common import db_option, json_option, out, print_json, with_db
from taskdb.core import decode_binary_values, ref_key
from taskdb.core.durations import parse_duration
from taskdb.core.format import binary_values, human_age, human_size
from taskdb.errors import InvalidCacheRef
from taskdb.json_views import blob_json, gc_json
from taskdb.store import BlobInfo, Database, GcReport

_KEY_LENGTH = 32  # blob keys are 32 hex digits; a shorter decimal is a job id


@click.group()
def blob() -> None:
    """List blobs or stream one out."""


@blob.command("ls")
@db_option
@json_option
@click.option(
    "--state", type=click.Choice(["committed", "writing"]), help="Only blobs in this state."
)
@click.option("--limit", default=50, show_default=True, help="At most this many blobs.")
def blob_ls(db_url: str, as_json: bool, state: Any, limit: int) -> None:
    """List blobs, newest first."""

    @with_db
    async def body(db: Database) -> list[BlobInfo]:
        return await Admin(db).list_blobs(state=state, limit=limit)

    found = body(db_url)
    if as_json:
        print_json([blob_json(b) for b in found])
        return
    table = Table("state", "size", "mime", "created", box=SIMPLE)
    table.add_column("key", no_wrap=True, min_width=_KEY_LENGTH)  # whole: it is copied
    for b in found:
        table.add_row(b.state, human_size(b.size), b.mime or "-", human_age(b.created_at), b.key)
    out.print(table)


def _pick(output: Any, job_id: int, port: str | None) -> dict[str, Any]:
    """The ref or inline bytes of a job's output that ``port`` names (the only one
    when ``port`` is ``None``): matched against the ref's ``port``, the last key
    of its path, or its whole path."""
    found = list(binary_values(output))
    if port is not None:
        found = [
            (path, v) for path, v in found if port in (v.get("port"), path, path.rpartition(".")[2])
        ]
    if len(found) == 1:
        return found[0][1]
    paths = ", ".join(sorted(path or "." for path, _ in binary_values(output)))
    if not found and port is None:
        raise click.ClickException(f"job {job_id}'s output holds no binary value")
    if not found:
        raise click.ClickException(f"job {job_id} has no binary output {port!r} (has: {paths})")
    raise click.ClickException(
        f"job {job_id}'s output holds several binary values: pick one with --port ({paths})"
    )


async def _source(db: Database, target: str, port: str | None) -> AsyncIterator[bytes] | bytes:
    """What ``blob cat TARGET`` writes: a blob's chunks, or inline bytes."""
    if target.isascii() and target.isdigit() and len(target) < _KEY_LENGTH:
        job = await Admin(db).get_job(int(target))
        value = _pick(job.output, job.id, port)
        if "$ref" not in value:  # small: inlined below the ref threshold
            return bytes(decode_binary_values(value))
        key = value["$ref"]
    elif target.lstrip().startswith("{"):
        try:
            key = ref_key(json.loads(target))
        except json.JSONDecodeError as exc:
            raise InvalidCacheRef(f"not a CacheRef: invalid JSON ({exc})") from None
    else:
        key = target
    stream = await Admin(db).open_blob(key)
    if stream is None:
        raise InvalidCacheRef(f"no committed blob {key!r} in this database")
    return stream


@blob.command("cat")
@click.argument("target", metavar="REF_OR_JOB_ID")
@db_option
@click.option("--port", help="Which binary value of a job's output (a port, key or path).")
def blob_cat(target: str, db_url: str, port: str | None) -> None:
    """Stream a blob to stdout, chunk by chunk: REF_OR_JOB_ID is a blob key, a CacheRef
    as JSON, or a job id whose output holds a ref (or inline bytes)."""
    sink: BinaryIO = sys.stdout.buffer

    @with_db
    async def body(db: Database) -> None:
        source = await _source(db, target, port)
        if isinstance(source, bytes):
            sink.write(source)
        else:
            async for chunk in source:
                sink.write(chunk)
        sink.flush()

    body(db_url)


def _gc_line(report: GcReport) -> str:
    verb = "would remove" if report.dry_run else "removed"
    return (
        f"{verb} {report.blobs_removed} unreferenced blob(s) and "
        f"{report.stale_writers_removed} abandoned write(s): {human_size(report.bytes_freed)}"
    )


@click.command()
@db_option
@json_option
@click.option("--dry-run", is_flag=True, help="Only count what would be removed.")
@click.option(
    "--grace",
    default="1h",
    show_default=True,
    help="Keep unreferenced blobs committed less than this long ago (a row may be about "
    "to refer to them).",
)
@click.option(
    "--stale",
    default="15m",
    show_default=True,
    help="Remove unfinished writes untouched for this long (their writer died).",
)
def gc(db_url: str, as_json: bool, dry_run: bool, grace: str, stale: str) -> None:
    """Remove blobs no job or cache row refers to (PostgreSQL large objects included)."""
    grace_seconds, stale_seconds = parse_duration(grace), parse_duration(stale)

    @with_db
    async def body(db: Database) -> GcReport:
        return await Admin(db).gc(
            dry_run=dry_run, grace_seconds=grace_seconds, stale_seconds=stale_seconds
        )

    report = body(db_url)
    if as_json:
        print_json(gc_json(report))
        return
    click.echo(_gc_line(report))
