"""SQLite's side of :class:`taskdb.store.dialect.Dialect`.

Connections: aiosqlite on one database file (never in memory: several
processes share it) in WAL mode with a busy timeout; writers begin with
``BEGIN IMMEDIATE`` so they queue for the one write lock instead of failing
with "database is locked". There is one writer at a time, so ``seq`` order is
commit order and a feed cursor is the ``seq``. A write and its change records
are two statements of one transaction (SQLite has no data-modifying CTEs).
Blob bytes are chunk rows, read by a thread of their own.

The queue's recorded writes skip SQLAlchemy's execution layer: through
aiosqlite every statement, fetch, BEGIN and COMMIT is a hop to the
connection's thread and back (and each costs SQLAlchemy's per-execution
work), so a worker's batch of a claim, its outcomes and their change records
took some fifteen hops. :meth:`SqliteDialect.run_writes` runs a whole write
transaction as one call in that thread, on the sqlite3 connection, with
statements compiled once (:class:`~taskdb.store.driver.DriverStatement`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg.rows import TupleRow
from sqlalchemy import (
    JSON,
    URL,
    ColumnElement,
    Connection,
    Engine,
    FromClause,
    Row,
    Select,
    Table,
    Text,
    delete,
    event,
    func,
    literal_column,
    make_url,
    null,
    select,
    true,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect as SqlDialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import PoolResetState
from sqlalchemy.types import TypeEngine

from taskdb import settings
from taskdb.core.jobs import ChangeCursor, encode_json
from taskdb.errors import ConfigurationError, StorageError
from taskdb.store import changes
from taskdb.store.dialect import (
    BlobIO,
    ChangeRows,
    ConnectOptions,
    Dialect,
    DialectName,
    FeedCursors,
    Recorded,
    Transactions,
)
from taskdb.store.driver import DriverStatement, Processor
from taskdb.store.errors import connection_lost, translate_error
from taskdb.store.params import batches, bind, bind_list, dumps
from taskdb.store.schema import SQLITE_TIME_FORMAT, UtcDateTime, blob_chunks, jobs
from taskdb.store.schema import job_changes as c

T = TypeVar("T")

_READ_AHEAD = 2  # blob chunks out (read, and not yet done with by the consumer)
_ROWS_PER_STATEMENT = 4  # chunk rows per read transaction (4 MiB of default pieces)


# -- the change feed ---------------------------------------------------------------------


class _Feed:
    """One writer at a time: ``seq`` order is commit order, and a cursor is the ``seq``."""

    def __init__(self) -> None:
        self._pages: dict[tuple[bool, bool], Select[Any]] = {}

    def parse(self, after: ChangeCursor | int) -> int:
        seq = changes.seq_of(after)
        if seq is not None:
            return seq
        raise ConfigurationError(
            f"not a change-feed cursor of this sqlite database: {after!r} "
            "(pass a JobChange.cursor, or a seq)"
        )

    def head(self) -> Select[Any]:
        return select(func.coalesce(func.max(c.c.seq), 0))

    def head_cursor(self, value: Any) -> ChangeCursor:
        return str(value)

    def page(
        self, position: int, queue: str | None, job_id: int | None, limit: int
    ) -> tuple[Select[Any], dict[str, Any]]:
        key = (queue is not None, job_id is not None)
        stmt = self._pages.get(key)
        if stmt is None:
            rows = changes.filtered(
                select(*changes.FIELDS, true().label("old")).where(changes.SEQ_AFTER), *key
            ).subquery("c")
            stmt = self._pages[key] = changes.page_of(func.coalesce(func.max(c.c.seq), 0), rows)
        return stmt, changes.page_values(queue, job_id, limit, feed_seq=position)

    def cursors(
        self, position: int, rows: Sequence[Any], limit: int
    ) -> tuple[list[tuple[Any, ChangeCursor]], ChangeCursor]:
        each = [(r, str(r.seq)) for r in rows if r.seq is not None]
        if len(each) < limit:
            head = rows[0].head if rows else 0
            return each, str(max(position, int(head or 0)))
        return each, each[-1][1]


# -- blob bytes ------------------------------------------------------------------------


class _ChunkRows:
    """Chunk rows in ``taskdb_blob_chunks`` numbered from 0, read by a thread of
    their own (see :class:`_RowReader`)."""

    storages: tuple[str, ...] = ("chunks",)

    def __init__(self) -> None:
        self._put = blob_chunks.insert()
        self._drop = delete(blob_chunks).where(blob_chunks.c.blob_id.in_(bind_list("ids")))

    def new_oid(self, storage: str) -> Any:
        return null()

    def commits_in_flight(self, storage: str) -> int:
        return 1  # one writer at a time anyway

    async def put(
        self, conn: AsyncConnection, row: Any, offset: int, seq: int, pieces: Sequence[bytes]
    ) -> None:
        rows = [{"blob_id": row.id, "seq": seq + i, "data": p} for i, p in enumerate(pieces)]
        await conn.execute(self._put, rows)

    async def relax_commit(self, conn: AsyncConnection) -> None:
        """Nothing to do: in WAL mode with synchronous=NORMAL a commit does not sync."""

    async def read(self, db: Transactions, row: Row[Any], chunk_size: int) -> AsyncIterator[bytes]:
        reader = _RowReader(db, row, chunk_size)
        try:
            async for data in reader:
                yield data
        finally:
            reader.stop()

    async def drop(self, conn: AsyncConnection, rows: Sequence[Row[Any]]) -> None:
        for batch in batches([r.id for r in rows]):
            await conn.execute(self._drop, {"p_ids": batch})


_END = object()
_ROWIDS_SQL = (
    "SELECT rowid, seq FROM taskdb_blob_chunks WHERE blob_id = ? AND seq >= ? ORDER BY seq LIMIT ?"
)


class _RowReader:
    """A blob's chunk rows, read by a thread of its own through a sqlite3 connection
    of its own, in chunks of at most ``chunk_size`` handed over as they come.

    Why not the Database's pool: through aiosqlite a transaction costs about
    1 ms (some nine thread hops). Each transaction covers at most
    ``_ROWS_PER_STATEMENT`` rows; their bytes are read through incremental
    blob I/O (``Connection.blobopen``), which copies once, straight into the
    ``bytes`` handed over, without holding the GIL (a ``SELECT data`` copies
    twice, the second time under the GIL). A chunk is read only when there is
    room for it: at most ``_READ_AHEAD`` chunks are out, the one the consumer
    holds included. Keeping that few MiB in flight is what lets the allocator
    reuse the same memory; with more, it trims and faults pages in again for
    every chunk, which costs more than the thread hops saved by batching.
    """

    def __init__(self, db: Transactions, row: Row[Any], chunk_size: int) -> None:
        self._where = db.safe_url
        self._path = str(make_url(db.safe_url).database)
        self._row = row
        self._chunk_size = chunk_size
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue[object] = asyncio.Queue()
        self._room = threading.Semaphore(_READ_AHEAD)
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="taskdb-blob-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Let the thread end (it closes its connection) without reading further."""
        self._stopped = True
        self._room.release()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._items.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item
            self._room.release()  # the consumer is done with it

    def _reserve(self) -> bool:
        """Wait for room for one more chunk; False when stopped."""
        self._room.acquire()
        return not self._stopped

    def _put(self, item: object) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is reading
            return False
        return True

    def _run(self) -> None:
        try:
            done = self._read()
        except sqlite3.Error as exc:
            self._put(translate_error(exc, self._where))
        except Exception as exc:
            self._put(exc)
        else:
            if done:
                self._put(_END)

    def _read(self) -> bool:
        """Hand every chunk over; False when stopped first."""
        row, chunk_size = self._row, self._chunk_size
        timeout = settings.SQLITE_BUSY_TIMEOUT_SECONDS
        conn = sqlite3.connect(self._path, timeout=timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA query_only = 1")
            seq = done = 0
            while done < row.size:
                conn.execute("BEGIN")  # one short read transaction per few rows
                try:
                    found = conn.execute(_ROWIDS_SQL, (row.id, seq, _ROWS_PER_STATEMENT)).fetchall()
                    for rowid, at in found:
                        if at != seq:
                            raise StorageError(f"blob {row.key} misses chunk {seq}")
                        with conn.blobopen(
                            "taskdb_blob_chunks", "data", rowid, readonly=True
                        ) as blob:
                            size = len(blob)
                            for _ in range(0, size, chunk_size):
                                if not (self._reserve() and self._put(blob.read(chunk_size))):
                                    return False
                        seq, done = seq + 1, done + size
                finally:
                    with contextlib.suppress(sqlite3.Error):  # it only read: nothing to undo
                        conn.execute("ROLLBACK")
                if not found:
                    raise StorageError(f"blob {row.key} is shorter than its recorded size")
            return True
        finally:
            conn.close()


# -- writes on the sqlite3 connection ---------------------------------------------------


def _utc_time(value: str | None) -> datetime | None:
    """A stored UtcDateTime read back (the result SQLAlchemy's processor gives)."""
    return None if value is None else _parse_time(value)


@functools.lru_cache(maxsize=1024)
def _parse_time(value: str) -> datetime:
    # Cached: the rows of a batch share their times (the claim's now and lease, the
    # run_after and created_at of one submit), so most rows parse none.
    # fromisoformat: several times cheaper than SQLAlchemy's regular expression.
    found = datetime.fromisoformat(value)
    return found.replace(tzinfo=UTC) if found.tzinfo is None else found.astimezone(UTC)


def _bind_processor(type_: TypeEngine[Any], dialect: SqlDialect) -> Processor | None:
    # dialect_impl: SQLite's own DATETIME writes the one fixed text format
    return type_.dialect_impl(dialect).bind_processor(dialect)


def _result_processor(type_: TypeEngine[Any], dialect: SqlDialect) -> Processor | None:
    if isinstance(type_, UtcDateTime):
        return _utc_time
    return type_.dialect_impl(dialect).result_processor(dialect, None)


def _compile(stmt: Any, dialect: SqlDialect) -> DriverStatement:
    return DriverStatement.compile(
        stmt,
        dialect,
        paramstyle="qmark",
        bind_processor=_bind_processor,
        result_processor=_result_processor,
    )


@dataclass(frozen=True, slots=True)
class _Write:
    """A :class:`Recorded` compiled for the sqlite3 connection."""

    main: DriverStatement
    record: DriverStatement | None

    @classmethod
    def of(cls, stmt: Recorded, dialect: SqlDialect) -> _Write:
        record = None if stmt.record is None else _compile(stmt.record, dialect)
        return cls(_compile(stmt.main, dialect), record)

    def run(self, raw: sqlite3.Connection, values: dict[str, Any]) -> list[Any]:
        """Run on ``raw`` (in its thread): the write, then its change records."""
        main = self.main
        rows = main.rows(raw.execute(main.sql, main.parameters(values)).fetchall())
        if rows and self.record is not None:
            record = self.record
            raw.execute(record.sql, record.parameters(_record_values(values, rows)))
        return rows


class _Transaction:
    """Writes run as one transaction by one call in the connection's thread:
    BEGIN IMMEDIATE, each write and its change records, COMMIT."""

    __slots__ = ("abandoned", "committing", "writes")

    def __init__(self, writes: Sequence[tuple[_Write, dict[str, Any]]]) -> None:
        self.writes = writes
        self.abandoned = False  # the caller was cancelled: roll back instead of committing
        self.committing = False

    def run(self, raw: sqlite3.Connection) -> list[list[Any]]:
        raw.execute("BEGIN IMMEDIATE")  # waits for the write lock (busy timeout)
        try:
            done = [write.run(raw, values) for write, values in self.writes]
            if self.abandoned:
                raise asyncio.CancelledError
            self.committing = True
            raw.execute("COMMIT")
        except BaseException:
            if raw.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    raw.execute("ROLLBACK")
            raise
        return done


async def _on_thread(
    conn: AsyncConnection, where: str, call: Callable[[sqlite3.Connection], T]
) -> T:
    """``call(raw)`` in the thread of the aiosqlite connection beneath ``conn``
    (``raw`` its sqlite3 connection), in whatever transaction ``conn`` is in.

    aiosqlite runs each call of a connection in order in that thread; this
    queues one more, as SQLAlchemy's own adapter does. A closed connection is
    invalidated in the pool and reported as a retryable :class:`StorageError`;
    sqlite3 errors propagate for :func:`~taskdb.store.errors.translate_error`.
    """
    pooled: Any = conn.sync_connection.connection  # type: ignore[union-attr]
    driver: Any = pooled.driver_connection  # aiosqlite.Connection
    try:
        result: T = await driver._execute(lambda: call(driver._conn))
    except (ValueError, sqlite3.Error) as exc:
        if not _closed(conn, exc):
            raise
        await conn.invalidate(exc)
        raise connection_lost(exc, where) from exc
    return result


async def _run_transaction(
    conn: AsyncConnection, where: str, writes: Sequence[tuple[_Write, dict[str, Any]]]
) -> list[list[Any]]:
    """``writes`` as one transaction of their own on ``conn`` (no transaction begun),
    by one call in its thread. A cancelled caller's transaction rolls back (unless
    it was committing already); an error at COMMIT is never retried."""
    tx = _Transaction(writes)
    try:
        return await _on_thread(conn, where, tx.run)
    except asyncio.CancelledError:
        tx.abandoned = True
        raise
    except StorageError as exc:  # the connection was lost
        exc.retryable = exc.retryable and not tx.committing
        raise
    except sqlite3.Error as exc:
        if not tx.committing:
            raise
        # The commit may or may not have happened: never retried.
        raise translate_error(exc, where, retryable=False) from exc


def _closed(conn: AsyncConnection, exc: Exception) -> bool:
    """Whether ``exc`` says the connection is closed (as SQLAlchemy tells a disconnect)."""
    if isinstance(exc, ValueError):  # aiosqlite's, for a closed connection
        return str(exc).lower() in ("no active connection", "connection closed")
    return bool(conn.dialect.is_disconnect(exc, None, None))  # type: ignore[arg-type]


# -- the dialect -----------------------------------------------------------------------


def _batch_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row of a batch with its output as SQLite stores it."""
    output = row.get("output")
    if output is None:
        return row
    # json_extract returns nested JSON as text but a JSON string unquoted:
    # pre-encoding keeps every value stored as its JSON text (as embed_json).
    return {**row, "output": dumps(output)}


def _batch_value(value: object) -> str:
    """A batch value the JSON encoder does not know: a datetime, as SQLite stores it."""
    if isinstance(value, datetime):
        return _time_text(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# As params.dumps's encoder, times written as SQLite stores them (by the C encoder,
# without a pass over every value of every row in Python).
_BATCH_ENCODER = json.JSONEncoder(
    separators=(",", ":"), allow_nan=False, ensure_ascii=False, default=_batch_value
)


@functools.lru_cache(maxsize=256)
def _time_text(value: datetime) -> str:
    """A time as SQLite stores it (cached: the rows of a batch share their ``now``)."""
    return value.astimezone(UTC).strftime(SQLITE_TIME_FORMAT)


def _in_transaction(dbapi_conn: Any) -> bool:
    """Whether a pooled connection (sqlite3, or aiosqlite's adapter) may be in a
    transaction (``in_transaction`` is readable from any thread)."""
    raw = dbapi_conn
    if not isinstance(raw, sqlite3.Connection):
        raw = dbapi_conn._connection._connection  # None once closed
    try:
        return raw is not None and bool(raw.in_transaction)
    except sqlite3.ProgrammingError:  # closed: the rollback fails and the pool drops it
        return True


def _record_values(values: dict[str, Any], rows: Sequence[Any]) -> dict[str, Any]:
    """The values of a write's change records: its time, the ids it changed."""
    return {"p_now": values["p_now"], "p_ids": [r.id for r in rows]}


class SqliteDialect:
    """SQLite (aiosqlite, WAL). See the module docstring."""

    name: DialectName = "sqlite"
    listens = False
    standalone_statements = False
    records_in_one_statement = False
    batch_updates_list_ids = False
    json_null: ColumnElement[Any] = literal_column("'null'")

    def __init__(self) -> None:
        self.feed: FeedCursors = _Feed()
        self.blobs: BlobIO = _ChunkRows()

    # -- connections -----------------------------------------------------------------

    def async_url(self, url: URL) -> URL:
        if url.database in (None, "", ":memory:"):
            raise ConfigurationError(
                "taskdb needs an SQLite file (several processes share it), not an in-memory "
                "database: use sqlite:///path/to/file.sqlite3"
            )
        return url.set(drivername="sqlite+aiosqlite")

    def sync_url(self, url: URL) -> URL:
        return url.set(drivername="sqlite")

    def engine_options(self, options: ConnectOptions, *, autocommit: bool) -> dict[str, Any]:
        # No ROLLBACK on every return to the pool (a thread hop through aiosqlite):
        # the "reset" listener below rolls back only a transaction left open.
        return {"connect_args": {"timeout": options.busy_timeout}, "pool_reset_on_return": None}

    def configure_engine(self, engine: Engine, options: ConnectOptions) -> None:
        busy_ms, synchronous = int(options.busy_timeout * 1000), options.synchronous

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # taskdb emits BEGIN itself (below) so that writers take the lock up front.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # BEGIN IMMEDIATE waits on the busy timeout; a deferred transaction that
            # later upgrades to a writer fails with "database is locked" instead.
            write = conn.get_execution_options().get("taskdb_write", True)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        @event.listens_for(engine, "reset")
        def _on_reset(dbapi_conn: Any, _record: Any, state: PoolResetState) -> None:
            if state.asyncio_safe and not state.terminate_only and _in_transaction(dbapi_conn):
                dbapi_conn.rollback()

    def lock_migrations(self, conn: Connection) -> None:
        """Nothing beyond the write lock every migration takes."""

    async def listen_connection(
        self, engine: Engine, url: URL
    ) -> psycopg.AsyncConnection[TupleRow]:
        raise ConfigurationError("SQLite has no LISTEN: waits poll")

    # -- statements ------------------------------------------------------------------

    def insert(self, table: Table) -> Any:
        return sqlite_insert(table)

    def json_param(self, name: str) -> ColumnElement[Any]:
        """Stored as is (the text is the stored JSON)."""
        return bind(name, Text())

    def batch_source(self, names: Sequence[str], param: str = "batch") -> FromClause:
        each = func.json_each(self.json_param(param)).table_valued("value")
        return select(
            *(func.json_extract(each.c.value, f"$.{name}").label(name) for name in names)
        ).subquery("v")

    def encode_batch(self, rows: Sequence[dict[str, Any]]) -> str:
        return encode_json(_BATCH_ENCODER, [_batch_row(row) for row in rows], "value")

    def embed_json(self, text: str) -> str:
        """As a JSON string, which ``json_extract`` gives back as the text itself."""
        return dumps(text)

    def id_in(self, col: ColumnElement[Any], param: str = "ids") -> ColumnElement[bool]:
        each = func.json_each(bind(param, JSON)).table_valued("value")
        return col.in_(select(each.c.value))

    async def lock(self, conn: AsyncConnection, key: str) -> None:
        """Nothing beyond BEGIN IMMEDIATE: one writer at a time."""

    def recorded(self, dml: Any, changes: ChangeRows) -> Recorded:
        return Recorded(dml, changes(jobs.c, self.id_in(jobs.c.id)))

    def finish_and_claim(
        self, finished: Any, claimed: Any, record: Callable[[Any, Any], Any]
    ) -> None:
        """No data-modifying CTEs: the store runs the claim, then the outcomes."""
        return None

    @staticmethod
    def _write(stmt: Recorded, dialect: SqlDialect) -> _Write:
        return stmt.compiled(_Write.of, dialect)

    async def run_recorded(
        self, conn: AsyncConnection, stmt: Recorded, values: dict[str, Any], where: str
    ) -> list[Any]:
        """The write and its change records in one call on the sqlite3 connection."""
        write = self._write(stmt, conn.dialect)
        return await _on_thread(conn, where, lambda raw: write.run(raw, values))

    async def run_writes(
        self, db: Transactions, writes: Sequence[tuple[Recorded, dict[str, Any]]], *, atomic: bool
    ) -> list[list[Any]]:
        """The whole transaction in one call on the sqlite3 connection (see the module
        docstring and :func:`_run_transaction`)."""
        async with db.connection() as conn:
            compiled = [(self._write(stmt, conn.dialect), values) for stmt, values in writes]
            return await _run_transaction(conn, db.safe_url, compiled)

    def run_recorded_sync(
        self, conn: Connection, stmt: Recorded, values: dict[str, Any]
    ) -> list[Any]:
        rows = list(conn.execute(stmt.main, values).all())
        if rows and stmt.record is not None:
            conn.execute(stmt.record, _record_values(values, rows))
        return rows


DIALECT: Dialect = SqliteDialect()
