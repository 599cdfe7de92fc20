"""The blob store: binary payloads streamed into the database, and their lifecycle.

Bytes live in ``taskdb_blob_chunks`` rows (both dialects; the default) or in
a PostgreSQL large object (``storage="large_object"``; unlinked explicitly:
large objects never cascade), through the dialect's :class:`BlobIO`; a
``taskdb_blobs`` row names each blob by its public ``key``, the name inside a
``CacheRef``, and its large object if it has one.

Writing: the row is inserted as ``'writing'``, the stream is cut into pieces
and committed a few MiB at a time in short transactions (a long one would
block every SQLite writer, or hold back PostgreSQL's xmin horizon), each in
the background while the producer makes the next few MiB; the row flips to
``'committed'`` with its size at the end. Only committed blobs are readable.
A stream that raises or is cancelled (even as its last commit returns) takes
its row and bytes with it; a writer that died leaves a ``'writing'`` row that
:meth:`BlobStore.gc` reclaims once it has not been touched for
``stale_seconds`` (live writers touch it on every commit, and every
``touch_interval`` while their producer is silent).

Links: a row holding refs (``'job:<id>'``, ``'cache:<id>'``) links their
blobs in its own transaction (:meth:`BlobStore.link`); releasing a holder
deletes the blobs nothing links any more. Committed blobs that were never
linked (the holder row was never written) are reclaimed by ``gc`` after a
grace period.

PostgreSQL runs at READ COMMITTED, so whatever may delete a blob first locks
its row and checks for links in a *later* statement, whose snapshot sees every
link committed before the lock was granted; ``link`` locks the rows it links
to. Locks are taken in key order, so these transactions cannot deadlock on
blob rows. Of two concurrent releases of a blob's last two holders, the one
that locks second sees the other's unlink and frees the blob. A link that
finds its blob gone (``gc`` took it first) says so: the job store then
refuses the outcome rather than store a dangling ref.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import (
    BigInteger,
    Integer,
    Row,
    Text,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from taskdb import settings
from taskdb.core.clock import Clock, seconds, utcnow
from taskdb.core.jobs import TERMINAL_STATUSES
from taskdb.core.refs import new_blob_key
from taskdb.errors import ConfigurationError, InvalidJobInput, StorageError, TaskdbError
from taskdb.store.database import Database
from taskdb.store.dialect import PIECE_BYTES, BlobIO, Dialect, MiB
from taskdb.store.errors import reconnecting
from taskdb.store.params import batches, bind, bind_list
from taskdb.store.schema import UtcDateTime, blob_links, blobs, jobs
from taskdb.streams.blob import DEFAULT_CHUNK_BYTES, Blob, BlobWriter, check_chunk

log = logging.getLogger("taskdb.blobs")

BlobState = Literal["writing", "committed"]
WRITING: BlobState = "writing"
COMMITTED: BlobState = "committed"

COMMIT_BYTES = 4 * MiB  # written per transaction (a writer holds about two of these)
TOUCH_INTERVAL = 60.0
GC_BATCH = 100  # blobs deleted per gc transaction

_background: set[asyncio.Task[None]] = set()


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """What the store knows about a blob (``size`` so far while ``'writing'``)."""

    key: str
    state: BlobState
    size: int
    mime: str | None
    created_at: datetime
    updated_at: datetime
    committed_at: datetime | None


class GcReport(BaseModel):
    """What :meth:`BlobStore.gc` removed (or, with ``dry_run``, would remove)."""

    model_config = ConfigDict(frozen=True)

    dry_run: bool
    blobs_removed: int
    """Committed blobs no row linked any more, past the grace period."""
    stale_writers_removed: int
    """``'writing'`` blobs whose writer stopped touching them."""
    bytes_freed: int
    stale_links_removed: int = 0
    """Links of ended jobs whose stored output does not refer to the blob (a link
    made before an outcome that never came: a graph job's worker died); the
    blobs they alone held count in ``blobs_removed`` (not with ``dry_run``)."""


def _info(row: Row[Any]) -> BlobInfo:
    return BlobInfo(
        key=row.key,
        state=row.state,
        size=row.size,
        mime=row.mime,
        created_at=row.created_at,
        updated_at=row.updated_at,
        committed_at=row.committed_at,
    )


class _Statements:
    """The statements both dialects share, built once."""

    def __init__(self, io: BlobIO) -> None:
        b, links = blobs, blob_links
        now = bind("now", UtcDateTime())
        unlinked = ~exists().where(links.c.blob_key == b.c.key)
        self.inserts = {  # by storage
            storage: blobs.insert()
            .values(
                key=bind("key"),
                state=WRITING,
                size=0,
                mime=bind("mime"),
                oid=io.new_oid(storage),
                created_at=now,
                updated_at=now,
            )
            .returning(b.c.id, b.c.oid)
            for storage in io.storages
        }
        mine = (b.c.id == bind("id"), b.c.state == WRITING)
        size = bind("size")  # commits in flight may finish in any order: size only grows
        grown = case((b.c.size < size, size), else_=b.c.size)
        self.progress = update(b).where(*mine).values(size=grown, updated_at=now)
        self.touch = update(b).where(*mine).values(updated_at=now)
        self.commit = (
            update(b)
            .where(*mine)
            .values(state=COMMITTED, size=bind("size"), updated_at=now, committed_at=now)
        )
        gone = (b.c.id, b.c.oid, b.c.size)
        # a writer's own blob, committed or not, never linked (its key never escaped)
        self.discard = delete(b).where(b.c.id == bind("id"), unlinked).returning(*gone)
        self.by_key = select(b).where(b.c.key == bind("key"))
        self.lock_keys = (
            select(b.c.key)
            .where(b.c.key.in_(bind_list("keys")))
            .order_by(b.c.key)
            .with_for_update()
        )
        self.unlink_holders = (
            delete(links)
            .where(links.c.holder.in_(bind_list("holders")))
            .returning(links.c.blob_key)
        )
        self.unlink_others = (
            delete(links)
            .where(links.c.holder == bind("holder"), links.c.blob_key.not_in(bind_list("keys")))
            .returning(links.c.blob_key)
        )
        self.free = (
            delete(b)
            .where(b.c.key.in_(bind_list("keys")), b.c.state == COMMITTED, unlinked)
            .returning(*gone)
        )
        # gc: committed blobs nothing links past the grace, writers silent for too long
        cutoff = bind("cutoff", UtcDateTime())
        orphan = (b.c.state == COMMITTED, b.c.committed_at < cutoff, unlinked)
        stale = (b.c.state == WRITING, b.c.updated_at < cutoff)
        # links of ended jobs whose output does not name the blob
        holder = links.c.holder
        job_id = case((holder.like("job:%"), cast(func.substr(holder, 5), BigInteger)))
        unreferenced = (
            select(links.c.blob_key, holder)
            .select_from(links.join(jobs, jobs.c.id == job_id))
            .where(
                jobs.c.status.in_(TERMINAL_STATUSES),
                or_(jobs.c.output.is_(None), ~cast(jobs.c.output, Text).contains(links.c.blob_key)),
            )
        )
        self.stale_links = unreferenced.limit(bind("limit", Integer())).with_for_update(
            of=jobs, skip_locked=True
        )
        self.count_stale_links = select(func.count()).select_from(unreferenced.subquery())
        self.unlink_pair = delete(links).where(
            links.c.blob_key == bindparam("k"), links.c.holder == bindparam("h")
        )
        self.sweeps: dict[str, tuple[Any, Any, Any]] = {
            kind: (
                select(b.c.id)
                .where(*where)
                .order_by(b.c.id)
                .limit(bind("limit", Integer()))
                .with_for_update(skip_locked=True),
                delete(b).where(b.c.id.in_(bind_list("ids")), *where).returning(*gone),
                select(func.count(), func.coalesce(func.sum(b.c.size), 0)).where(*where),
            )
            for kind, where in (("orphans", orphan), ("stale", stale))
        }


_BUILT: dict[str, tuple[_Statements, Any]] = {}


def _statements(d: Dialect) -> tuple[_Statements, Any]:
    """The blob statements of dialect ``d`` and its link upsert, built on first use."""
    built = _BUILT.get(d.name)
    if built is None:
        link = d.insert(blob_links).on_conflict_do_nothing()
        built = _BUILT[d.name] = (_Statements(d.blobs), link)
    return built


@dataclass(slots=True)
class _Writing:
    """A blob being written: what is committed so far."""

    id: int
    oid: int | None
    key: str
    size: int = 0
    touched: float = 0.0  # time.monotonic() of the last commit or touch
    sent: int = 0  # bytes handed to commits so far (in flight or done)
    sent_pieces: int = 0


class _Pieces:
    """Cuts a stream of chunks into pieces of ``piece_bytes`` (the last may be shorter)
    and says when a commit's worth is ready: memory stays within about
    ``commit_bytes`` whatever the chunk sizes."""

    def __init__(self, piece_bytes: int, commit_bytes: int) -> None:
        self.piece_bytes = piece_bytes
        self.commit_bytes = commit_bytes
        self._buffer = bytearray()
        self._ready: list[bytes] = []
        self._ready_bytes = 0

    def _push(self, piece: bytes) -> bool:
        self._ready.append(piece)
        self._ready_bytes += len(piece)
        return self._ready_bytes >= self.commit_bytes

    def feed(self, chunk: bytes | bytearray | memoryview) -> Iterator[None]:
        """Take ``chunk``; yields each time a commit's worth is ready (call :meth:`take`)."""
        check_chunk(chunk)
        size, buffer = self.piece_bytes, self._buffer
        if not buffer and len(chunk) == size and isinstance(chunk, bytes):
            if self._push(chunk):  # the common case: no copy
                yield
            return
        view = memoryview(chunk).cast("B")
        while view:
            if not buffer and len(view) >= size:
                full = self._push(bytes(view[:size]))
                view = view[size:]
            else:
                take = size - len(buffer)
                buffer += view[:take]
                view = view[take:]
                full = False
                if len(buffer) == size:
                    full = self._push(bytes(buffer))
                    buffer.clear()
            if full:
                yield

    def take(self, *, final: bool = False) -> list[bytes]:
        """The ready pieces (with ``final``, the buffered tail too)."""
        if final and self._buffer:
            self._push(bytes(self._buffer))
            self._buffer.clear()
        ready, self._ready, self._ready_bytes = self._ready, [], 0
        return ready


async def _settle(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Wait for ``tasks`` to end, whatever their outcome."""
    await asyncio.gather(*tasks, return_exceptions=True)


async def _shielded(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run ``cleanup`` to its end even if the caller is cancelled again meanwhile."""
    task = asyncio.ensure_future(cleanup)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        _background.add(task)  # keep it alive; it finishes on its own
        task.add_done_callback(_background.discard)
        raise


class BlobStore:
    """Blob I/O and lifecycle over one :class:`Database` (see the module docstring).

    ``clock`` stamps rows (tests inject one). ``piece_bytes``: the unit of one
    write (one large-object write or one chunk row); ``commit_bytes``: written
    per transaction (a writer holds at most about two of these);
    ``touch_interval``: how often a writer whose producer is silent touches its
    row so that ``gc`` does not take it for dead (``None``: never).
    ``storage``: where new blobs' bytes go (default ``$TASKDB_BLOB_STORAGE``,
    else ``"chunks"``): ``"chunks"`` (rows of ``taskdb_blob_chunks``, bytea on
    PostgreSQL, written with binary COPY) or, on PostgreSQL,
    ``"large_object"``. Blobs are read from wherever they were written,
    whatever this says.
    """

    def __init__(
        self,
        db: Database,
        *,
        clock: Clock = utcnow,
        piece_bytes: int = PIECE_BYTES,
        commit_bytes: int = COMMIT_BYTES,
        touch_interval: float | None = TOUCH_INTERVAL,
        storage: str | None = None,
    ) -> None:
        self._io: BlobIO = db.backend.blobs
        chosen = settings.resolve_blob_storage(storage)
        if chosen is not None and chosen not in self._io.storages:
            where = "" if storage else f" (${settings.BLOB_STORAGE_ENV})"
            raise ConfigurationError(
                f"blob storage {chosen!r}{where} is not one of {db.backend.name}'s: "
                + ", ".join(self._io.storages)
            )
        self.storage = chosen or self._io.storages[0]
        if piece_bytes < 1 or commit_bytes < piece_bytes:
            raise ConfigurationError("need 1 <= piece_bytes <= commit_bytes")
        if touch_interval is not None and touch_interval <= 0:
            raise ConfigurationError("touch_interval must be None or > 0")
        self.db = db
        self._clock = clock
        self.piece_bytes = piece_bytes
        self.commit_bytes = commit_bytes
        self.touch_interval = touch_interval
        self._s, self._link = _statements(db.backend)

    def __repr__(self) -> str:
        return f"BlobStore({self.db!r})"

    # -- writing ------------------------------------------------------------------

    async def write(
        self, chunks: AsyncIterable[bytes | bytearray | memoryview], *, mime: str | None = None
    ) -> BlobInfo:
        """Stream ``chunks`` into a new blob; returns it once committed.

        Each ``commit_bytes`` are committed in the background while the
        producer makes the next ones (on PostgreSQL's chunk rows two such
        commits run at once, each on its own connection), so memory stays
        within about three times ``commit_bytes``. If ``chunks`` raises, the
        write fails or the caller is cancelled, the blob is deleted (best
        effort: otherwise ``gc`` reclaims it) and the error propagates.
        """
        created = self._clock()
        key = new_blob_key()
        blob = await self._create(key, mime, created)
        pieces = _Pieces(self.piece_bytes, self.commit_bytes)
        most = self._io.commits_in_flight(self.storage)
        commits: list[asyncio.Future[datetime]] = []  # in flight, oldest first
        try:
            async with self._keepalive(blob):
                async for chunk in chunks:
                    for _ in pieces.feed(chunk):
                        ready = pieces.take()
                        if len(commits) >= most:
                            await commits.pop(0)
                        commits.append(asyncio.ensure_future(self._send(blob, ready)))
                for commit in commits:
                    await commit
                committed = await self._send(blob, pieces.take(final=True), final=True)
        except BaseException:
            # Commits in flight finish rather than being cancelled: a statement cut off
            # midway invalidates its connection, and aiosqlite can then drop an SQLite
            # connection without closing it, its write lock held until it is garbage.
            await _shielded(_settle(commits))
            await _shielded(self._discard(blob))
            raise
        return BlobInfo(key, COMMITTED, blob.size, mime, created, committed, committed)

    @reconnecting
    async def _create(self, key: str, mime: str | None, created: datetime) -> _Writing:
        async with self.db.transaction() as conn:
            values = {"p_key": key, "p_mime": mime, "p_now": created}
            row = (await conn.execute(self._s.inserts[self.storage], values)).one()
        return _Writing(row.id, row.oid, key, touched=time.monotonic())

    def _send(self, blob: _Writing, pieces: list[bytes], *, final: bool = False) -> Any:
        """Commit ``pieces`` after those already sent (their place fixed now: commits
        in flight may finish in any order)."""
        offset, seq = blob.sent, blob.sent_pieces
        blob.sent += sum(len(p) for p in pieces)
        blob.sent_pieces += len(pieces)
        return self._commit(blob, pieces, offset, seq, final=final)

    @reconnecting
    async def _commit(
        self, blob: _Writing, pieces: list[bytes], offset: int, seq: int, *, final: bool
    ) -> datetime:
        now = self._clock()
        size = offset + sum(len(p) for p in pieces)
        async with self.db.transaction() as conn:
            if pieces:
                await self._io.put(conn, blob, offset, seq, pieces)
            if not final:
                await self._io.relax_commit(conn)
            stmt = self._s.commit if final else self._s.progress
            result = await conn.execute(stmt, {"p_id": blob.id, "p_size": size, "p_now": now})
            if result.rowcount != 1:
                raise StorageError(
                    f"blob {blob.key} was removed while being written "
                    "(gc took its writer for dead: raise stale_seconds?)"
                )
        blob.size, blob.touched = max(blob.size, size), time.monotonic()
        return now

    @asynccontextmanager
    async def _keepalive(self, blob: _Writing) -> AsyncIterator[None]:
        """Touch ``blob``'s row while its producer is silent (see ``touch_interval``)."""
        if self.touch_interval is None:
            yield
            return
        done = asyncio.Event()  # not cancelled: a touch finishes (see write)
        task = asyncio.ensure_future(self._toucher(blob, self.touch_interval, done))
        try:
            yield
        finally:
            done.set()
            await _shielded(_settle([task]))

    async def _toucher(self, blob: _Writing, interval: float, done: asyncio.Event) -> None:
        while not done.is_set():
            wait = max(0.0, blob.touched + interval - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), wait)
            if done.is_set() or time.monotonic() - blob.touched < interval:
                continue  # stopped, or a commit touched it meanwhile
            try:
                await self._touch(blob)
            except TaskdbError as exc:
                log.warning("could not touch blob %s being written: %s", blob.key, exc)
            blob.touched = time.monotonic()

    @reconnecting
    async def _touch(self, blob: _Writing) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(self._s.touch, {"p_id": blob.id, "p_now": self._clock()})

    @reconnecting
    async def _drop(self, blob: _Writing) -> None:
        async with self.db.transaction() as conn:
            rows = (await conn.execute(self._s.discard, {"p_id": blob.id})).all()
            await self._io.drop(conn, rows)

    async def _discard(self, blob: _Writing) -> None:
        try:
            await self._drop(blob)
        except Exception as exc:  # best effort: gc reclaims the row once it is stale
            log.warning("could not delete unfinished blob %s: %s", blob.key, exc)

    # -- reading ------------------------------------------------------------------

    @reconnecting
    async def _row(self, key: str) -> Row[Any] | None:
        if not isinstance(key, str):
            raise InvalidJobInput(f"a blob key is a string, got {type(key).__name__}")
        async with self.db.transaction(write=False, atomic=False) as conn:
            return (await conn.execute(self._s.by_key, {"p_key": key})).first()

    async def info(self, key: str) -> BlobInfo | None:
        """The blob named ``key`` in any state, or ``None``."""
        row = await self._row(key)
        return None if row is None else _info(row)

    @reconnecting
    async def list_blobs(
        self, *, state: BlobState | None = None, limit: int = 100
    ) -> list[BlobInfo]:
        """The newest blobs first, optionally only those in ``state``."""
        stmt = select(blobs).order_by(blobs.c.id.desc()).limit(limit)
        if state is not None:
            stmt = stmt.where(blobs.c.state == state)
        async with self.db.transaction(write=False, atomic=False) as conn:
            return [_info(r) for r in (await conn.execute(stmt)).all()]

    async def open_stream(
        self, key: str, chunk_size: int = DEFAULT_CHUNK_BYTES
    ) -> AsyncIterator[bytes] | None:
        """The committed blob ``key`` as chunks of at most ``chunk_size`` bytes, or
        ``None`` when there is no such committed blob. Each few MiB are read in a
        transaction of their own (on PostgreSQL's chunk rows, a ``COPY`` of
        16 MiB streamed as the caller takes the chunks, the next one already
        running on a second connection): a blob deleted meanwhile ends the
        iteration with a :class:`StorageError` past what was being read."""
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigurationError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        row = await self._row(key)
        if row is None or row.state != COMMITTED:
            return None
        return self._io.read(self.db, row, chunk_size)

    async def read(self, key: str) -> Blob | None:
        """The committed blob ``key`` as a :class:`Blob` (a large one spills to a
        temporary file), or ``None``."""
        row = await self._row(key)
        if row is None or row.state != COMMITTED:
            return None
        writer = BlobWriter()
        try:
            async for chunk in self._io.read(self.db, row, DEFAULT_CHUNK_BYTES):
                writer.write(chunk)
        except BaseException:
            writer.discard()
            raise
        return writer.finish(mime=row.mime)

    # -- links (inside the caller's transaction) ----------------------------------

    async def _lock(self, conn: AsyncConnection, keys: Sequence[str]) -> set[str]:
        """Lock the rows of ``keys`` (sorted) in key order; returns those that exist."""
        found: set[str] = set()
        for batch in batches(keys):
            found.update(await conn.scalars(self._s.lock_keys, {"p_keys": batch}))
        return found

    async def _free(self, conn: AsyncConnection, keys: Iterable[str]) -> int:
        """Delete the committed blobs among ``keys`` (locked) that nothing links."""
        return len(await self._free_rows(conn, keys))

    async def _free_rows(self, conn: AsyncConnection, keys: Iterable[str]) -> list[Row[Any]]:
        rows: list[Row[Any]] = []
        for batch in batches(sorted(set(keys))):
            rows.extend((await conn.execute(self._s.free, {"p_keys": batch})).all())
        await self._io.drop(conn, rows)
        return rows

    async def link(self, conn: AsyncConnection, keys: Iterable[str], holder: str) -> list[str]:
        """Record, in ``conn``'s transaction, that ``holder`` refers to the blobs
        ``keys``; returns the keys that name no blob (those are not linked)."""
        return await self.link_holders(conn, {holder: keys})

    async def link_holders(
        self, conn: AsyncConnection, holders: Mapping[str, Iterable[str]]
    ) -> list[str]:
        """:meth:`link` for several holders at once (their blobs locked in one key
        order); returns the keys that name no blob."""
        pairs = {(k, holder) for holder, keys in holders.items() for k in keys}
        wanted = sorted({k for k, _ in pairs})
        if not wanted:
            return []
        found = await self._lock(conn, wanted)
        rows = [{"blob_key": k, "holder": h} for k, h in sorted(pairs) if k in found]
        if rows:
            await conn.execute(self._link, rows)
        return [k for k in wanted if k not in found]

    async def relink(self, conn: AsyncConnection, holder: str, keys: Iterable[str]) -> int:
        """Make ``holder``'s links exactly ``keys`` (in ``conn``'s transaction); the
        blobs it no longer refers to are deleted when nothing else links them.
        Returns how many blobs were deleted."""
        wanted = sorted(set(keys))
        params = {"p_holder": holder, "p_keys": wanted}
        dropped: set[str] = set(await conn.scalars(self._s.unlink_others, params))
        found = await self._lock(conn, sorted(dropped.union(wanted)))
        linked = [k for k in wanted if k in found]
        if linked:
            await conn.execute(self._link, [{"blob_key": k, "holder": holder} for k in linked])
        return await self._free(conn, dropped)

    async def release_holders(self, conn: AsyncConnection, holders: Iterable[str]) -> int:
        """Delete the links of ``holders`` (in ``conn``'s transaction) and the blobs
        left with no link; returns how many blobs were deleted."""
        dropped: set[str] = set()
        for batch in batches(sorted(set(holders))):
            dropped.update(await conn.scalars(self._s.unlink_holders, {"p_holders": batch}))
        if not dropped:
            return 0
        await self._lock(conn, sorted(dropped))
        return await self._free(conn, dropped)

    # -- garbage collection -------------------------------------------------------

    async def gc(
        self,
        *,
        dry_run: bool = False,
        grace_seconds: float = 3600.0,
        stale_seconds: float = 900.0,
        now: datetime | None = None,
    ) -> GcReport:
        """Delete committed blobs no row has linked for ``grace_seconds`` since their
        commit (the grace covers a blob committed but not yet linked by the row
        being written with its ref), and ``'writing'`` blobs untouched for
        ``stale_seconds`` (their writer died). Deletes in batches, each in a
        short transaction. Only large objects of deleted rows are unlinked:
        other applications' large objects in the same database are left alone.
        """
        seconds("grace_seconds", grace_seconds)
        seconds("stale_seconds", stale_seconds)
        now = self._clock() if now is None else now
        cutoffs = {
            "orphans": now - timedelta(seconds=grace_seconds),
            "stale": now - timedelta(seconds=stale_seconds),
        }
        found: dict[str, tuple[int, int]] = {}
        links = await (self._count_stale_links() if dry_run else self._sweep_stale_links())
        found["links"] = links[1:]  # blobs and bytes freed with them
        for kind, cutoff in cutoffs.items():
            lock, remove, count = self._s.sweeps[kind]
            if dry_run:
                found[kind] = await self._count(count, cutoff)
            else:
                found[kind] = await self._sweep(lock, remove, cutoff)
        return GcReport(
            dry_run=dry_run,
            blobs_removed=found["orphans"][0] + found["links"][0],
            stale_writers_removed=found["stale"][0],
            bytes_freed=found["orphans"][1] + found["stale"][1] + found["links"][1],
            stale_links_removed=links[0],
        )

    @reconnecting
    async def _count_stale_links(self) -> tuple[int, int, int]:
        async with self.db.transaction(write=False) as conn:
            return int(await conn.scalar(self._s.count_stale_links) or 0), 0, 0

    async def _sweep_stale_links(self) -> tuple[int, int, int]:
        """Delete the links of ended jobs whose output does not name their blob, in
        batches; returns (links, blobs freed, bytes freed)."""
        links = freed = size = 0
        while True:
            found, rows = await self._sweep_stale_links_batch()
            links += found
            freed += len(rows)
            size += sum(int(r.size) for r in rows)
            if found < GC_BATCH:
                return links, freed, size

    @reconnecting
    async def _sweep_stale_links_batch(self) -> tuple[int, Sequence[Row[Any]]]:
        async with self.db.transaction() as conn:
            pairs = (await conn.execute(self._s.stale_links, {"p_limit": GC_BATCH})).all()
            if not pairs:
                return 0, []
            unlink = [{"k": row.blob_key, "h": row.holder} for row in pairs]
            await conn.execute(self._s.unlink_pair, unlink)
            keys = sorted({str(row.blob_key) for row in pairs})
            await self._lock(conn, keys)
            rows = await self._free_rows(conn, keys)
        return len(pairs), rows

    @reconnecting
    async def _count(self, count: Any, cutoff: datetime) -> tuple[int, int]:
        async with self.db.transaction(write=False) as conn:
            row = (await conn.execute(count, {"p_cutoff": cutoff})).one()
        return int(row[0]), int(row[1])

    async def _sweep(self, lock: Any, remove: Any, cutoff: datetime) -> tuple[int, int]:
        removed = freed = 0
        while True:
            locked, rows = await self._sweep_batch(lock, remove, cutoff)
            removed += len(rows)
            freed += sum(int(r.size) for r in rows)
            if locked < GC_BATCH:
                return removed, freed

    @reconnecting
    async def _sweep_batch(
        self, lock: Any, remove: Any, cutoff: datetime
    ) -> tuple[int, Sequence[Row[Any]]]:
        """Delete up to ``GC_BATCH`` blobs past ``cutoff`` in one transaction; returns
        how many were locked and the rows deleted."""
        async with self.db.transaction() as conn:
            values = {"p_cutoff": cutoff, "p_limit": GC_BATCH}
            ids = list(await conn.scalars(lock, values))
            rows = (await conn.execute(remove, {**values, "p_ids": ids})).all() if ids else []
            await self._io.drop(conn, rows)
        return len(ids), rows
