"""Where blob bytes live: the part of the blob store that differs per dialect.

PostgreSQL: one large object per blob, written and read with the server-side
functions ``lo_put`` / ``lo_get`` (no client-side lo API, so it works through
any pool) and unlinked with ``lo_unlink``. SQLite: chunk rows in
``taskdb_blob_chunks`` numbered from 0, read by a thread of their own (see
:class:`_RowReader`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from functools import cache
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    Integer,
    LargeBinary,
    Row,
    bindparam,
    cast,
    column,
    delete,
    func,
    make_url,
    null,
    select,
    table,
    text,
)
from sqlalchemy.dialects.postgresql import OID
from sqlalchemy.ext.asyncio import AsyncConnection

from taskdb import settings
from taskdb.errors import StorageError
from taskdb.store.database import Database, translate_error
from taskdb.store.schema import blob_chunks

MiB = 1024 * 1024
READ_BATCH_BYTES = 4 * MiB  # read per transaction
_IN_BATCH = 500  # values per expanding IN list
_READ_AHEAD = 2  # SQLite chunks out (read, and not yet done with by the consumer)
_ROWS_PER_STATEMENT = 4  # SQLite chunk rows per read transaction (4 MiB of default pieces)


def bind(name: str, type_: Any = None) -> Any:
    """A bind parameter; names are prefixed so none collides with a column name."""
    return bindparam(f"p_{name}", type_=type_)


def bind_list(name: str) -> Any:
    """A bind parameter taking a list (an expanding IN)."""
    return bindparam(f"p_{name}", expanding=True)


def batches(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    """``values`` in slices short enough for one IN list."""
    for start in range(0, len(values), _IN_BATCH):
        yield values[start : start + _IN_BATCH]


class BlobIO(Protocol):
    """What the blob store asks of a dialect. ``row`` is a ``taskdb_blobs`` row."""

    oid_on_insert: Any
    """The ``oid`` of a new blob row (a new large object, or NULL)."""

    async def put(
        self, conn: AsyncConnection, row: Any, offset: int, seq: int, pieces: Sequence[bytes]
    ) -> None:
        """Append ``pieces`` at byte ``offset`` (the ``seq``-th piece on)."""

    async def relax_commit(self, conn: AsyncConnection) -> None:
        """Make this transaction's commit cheap (an intermediate commit of a stream)."""

    def read(self, db: Database, row: Row[Any], chunk_size: int) -> AsyncIterator[bytes]:
        """The blob's bytes in chunks of at most ``chunk_size``, a few MiB per transaction."""

    async def drop(self, conn: AsyncConnection, rows: Sequence[Row[Any]]) -> None:
        """Delete the bytes of blob rows just deleted in ``conn``'s transaction."""


class _PostgresIO:
    oid_on_insert = cast(func.lo_create(0), BigInteger)

    def __init__(self) -> None:
        oid = cast(bind("oid"), OID)
        offset = bind("offset", BigInteger())
        self._put = select(func.lo_put(oid, offset, bind("data", LargeBinary())))
        self._get = select(func.lo_get(oid, offset, bind("length", Integer()), type_=LargeBinary))
        # Only oids of rows being deleted; one already gone (vacuumlo) is skipped.
        lo = table("pg_largeobject_metadata", column("oid", OID))
        self._unlink = select(func.lo_unlink(lo.c.oid)).where(lo.c.oid.in_(bind_list("oids")))
        # A stream's intermediate commits need not wait for the WAL flush: its final
        # commit flushes everything written before it, and a crash in between leaves
        # a 'writing' blob that gc reclaims anyway.
        self._relax = text("SET LOCAL synchronous_commit TO OFF")

    async def put(
        self, conn: AsyncConnection, row: Any, offset: int, seq: int, pieces: Sequence[bytes]
    ) -> None:
        for piece in pieces:
            await conn.execute(self._put, {"p_oid": row.oid, "p_offset": offset, "p_data": piece})
            offset += len(piece)

    async def relax_commit(self, conn: AsyncConnection) -> None:
        await conn.execute(self._relax)

    async def read(self, db: Database, row: Row[Any], chunk_size: int) -> AsyncIterator[bytes]:
        offset, size = 0, int(row.size)
        per_batch = max(1, READ_BATCH_BYTES // chunk_size)
        while offset < size:
            parts: list[bytes] = []
            async with db.transaction(write=False, atomic=False) as conn:
                while offset < size and len(parts) < per_batch:
                    length = min(chunk_size, size - offset)
                    params = {"p_oid": row.oid, "p_offset": offset, "p_length": length}
                    data = await conn.scalar(self._get, params)
                    if data is None or len(data) != length:
                        raise StorageError(f"blob {row.key} is shorter than its recorded size")
                    parts.append(data)
                    offset += length
            for part in parts:
                yield part

    async def drop(self, conn: AsyncConnection, rows: Sequence[Row[Any]]) -> None:
        oids = [r.oid for r in rows if r.oid is not None]
        for batch in batches(oids):
            await conn.execute(self._unlink, {"p_oids": batch})


class _SqliteIO:
    oid_on_insert = null()

    def __init__(self) -> None:
        c = blob_chunks.c
        self._put = blob_chunks.insert()
        self._drop = delete(blob_chunks).where(c.blob_id.in_(bind_list("ids")))

    async def put(
        self, conn: AsyncConnection, row: Any, offset: int, seq: int, pieces: Sequence[bytes]
    ) -> None:
        rows = [{"blob_id": row.id, "seq": seq + i, "data": p} for i, p in enumerate(pieces)]
        await conn.execute(self._put, rows)

    async def relax_commit(self, conn: AsyncConnection) -> None:
        """Nothing to do: in WAL mode with synchronous=NORMAL a commit does not sync."""

    async def read(self, db: Database, row: Row[Any], chunk_size: int) -> AsyncIterator[bytes]:
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

    def __init__(self, db: Database, row: Row[Any], chunk_size: int) -> None:
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


@cache
def for_dialect(name: str) -> BlobIO:
    return _PostgresIO() if name == "postgresql" else _SqliteIO()
