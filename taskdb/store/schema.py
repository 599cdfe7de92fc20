"""Table definitions: the single source of truth, and Alembic's ``target_metadata``.

Only Alembic migrations create or change these tables; nothing calls
``create_all`` at runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    false,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql.base import ischema_names as pg_ischema_names
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import TypeCompiler
from sqlalchemy.types import TypeDecorator, UserDefinedType

from taskdb.core.jobs import ACTIVE_STATUSES
from taskdb.errors import InvalidJobInput

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both dialects.

    Naive datetimes are rejected. SQLite stores the UTC time as text in one fixed
    format (the offset left out), so text comparison orders like time.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidJobInput(f"naive datetime {value!r}: pass a timezone-aware datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is UTC:
            return value
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Xid8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (``xid8``)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


# Reflection (Alembic's drift check) then knows the type instead of warning.
pg_ischema_names.setdefault("xid8", Xid8)

ONLY_ON = "taskdb_only_on"
"""``Column.info`` key naming the one dialect a column (and its indexes) exists on."""


def include_object(dialect: str) -> Callable[[Any, str | None, str, bool, Any], bool]:
    """Alembic's ``include_object`` for ``dialect``: leaves out columns and indexes
    that exist only on another dialect."""

    def include(obj: Any, _name: str | None, type_: str, _reflected: bool, _other: Any) -> bool:
        if type_ == "column":
            columns = [obj]
        elif type_ == "index":
            columns = list(obj.columns)
        else:
            return True
        return all(c.info.get(ONLY_ON, dialect) == dialect for c in columns)

    return include


class SqliteJsonText(sqlite.JSON):
    """JSON in a column SQLite declares ``TEXT``.

    A column declared ``JSON`` has NUMERIC affinity: SQLite would store the
    document ``1.0`` as the integer 1 and ``9223372036854775808`` as a float,
    so a bare number would not come back as given. TEXT affinity keeps the
    document's text as written.
    """

    cache_ok = True


@compiles(SqliteJsonText, "sqlite")
def _sqlite_json_ddl(type_: SqliteJsonText, compiler: TypeCompiler, **kw: Any) -> str:
    return "TEXT"


def _json() -> Any:
    return (
        JSON(none_as_null=True)
        .with_variant(JSONB(none_as_null=True), "postgresql")
        .with_variant(SqliteJsonText(none_as_null=True), "sqlite")
    )


def _id() -> Any:
    # SQLite only autoincrements an INTEGER PRIMARY KEY.
    return BigInteger().with_variant(Integer(), "sqlite")


jobs = Table(
    "taskdb_jobs",
    metadata,
    Column("id", _id(), primary_key=True, autoincrement=True),
    Column("queue", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("input", _json(), nullable=False),
    Column("input_digest", String(64), nullable=False),
    Column("output", _json(), nullable=True),
    Column("error", Text, nullable=True),
    Column("error_code", String(200), nullable=True),
    # the traceback of the last failure (bounded: see taskdb.core.retry.traceback_text)
    Column("error_traceback", Text, nullable=True),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("max_retries", Integer, nullable=False),
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("run_after", UtcDateTime, nullable=False),
    Column("deadline", UtcDateTime, nullable=True),
    Column("progress", Float, nullable=False, server_default=text("0")),
    Column("progress_message", Text, nullable=True),
    Column("progress_details", _json(), nullable=True),
    Column("fingerprint", String(200), nullable=True),
    Column("job_run_id", String(200), nullable=True),
    Column("worker_id", String(100), nullable=True),
    Column("lease_expires_at", UtcDateTime, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("completed_at", UtcDateTime, nullable=True),
    # persist the job's stream events for follow() (taskdb_job_streams)
    Column("durable_stream", Boolean, nullable=False, server_default=false()),
    # the typed task the job runs (taskdb.App); NULL for a queue's plain handler
    Column("task", String(200), nullable=True),
    # the W3C trace context of the submit that wrote the job (taskdb.queue.tracing)
    Column("trace_context", _json(), nullable=True),
    # SQLite: never hand out a purged job's id again (migration 0011)
    sqlite_autoincrement=True,
)

_pending = jobs.c.status == "PENDING"
_active = jobs.c.status.in_(ACTIVE_STATUSES)

Index(
    "ix_taskdb_jobs_claim",
    jobs.c.queue,
    jobs.c.priority.desc(),
    jobs.c.run_after,
    jobs.c.id,
    postgresql_where=_pending,
    sqlite_where=_pending,
)
Index(
    "ux_taskdb_jobs_fingerprint",
    jobs.c.queue,
    jobs.c.fingerprint,
    unique=True,
    postgresql_where=_active & jobs.c.fingerprint.is_not(None),
    sqlite_where=_active & jobs.c.fingerprint.is_not(None),
)
# Rows holding a lease (the running ones), for the reaper's ``lease_expires_at < now``.
# Not ``WHERE status IN running``: statements that name those statuses and find their
# rows by id would then scan it, dead entries of every claim since vacuum included.
_holding = jobs.c.lease_expires_at.is_not(None)
Index(
    "ix_taskdb_jobs_lease",
    jobs.c.lease_expires_at,
    postgresql_where=_holding,
    sqlite_where=_holding,
)
# Status changes can never be HOT updates, so every full index would get a new
# entry per transition: the secondary indexes are partial, covering only the
# rows their queries read.
_completed = jobs.c.status == "COMPLETED"
_has_run = jobs.c.job_run_id.is_not(None)
_ended = jobs.c.completed_at.is_not(None)
# SQLite's covers every job: there a status change touches only the indexes whose
# columns (or conditions) it changes, and the digests are random keys that a
# batch of outcomes would scatter over many pages (migration 0014).
Index(
    "ix_taskdb_jobs_input_digest",
    jobs.c.queue,
    jobs.c.input_digest,
    postgresql_where=_completed,
)
Index("ix_taskdb_jobs_run_id", jobs.c.job_run_id, postgresql_where=_has_run, sqlite_where=_has_run)
Index("ix_taskdb_jobs_completed", jobs.c.completed_at, postgresql_where=_ended, sqlite_where=_ended)
# The dashboard: per-queue counts by status as an index-only scan (the overview on a
# million jobs), and job lists filtered by queue and status.
Index("ix_taskdb_jobs_queue_status", jobs.c.queue, jobs.c.status)

job_changes = Table(
    "taskdb_job_changes",
    metadata,
    Column("seq", _id(), primary_key=True, autoincrement=True),
    Column("job_id", _id(), nullable=False),
    Column("queue", String(200), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("progress", Float, nullable=True),
    Column("at", UtcDateTime, nullable=False),
    # PostgreSQL only (SQLite commits in seq order): the writing transaction, which
    # the feed reader batches by (taskdb.store.feed). Never select the whole table.
    Column(
        "xid",
        Xid8(),
        nullable=False,
        server_default=text("pg_current_xact_id()"),
        info={ONLY_ON: "postgresql"},
    ),
)
Index("ix_taskdb_job_changes_job", job_changes.c.job_id, job_changes.c.seq)
Index("ix_taskdb_job_changes_xid", job_changes.c.xid)
# Migration 0003 also adds a statement trigger that NOTIFYs taskdb_changes.

rate_limit_hits = Table(
    "taskdb_rate_limit_hits",
    metadata,
    Column("id", _id(), primary_key=True, autoincrement=True),
    Column("queue", String(200), nullable=False),
    Column("at", UtcDateTime, nullable=False),
)
Index("ix_taskdb_rate_limit_hits_queue_at", rate_limit_hits.c.queue, rate_limit_hits.c.at)

task_outputs = Table(
    "taskdb_task_outputs",
    metadata,
    Column("id", _id(), primary_key=True, autoincrement=True),
    # '' for the shared cache; a run id for a RunPrivateCacheRepo's entries
    Column("namespace", String(200), nullable=False, server_default=text("''")),
    Column("task_type", String(200), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("output", _json(), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)
Index(
    "ux_taskdb_task_outputs_key",
    task_outputs.c.namespace,
    task_outputs.c.task_type,
    task_outputs.c.fingerprint,
    unique=True,
)
Index("ix_taskdb_task_outputs_created_at", task_outputs.c.created_at)

blobs = Table(
    "taskdb_blobs",
    metadata,
    Column("id", _id(), primary_key=True, autoincrement=True),
    # the public name inside a CacheRef; ids are never exposed
    Column("key", String(64), nullable=False),
    # 'writing' until the stream completed, then 'committed': only committed blobs are readable
    Column("state", String(12), nullable=False),
    Column("size", BigInteger, nullable=False, server_default=text("0")),
    Column("mime", String(200), nullable=True),
    # PostgreSQL large object holding the bytes (SQLite keeps them in taskdb_blob_chunks)
    Column("oid", BigInteger, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("committed_at", UtcDateTime, nullable=True),
)
Index("ux_taskdb_blobs_key", blobs.c.key, unique=True)
Index("ix_taskdb_blobs_state_updated_at", blobs.c.state, blobs.c.updated_at)

blob_chunks = Table(
    "taskdb_blob_chunks",
    metadata,
    Column("blob_id", _id(), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("blob_id", "seq", name="pk_taskdb_blob_chunks"),
)

blob_links = Table(
    "taskdb_blob_links",
    metadata,
    Column("blob_key", String(64), nullable=False),
    # the row holding a ref to the blob: 'job:<id>' or 'cache:<id>'
    Column("holder", String(100), nullable=False),
    PrimaryKeyConstraint("blob_key", "holder", name="pk_taskdb_blob_links"),
)
Index("ix_taskdb_blob_links_holder", blob_links.c.holder)


def job_holder(job_id: int) -> str:
    """The ``taskdb_blob_links.holder`` of a job row whose output refers to blobs."""
    return f"job:{job_id}"


job_streams = Table(
    "taskdb_job_streams",
    metadata,
    # the job whose durable stream this is (rows go when the job is purged)
    Column("job_id", _id(), nullable=False),
    # 0, 1, 2, ... per job, without gaps: what follow(from_offset=) counts
    Column("offset", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    # event_to_json of the event; a binary delta keeps its bytes in ``chunk`` instead
    Column("event", _json(), nullable=False),
    Column("chunk", LargeBinary, nullable=True),
    PrimaryKeyConstraint("job_id", "offset", name="pk_taskdb_job_streams"),
)

queues = Table(
    "taskdb_queues",
    metadata,
    # a row only for a queue an operator paused or resumed; absent: running
    Column("name", String(200), nullable=False),
    Column("paused", Boolean, nullable=False, server_default=false()),
    Column("updated_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("name", name="pk_taskdb_queues"),
)

schedules = Table(
    "taskdb_schedules",
    metadata,
    # a periodic schedule, upserted by every scheduler that has it in code
    Column("name", String(200), nullable=False),
    Column("task", String(200), nullable=False),
    Column("queue", String(200), nullable=False),
    Column("cron", String(200), nullable=True),  # or every_seconds
    Column("every_seconds", Integer, nullable=True),
    Column("timezone", String(64), nullable=False),
    Column("catch_up", String(8), nullable=False),
    Column("max_catch_up", Integer, nullable=False),
    Column("args", Text, nullable=False),  # canonical JSON: every job's fixed arguments
    Column("tick_param", String(200), nullable=True),  # the argument the tick goes to
    Column("priority", Integer, nullable=False),
    Column("max_retries", Integer, nullable=False),
    Column("paused", Boolean, nullable=False, server_default=false()),
    # ticks at or before max(last_tick, not_before) are never enqueued: the last one
    # enqueued is the fence that keeps every tick to one job
    Column("not_before", UtcDateTime, nullable=False),
    Column("last_tick", UtcDateTime, nullable=True),
    Column("last_job_id", _id(), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("seen_at", UtcDateTime, nullable=False),  # a scheduler last registered it
    PrimaryKeyConstraint("name", name="pk_taskdb_schedules"),
)

workers = Table(
    "taskdb_workers",
    metadata,
    # one row per running queue server (a worker process serving n queues has n),
    # written by its lease keeper at start and every heartbeat, removed on a clean
    # stop; a row whose heartbeat is old belongs to a worker that died
    Column("worker_id", String(100), nullable=False),
    Column("queue", String(200), nullable=False),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("slots", Integer, nullable=False),
    Column("lease_seconds", Float, nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("heartbeat_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("worker_id", "queue", name="pk_taskdb_workers"),
)

VERSION_TABLE = "taskdb_alembic_version"
