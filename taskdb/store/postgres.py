"""PostgreSQL's side of :class:`taskdb.store.dialect.Dialect`.

Connections: psycopg 3; statements that stand alone run in autocommit (no
BEGIN/COMMIT round trips); a process's waits wake on LISTEN/NOTIFY through one
dedicated connection. Writes record their changes in the same statement (a
data-modifying CTE) run on the driver (:mod:`taskdb.store.driver`). The change
feed is read in snapshot batches; blob bytes live in chunk rows (read with
binary COPY) or large objects.
"""

from __future__ import annotations

import asyncio
import os
import re
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Callable, MutableMapping, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from select import POLLIN, poll
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from sqlalchemy import (
    URL,
    BigInteger,
    Boolean,
    ColumnElement,
    Connection,
    Engine,
    FromClause,
    Integer,
    Row,
    Select,
    Table,
    Text,
    any_,
    bindparam,
    cast,
    column,
    delete,
    event,
    false,
    func,
    literal_column,
    not_,
    null,
    select,
    table,
    text,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, OID, TIMESTAMP
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import UserDefinedType

from taskdb.core.jobs import ChangeCursor
from taskdb.errors import ConfigurationError, StorageError
from taskdb.store import changes
from taskdb.store.dialect import (
    PIECE_BYTES,
    BlobIO,
    ChangeRows,
    ConnectOptions,
    Dialect,
    DialectName,
    FeedCursors,
    MiB,
    Recorded,
    Transactions,
)
from taskdb.store.driver import DriverStatement, on_driver
from taskdb.store.errors import reconnecting
from taskdb.store.params import batches, bind, bind_list, dumps
from taskdb.store.schema import blob_chunks
from taskdb.store.schema import job_changes as c

READ_BATCH_BYTES = 4 * MiB  # large-object bytes read per connection
READ_PIECE_BYTES = MiB  # bytes per lo_get
READ_STATEMENT_BYTES = 16 * MiB  # chunk-row bytes per COPY statement (two run at once)
_MIGRATION_LOCK = 7340017  # pg_advisory_xact_lock key serializing `taskdb migrate`

# Batch columns read from JSON with their SQL types (others are text).
_TYPES: dict[str, Any] = {
    "id": BigInteger(),
    "attempts": Integer(),
    "output": JSONB(none_as_null=True),
    "ord": Integer(),
    "input": JSONB(none_as_null=True),
    "max_retries": Integer(),
    "priority": Integer(),
    "run_after": TIMESTAMP(timezone=True),
    "deadline": TIMESTAMP(timezone=True),
    "completed_at": TIMESTAMP(timezone=True),
}


# -- the change feed ---------------------------------------------------------------------

_NOTHING = "1:1:"  # a snapshot in which no transaction is visible: the start of the feed
_SNAPSHOT = re.compile(r"\d+:\d+:(\d+(,\d+)*)?")


class _Snapshot(UserDefinedType[str]):
    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "pg_snapshot"


@dataclass(frozen=True, slots=True)
class PgCursor:
    """Changes visible in snapshot ``prev`` were delivered, and those of the batch up to
    ``target`` (``None``: the next read's own snapshot) up to ``seq``."""

    prev: str
    target: str | None
    seq: int

    def encode(self) -> ChangeCursor:
        return f"{self.prev}/{self.target or ''}/{self.seq}"


class _Feed:
    """Snapshot batches, as PgQ reads its queues.

    ``seq`` values are handed out in one order and committed in another (A takes
    10, B takes 11 and commits first: a reader that moved past 11 never sees 10).
    Each change row also holds its transaction id (``xid``), and a reader takes
    the feed in batches: what committed between two snapshots of the reader
    (visible in the newer, not in the older), delivered in ``seq`` order. Every
    change falls in exactly one batch. Changes of one job stay ordered: the
    later one was written after the earlier one committed (the job's row lock),
    so it lies in the same batch or a later one, and has the larger ``seq``.

    A cursor is ``prev/target/seq``: everything visible in snapshot ``prev`` was
    delivered, and of the batch up to snapshot ``target``, the changes up to
    ``seq``. No transaction holds the feed back, but while one stays open each
    read scans the changes committed since it began (rows with ``xid >= xmin``
    of ``prev``). An ``int`` cursor means "the changes after that ``seq`` visible
    now, then everything later" (``0``, the whole feed, is exact).
    """

    def __init__(self) -> None:
        self._pages: dict[tuple[bool, bool, bool], Select[Any]] = {}

    def parse(self, after: ChangeCursor | int) -> PgCursor:
        seq = changes.seq_of(after)
        if seq is not None:
            return PgCursor(_NOTHING, None, seq)
        parts = after.split("/") if isinstance(after, str) else []
        if len(parts) == 3:
            prev, target, seq_text = parts
            if (
                _SNAPSHOT.fullmatch(prev)
                and (target == "" or _SNAPSHOT.fullmatch(target))
                and seq_text.isascii()
                and seq_text.isdigit()
            ):
                return PgCursor(prev, target or None, int(seq_text))
        raise ConfigurationError(
            f"not a change-feed cursor of this postgresql database: {after!r} "
            "(pass a JobChange.cursor, or a seq)"
        )

    def head(self) -> Select[Any]:
        return select(cast(func.pg_current_snapshot(), Text))

    def head_cursor(self, value: Any) -> ChangeCursor:
        return PgCursor(str(value), None, 0).encode()

    def page(
        self, position: PgCursor, queue: str | None, job_id: int | None, limit: int
    ) -> tuple[Select[Any], dict[str, Any]]:
        values = {"feed_prev": position.prev, "feed_seq": position.seq}
        if position.target is not None:
            values["feed_target"] = position.target
        key = (position.target is not None, queue is not None, job_id is not None)
        stmt = self._pages.get(key)
        if stmt is None:
            stmt = self._pages[key] = self._page(*key)
        return stmt, changes.page_values(queue, job_id, limit, **values)

    @staticmethod
    def _page(targeted: bool, by_queue: bool, by_job: bool) -> Select[Any]:
        prev = cast(bindparam("feed_prev", type_=Text), _Snapshot())
        target = cast(bindparam("feed_target", type_=Text), _Snapshot())

        def visible(snapshot: Any) -> ColumnElement[bool]:
            return func.pg_visible_in_snapshot(c.c.xid, snapshot, type_=Boolean)

        def after_snapshot(snapshot: Any) -> list[ColumnElement[bool]]:
            # The index range first: nothing below a snapshot's xmin is new to it.
            return [c.c.xid >= func.pg_snapshot_xmin(snapshot), not_(visible(snapshot))]

        def filtered(query: Select[Any]) -> Select[Any]:
            return changes.filtered(query, by_queue, by_job)

        # The rest of the batch being delivered ...
        rest = select(*changes.FIELDS, true().label("old")).where(
            *after_snapshot(prev), changes.SEQ_AFTER
        )
        if not targeted:  # ... which ends at this read's own snapshot
            rows = filtered(rest).subquery("c")
        else:  # ... then the batch that committed since its target
            rest = filtered(rest.where(visible(target)))
            new = filtered(
                select(*changes.FIELDS, false().label("old")).where(*after_snapshot(target))
            )
            rows = union_all(rest, new).subquery("c")
        return changes.page_of(cast(func.pg_current_snapshot(), Text), rows)

    def cursors(
        self, position: PgCursor, rows: Sequence[Any], limit: int
    ) -> tuple[list[tuple[Any, ChangeCursor]], ChangeCursor]:
        if not rows:  # the page statement always returns its head row
            raise StorageError("a change-feed page returned no row")
        found = [r for r in rows if r.seq is not None]
        now = str(rows[0].head)
        target = position.target or now
        each = [
            (r, PgCursor(position.prev, target, r.seq).encode())
            if r.old
            else (r, PgCursor(target, now, r.seq).encode())
            for r in found
        ]
        if len(found) < limit:  # everything visible in this read's snapshot was read
            return each, PgCursor(now, None, 0).encode()
        return each, each[-1][1]


# -- blob bytes ------------------------------------------------------------------------

LARGE_OBJECT = "large_object"
CHUNKS = "chunks"


def _slices(data: bytes, chunk_size: int) -> list[bytes]:
    """``data`` cut into parts of at most ``chunk_size`` bytes (itself if it fits)."""
    if len(data) <= chunk_size:
        return [data]
    view = memoryview(data)
    return [bytes(view[i : i + chunk_size]) for i in range(0, len(data), chunk_size)]


def _where(conn: AsyncConnection) -> str:
    return conn.engine.url.render_as_string(hide_password=True)


class _LargeObjects:
    """One large object per blob, written with ``lo_put`` and read with ``lo_get``
    in binary format (no client-side lo API, so it works through any pool), and
    unlinked with ``lo_unlink`` (large objects never cascade)."""

    oid_on_insert = cast(func.lo_create(0), BigInteger)

    def __init__(self) -> None:
        # Only oids of rows being deleted; one already gone (vacuumlo) is skipped.
        lo = table("pg_largeobject_metadata", column("oid", OID))
        self._unlink = select(func.lo_unlink(lo.c.oid)).where(lo.c.oid.in_(bind_list("oids")))

    async def put(
        self, conn: AsyncConnection, row: Any, offset: int, seq: int, pieces: Sequence[bytes]
    ) -> None:
        async with on_driver(conn, _where(conn)) as driver:
            cursor = psycopg.AsyncRawCursor(driver)
            for piece in pieces:
                await cursor.execute("SELECT lo_put($1, $2, $3)", (row.oid, offset, piece))
                offset += len(piece)

    async def read(self, db: Transactions, row: Row[Any], chunk_size: int) -> AsyncIterator[bytes]:
        offset, size = 0, int(row.size)
        piece = min(chunk_size, READ_PIECE_BYTES)
        batch = max(1, READ_BATCH_BYTES // piece) * piece
        while offset < size:
            end = min(size, offset + batch)
            for data in await self._read_range(db, row, offset, end, piece):
                for part in _slices(data, chunk_size):
                    yield part
            offset = end

    @reconnecting
    async def _read_range(
        self, db: Transactions, row: Row[Any], offset: int, end: int, piece: int
    ) -> list[bytes]:
        """Bytes ``offset`` to ``end`` of the blob in pieces, on one connection."""
        parts: list[bytes] = []
        async with (
            db.transaction(write=False, atomic=False) as conn,
            on_driver(conn, db.safe_url) as driver,
        ):
            cursor = psycopg.AsyncRawCursor(driver)
            while offset < end:
                length = min(piece, end - offset)
                await cursor.execute(
                    "SELECT lo_get($1, $2, $3)", (row.oid, offset, length), binary=True
                )
                found = await cursor.fetchone()
                data = None if found is None else found[0]
                if data is None or len(data) != length:
                    raise StorageError(f"blob {row.key} is shorter than its recorded size")
                parts.append(data)
                offset += length
        return parts

    async def drop(self, conn: AsyncConnection, rows: Sequence[Row[Any]]) -> None:
        for batch in batches([r.oid for r in rows]):
            await conn.execute(self._unlink, {"p_oids": batch})


class _ChunkRows:
    """Chunk rows in ``taskdb_blob_chunks`` (bytea, numbered from 0), written with
    binary ``COPY`` and read back with binary ``COPY`` (see :class:`_RowStream`):
    about twice as fast as large objects both ways (benchmarks/blob_refs.py)."""

    oid_on_insert = null()
    _COPY = "COPY taskdb_blob_chunks (blob_id, seq, data) FROM STDIN (FORMAT BINARY)"

    def __init__(self) -> None:
        self._drop = delete(blob_chunks).where(blob_chunks.c.blob_id.in_(bind_list("ids")))

    async def put(
        self, conn: AsyncConnection, row: Any, offset: int, seq: int, pieces: Sequence[bytes]
    ) -> None:
        async with (
            on_driver(conn, _where(conn)) as driver,
            driver.cursor() as cursor,
            cursor.copy(self._COPY) as copy,
        ):
            copy.set_types(["int8", "int4", "bytea"])
            for i, piece in enumerate(pieces):
                await copy.write_row((row.id, seq + i, piece))

    async def read(self, db: Transactions, row: Row[Any], chunk_size: int) -> AsyncIterator[bytes]:
        """A connection that dies mid-read is replaced once and the read goes on from
        the next chunk row (again after each row handed over)."""
        size = int(row.size)
        if not size:
            return
        stream = _RowStream(db, row)
        retry = True
        while stream.done < size:
            try:
                async with aclosing(stream.rows()) as rows:
                    async for data in rows:
                        retry = True
                        for part in _slices(data, chunk_size):
                            yield part
            except StorageError as exc:
                if not (exc.retryable and retry):
                    raise
                retry = False
                continue
            if stream.done != size:
                raise StorageError(f"blob {row.key} is not its recorded size")

    async def drop(self, conn: AsyncConnection, rows: Sequence[Row[Any]]) -> None:
        for batch in batches([r.id for r in rows]):
            await conn.execute(self._drop, {"p_ids": batch})


_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_COPY_HEADER = struct.Struct("!11sii")  # signature, flags, header extension length
_ROW_HEADER = struct.Struct("!hiii")  # fields, length of seq (4), seq, length of data


class _RowStream:
    """A blob's chunk rows, streamed by binary ``COPY`` statements of about
    ``READ_STATEMENT_BYTES`` each as the consumer takes them.

    As a raw ``COPY`` read does, each row is handed over as it arrives, never
    gathered: with only a row or two out at a time the allocator reuses the
    same memory (gathering a few MiB per statement made it trim and fault
    pages in again for every MiB, and doubled the client's CPU per byte). While
    one statement streams, the next one is started in the background on a
    connection of its own and runs ahead, its rows waiting in the socket: the
    server reads ahead, the client does not, and no statement's start holds up
    the rows of the one before it. So a read holds up to two pooled
    connections, and a consumer slower than the database keeps each
    statement, and its snapshot, open while it takes that statement's rows.
    """

    def __init__(self, db: Transactions, row: Row[Any]) -> None:
        self._db = db
        self._row = row
        self.seq = 0  # the next row to hand over
        self.done = 0  # bytes handed over
        self._count = 0  # rows of the blob, from the first row's size (0: not known yet)
        self._rows = max(1, READ_STATEMENT_BYTES // PIECE_BYTES)  # per statement, likewise

    def _sql(self, seq: int) -> str:
        # COPY takes no parameters: the three are ints. Both bounds: with ``seq >=``
        # alone (and a LIMIT) the plan reads every later row's pointer, then sorts.
        end = min(seq + self._rows, 2**31 - 1)
        return (
            "COPY (SELECT seq, data FROM taskdb_blob_chunks WHERE blob_id = "
            f"{int(self._row.id)} AND seq >= {int(seq)} AND seq < {int(end)} ORDER BY seq) "
            "TO STDOUT (FORMAT BINARY)"
        )

    async def rows(self) -> AsyncGenerator[bytes, None]:
        """The rows from :attr:`seq` on, on fresh connections."""
        async with AsyncExitStack() as stack:
            current: _Statement | None = await self._soon(stack, self.seq)
            start, ahead = self.seq + self._rows, None
            while current is not None:
                async with aclosing(current.rows()) as rows:
                    async for at, data in rows:
                        self._check(at, data)
                        if ahead is None and start < self._count:
                            ahead, start = self._soon(stack, start), start + self._rows
                        self.seq, self.done = self.seq + 1, self.done + len(data)
                        yield data
                await current.close()
                current, ahead = (None if ahead is None else await ahead), None

    def _check(self, seq: int, data: bytes) -> None:
        """Check that row ``seq`` is the next one; the first one read tells how many
        rows there are (every one but the last is as long as the first)."""
        if seq != self.seq:
            raise StorageError(f"blob {self._row.key} misses chunk {self.seq}")
        if not self._count:
            piece = max(1, len(data))
            self._count = -(-int(self._row.size) // piece)
            self._rows = max(1, READ_STATEMENT_BYTES // piece)

    def _soon(self, stack: AsyncExitStack, seq: int) -> asyncio.Future[_Statement]:
        """The statement reading from row ``seq`` on, started in the background; it
        ends with ``stack`` at the latest (cancelled, or with the error that ended
        the read)."""
        task = asyncio.ensure_future(_Statement.start(self._db, self._sql(seq)))

        async def end(kind: Any, exc: BaseException | None, tb: Any) -> bool:
            task.cancel()  # (nothing if it started)
            try:
                statement = await task
            except BaseException:
                return False  # it cleaned up after itself
            return await statement.end(kind, exc, tb)

        stack.push_async_exit(end)
        return task


@asynccontextmanager
async def _reading(db: Transactions) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A pooled connection's driver, in autocommit. It is invalidated if it broke,
    even when the error that ended the read came from another connection."""
    async with (
        db.transaction(write=False, atomic=False) as conn,
        on_driver(conn, db.safe_url) as driver,
    ):
        try:
            yield driver
        except BaseException:
            if driver.broken or driver.closed:
                await conn.invalidate()
            raise


class _Statement:
    """One ``COPY .. TO STDOUT (FORMAT BINARY)`` of ``(seq int4, data bytea)`` rows,
    on a pooled connection of its own.

    It ends after its last row (:meth:`close`: the connection goes back to the
    pool) or with the error that ended the read (:meth:`end`): a copy left with
    an error is cancelled and drained by psycopg, so its connection goes back
    clean (one that broke is invalidated)."""

    def __init__(self, stack: AsyncExitStack, copy: psycopg.AsyncCopy) -> None:
        self._stack = stack
        self._copy = copy

    @classmethod
    async def start(cls, db: Transactions, sql: str) -> _Statement:
        async with AsyncExitStack() as stack:
            driver = await stack.enter_async_context(_reading(db))
            cursor = await stack.enter_async_context(driver.cursor())
            copy = await stack.enter_async_context(cursor.copy(sql))
            return cls(stack.pop_all(), copy)
        raise AssertionError("unreachable")  # (mypy: an exit stack may swallow errors)

    async def rows(self) -> AsyncGenerator[tuple[int, bytes], None]:
        """Each row's ``(seq, data)``, parsed here from the binary COPY stream: one copy
        of the bytes (psycopg's row parser copies them once more)."""
        header = True
        while data := await self._copy.read():
            view = memoryview(data)
            at = 0
            if header:
                signature, _flags, extension = _COPY_HEADER.unpack_from(view)
                if signature != _COPY_SIGNATURE:
                    raise StorageError("unexpected COPY data: not PostgreSQL's binary format")
                at, header = _COPY_HEADER.size + extension, False
            if len(view) - at < _ROW_HEADER.size:
                continue  # the header alone, or the trailer (-1 fields)
            fields, _, seq, length = _ROW_HEADER.unpack_from(view, at)
            at += _ROW_HEADER.size
            # each CopyData message holds one whole row: anything else is refused, never
            # handed over cut short or run together
            if fields != 2 or length < 0 or at + length != len(view):
                raise StorageError(
                    f"unexpected COPY row ({fields} fields, data of {length} bytes "
                    f"in a message of {len(view)})"
                )
            yield seq, bytes(view[at : at + length])

    async def close(self) -> None:
        """End a statement read to its end."""
        await self._stack.aclose()

    async def end(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        """End the statement with the error that ended the read (no-op once closed)."""
        return bool(await self._stack.__aexit__(kind, exc, tb))


class _Blobs:
    """Blob bytes in chunk rows (the default) or large objects, as each blob row
    says: a row with an ``oid`` names its large object."""

    storages: tuple[str, ...] = (CHUNKS, LARGE_OBJECT)

    def __init__(self) -> None:
        self._lo = _LargeObjects()
        self._chunks = _ChunkRows()
        # A stream's intermediate commits need not wait for the WAL flush: its final
        # commit flushes everything written before it, and a crash in between leaves
        # a 'writing' blob that gc reclaims anyway.
        self._relax = text("SET LOCAL synchronous_commit TO OFF")

    def new_oid(self, storage: str) -> Any:
        return (self._lo if storage == LARGE_OBJECT else self._chunks).oid_on_insert

    def commits_in_flight(self, storage: str) -> int:
        # Chunk rows of two commits go in side by side (a backend each: the server's
        # work is most of a write); pages of one large object are written one
        # transaction at a time.
        return 1 if storage == LARGE_OBJECT else 2

    def _of(self, row: Any) -> _LargeObjects | _ChunkRows:
        return self._chunks if row.oid is None else self._lo

    async def put(
        self, conn: AsyncConnection, row: Any, offset: int, seq: int, pieces: Sequence[bytes]
    ) -> None:
        await self._of(row).put(conn, row, offset, seq, pieces)

    async def relax_commit(self, conn: AsyncConnection) -> None:
        await conn.execute(self._relax)

    def read(self, db: Transactions, row: Row[Any], chunk_size: int) -> AsyncIterator[bytes]:
        return self._of(row).read(db, row, chunk_size)

    async def drop(self, conn: AsyncConnection, rows: Sequence[Row[Any]]) -> None:
        await self._lo.drop(conn, [r for r in rows if r.oid is not None])
        await self._chunks.drop(conn, [r for r in rows if r.oid is None])


# -- connections -----------------------------------------------------------------------

PREPARE_THRESHOLD = "prepare_threshold"
"""URL query parameter: psycopg's ``prepare_threshold`` (``none``: never prepare
statements on the server, as PgBouncer before 1.21 in transaction mode needs)."""


def prepare_threshold(raw: str | tuple[str, ...] | None) -> int | None:
    """The ``prepare_threshold`` a URL asks for (psycopg's default, 5, when absent)."""
    if raw is None:
        return 5
    value = raw[-1] if isinstance(raw, tuple) else raw
    if value.strip().lower() in ("none", "off", "false", "no"):
        return None
    if value.strip().isdigit():
        return int(value)
    raise ConfigurationError(
        f"prepare_threshold in the database URL must be a whole number or 'none', got {value!r}"
    )


def driver_params(params: MutableMapping[str, Any]) -> None:
    """Psycopg's connect arguments from a URL's: ``prepare_threshold`` as a number."""
    if PREPARE_THRESHOLD in params:
        params[PREPARE_THRESHOLD] = prepare_threshold(params[PREPARE_THRESHOLD])


# -- the dialect -----------------------------------------------------------------------


class PostgresDialect:
    """PostgreSQL (psycopg 3). See the module docstring."""

    name: DialectName = "postgresql"
    listens = True
    standalone_statements = True
    records_in_one_statement = True
    batch_updates_list_ids = True
    json_null: ColumnElement[Any] = literal_column("'null'::jsonb")

    def __init__(self) -> None:
        self.feed: FeedCursors = _Feed()
        self.blobs: BlobIO = _Blobs()

    # -- connections -----------------------------------------------------------------

    def async_url(self, url: URL) -> URL:
        prepare_threshold(url.query.get(PREPARE_THRESHOLD))  # a bad value fails here
        return url.set(drivername="postgresql+psycopg")

    def sync_url(self, url: URL) -> URL:
        return self.async_url(url)

    def engine_options(self, options: ConnectOptions, *, autocommit: bool) -> dict[str, Any]:
        # No ping on checkout (a round trip per transaction): a connection the server
        # closed while it was idle is found by a poll of its socket instead
        # (configure_engine), one found dead in use is reported as a retryable
        # StorageError and the stores run it once more.
        engine: dict[str, Any] = {
            "connect_args": {"connect_timeout": max(1, round(options.connect_timeout))},
            "pool_size": options.pool_size,
            "max_overflow": options.pool_size * 2,
            "pool_pre_ping": False,
            "pool_reset_on_return": None,
        }
        if autocommit:
            engine["isolation_level"] = "AUTOCOMMIT"
        return engine

    def configure_engine(self, engine: Engine, options: ConnectOptions) -> None:
        """Turn the URL's ``prepare_threshold`` (a string) into psycopg's argument, run
        every session in UTC, and replace a pooled connection the server closed."""

        @event.listens_for(engine, "do_connect")
        def connect_args(dialect: Any, record: Any, cargs: Any, params: dict[str, Any]) -> None:
            driver_params(params)

        @event.listens_for(engine, "checkout")
        def still_open(dbapi_conn: Any, record: Any, proxy: Any) -> None:
            # The pool then connects anew: no statement is sent on a connection that is
            # known dead, where it could not be told apart from one that died running it.
            if closed_while_idle(record.driver_connection):
                raise DisconnectionError("the server closed this pooled connection")

        @event.listens_for(engine, "connect")
        def utc_session(dbapi_conn: Any, record: Any) -> None:
            # psycopg then returns timestamps in datetime.UTC itself, which the row
            # decoding takes as they are; in a zone (even 'Etc/UTC') each one is
            # converted twice. A SET, not a startup option, which PgBouncer refuses
            # (it tracks TimeZone across server connections).
            cursor = dbapi_conn.cursor()
            cursor.execute("SET TimeZone TO 'UTC'")
            cursor.close()
            dbapi_conn.commit()

    def lock_migrations(self, conn: Connection) -> None:
        conn.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))

    async def listen_connection(
        self, engine: Engine, url: URL
    ) -> psycopg.AsyncConnection[TupleRow]:
        _args, params = engine.dialect.create_connect_args(url)
        driver_params(params)
        params.setdefault("application_name", f"taskdb-listen:{os.getpid()}")
        params.setdefault("connect_timeout", 10)  # (the engine's own, when it has one)
        return await psycopg.AsyncConnection.connect(**params, autocommit=True)

    # -- statements ------------------------------------------------------------------

    def insert(self, table: Table) -> Any:
        return pg_insert(table)

    def json_param(self, name: str) -> ColumnElement[Any]:
        return cast(bind(name, Text()), JSONB)

    def batch_source(self, names: Sequence[str], param: str = "batch") -> FromClause:
        cols = [column(name, _TYPES.get(name, Text())) for name in names]
        return (
            func.jsonb_to_recordset(self.json_param(param))
            .table_valued(*cols)
            .render_derived(name="v", with_types=True)
        )

    def encode_batch(self, rows: Sequence[dict[str, Any]]) -> str:
        """Datetimes as ISO text (a batch shares most of them: each is encoded once)."""
        iso: dict[datetime, str] = {}

        def encode(value: Any) -> Any:
            if isinstance(value, datetime):
                found = iso.get(value)
                if found is None:
                    found = iso[value] = value.isoformat()
                return found
            return value

        # the batch array and row object are two levels around a row's output that
        # the nesting limit is not about
        return dumps([{k: encode(v) for k, v in row.items()} for row in rows], wrapping=2)

    def embed_json(self, text: str) -> str:
        """As is: the batch is read as jsonb."""
        return text

    def id_in(self, col: ColumnElement[Any], param: str = "ids") -> ColumnElement[bool]:
        return col == any_(bind(param, ARRAY(BigInteger)))

    async def lock(self, conn: AsyncConnection, key: str) -> None:
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})

    def recorded(self, dml: Any, changes: ChangeRows) -> Recorded:
        changed = dml.cte("changed")
        recorded = changes(changed.c, None).cte("recorded")
        return Recorded(select(changed).add_cte(recorded), None)

    def finish_and_claim(
        self, finished: Any, claimed: Any, record: Callable[[Any, Any], Any]
    ) -> Recorded:
        # The two updates touch disjoint rows (running ones, pending ones) and see one
        # snapshot, so a job an outcome puts back to PENDING is not claimed back here.
        done, took = finished.cte("finished"), claimed.cte("claimed")
        recorded = record(done.c, took.c).cte("recorded")
        pairs = func.json_agg(func.json_build_array(done.c.id, done.c.status))
        outcomes = select(func.coalesce(pairs, text("'[]'::json")), *(null() for _ in took.c))
        both: Any = union_all(select(null().label("finished"), *took.c), outcomes)
        return Recorded(both.add_cte(recorded), None)

    async def run_recorded(
        self, conn: AsyncConnection, stmt: Recorded, values: dict[str, Any], where: str
    ) -> list[Any]:
        compiled = stmt.compiled(_driver_statement, conn.dialect)
        return await compiled.execute(conn, values, where)

    async def run_writes(
        self, db: Transactions, writes: Sequence[tuple[Recorded, dict[str, Any]]], *, atomic: bool
    ) -> list[list[Any]]:
        async with db.transaction(atomic=atomic) as conn:
            return [await self.run_recorded(conn, s, v, db.safe_url) for s, v in writes]

    def run_recorded_sync(
        self, conn: Connection, stmt: Recorded, values: dict[str, Any]
    ) -> list[Any]:
        """Through SQLAlchemy (the sync client writes a few rows at a time)."""
        return list(conn.execute(stmt.main, values).all())


def _driver_statement(stmt: Recorded, dialect: Any) -> DriverStatement:
    return DriverStatement.compile(stmt.main, dialect)


def closed_while_idle(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether the server closed ``conn``, an idle connection (a restart, a terminated
    backend, a proxy's idle timeout): its socket then has an end of file, an error
    or the server's goodbye to read. One poll, no round trip; an idle connection
    that does not LISTEN has nothing else to read."""
    if conn.closed:
        return True
    try:
        fd = conn.pgconn.socket
    except psycopg.OperationalError:  # (no socket any more)
        return True
    poller = poll()
    poller.register(fd, POLLIN)
    return bool(poller.poll(0))


DIALECT: Dialect = PostgresDialect()
