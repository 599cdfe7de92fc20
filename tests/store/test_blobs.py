"""The blob store on both dialects: streaming, atomicity, links and gc."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import make_url, text

import taskdb
from taskdb import ConfigurationError, StorageError
from taskdb.cache import BlobStore, SqlTaskOutputRepository, make_cache_ref
from taskdb.store.blobs import _Pieces
from taskdb.store.postgres import READ_STATEMENT_BYTES
from tests.conftest import PG_ADMIN_URL, POOLED, pooled_db_url
from tests.helpers import FakeClock, eventually


@pytest.fixture(params=POOLED)
def db_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Also through PgBouncer in transaction mode (tests/conftest.py)."""
    return pooled_db_url(request, monkeypatch)


MiB = 1024 * 1024


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ at every offset of a MiB and between seeds."""
    unit = bytes((i * 7 + seed) % 251 for i in range(4093))
    return (unit * (size // len(unit) + 1))[:size]


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def leftovers(db: taskdb.Database) -> tuple[int, int, int]:
    """(blob rows, SQLite chunk rows, PostgreSQL large objects) in the database."""
    async with db.transaction(write=False) as conn:
        rows = await conn.scalar(text("SELECT count(*) FROM taskdb_blobs"))
        chunks = await conn.scalar(text("SELECT count(*) FROM taskdb_blob_chunks"))
        los = 0
        if db.dialect == "postgresql":
            los = await conn.scalar(text("SELECT count(*) FROM pg_largeobject_metadata"))
    return int(rows or 0), int(chunks or 0), int(los or 0)


@pytest.fixture(params=["chunks", "large_object"])
def storage(request: pytest.FixtureRequest, db: taskdb.Database) -> str:
    """Where blob bytes go: chunk rows (both dialects) or large objects (PostgreSQL)."""
    if request.param == "large_object" and db.dialect != "postgresql":
        pytest.skip("large objects are PostgreSQL's")
    return str(request.param)


def bytes_where(storage: str, blobs: int) -> tuple[int, int]:
    """(chunk rows or more, large objects) that ``blobs`` blobs leave in ``storage``."""
    return (0, blobs) if storage == "large_object" else (blobs, 0)


async def read_all(store: BlobStore, key: str, chunk_size: int = MiB) -> bytes | None:
    stream = await store.open_stream(key, chunk_size)
    if stream is None:
        return None
    return b"".join([chunk async for chunk in stream])


async def test_stream_5_mib_and_read_it_back(db: taskdb.Database, storage: str) -> None:
    store = BlobStore(db, storage=storage)
    data = pattern(5 * MiB)
    info = await store.write(chunked(data, MiB), mime="application/octet-stream")
    assert (info.state, info.size, info.mime) == ("committed", 5 * MiB, "application/octet-stream")
    assert await read_all(store, info.key) == data
    blob = await store.read(info.key)
    assert blob is not None and blob.size == 5 * MiB and blob.mime == "application/octet-stream"
    assert blob.read() == data
    stream = await store.open_stream(info.key, 300_000)
    assert stream is not None
    sizes = [len(chunk) async for chunk in stream]
    assert sum(sizes) == 5 * MiB and max(sizes) <= 300_000
    stored = await store.info(info.key)
    assert stored is not None and stored.committed_at is not None and stored.size == 5 * MiB


@pytest.mark.parametrize("chunk", [1, 333_333, 3 * MiB + 5])
async def test_odd_chunk_sizes(db: taskdb.Database, storage: str, chunk: int) -> None:
    # many small commits, two in flight at once on PostgreSQL's chunk rows
    store = BlobStore(db, piece_bytes=64 * 1024, commit_bytes=128 * 1024, storage=storage)
    data = pattern(100_000 if chunk == 1 else 2 * MiB + 17, seed=3)
    info = await store.write(chunked(data, chunk))
    assert info.size == len(data)
    assert await read_all(store, info.key, 100_000) == data


async def test_a_failing_producer_leaves_nothing(db: taskdb.Database, storage: str) -> None:
    store = BlobStore(db, storage=storage)

    async def broken() -> AsyncIterator[bytes]:
        for _ in range(6):  # past the first commit: bytes are already in the database
            yield pattern(MiB)
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        await store.write(broken())
    assert await leftovers(db) == (0, 0, 0)
    report = await store.gc(grace_seconds=0, stale_seconds=0)
    assert (report.blobs_removed, report.stale_writers_removed, report.bytes_freed) == (0, 0, 0)


@pytest.mark.parametrize("chunks_before_error", [1, 2, 3])
async def test_an_error_while_a_commit_is_in_flight_leaves_nothing(
    db: taskdb.Database, storage: str, chunks_before_error: int
) -> None:
    store = BlobStore(db, piece_bytes=64 * 1024, commit_bytes=64 * 1024, storage=storage)

    async def broken() -> AsyncIterator[bytes]:
        for _ in range(chunks_before_error):
            yield pattern(64 * 1024)  # each one starts a commit in the background
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        await store.write(broken())
    assert await leftovers(db) == (0, 0, 0)


async def test_a_cancelled_writer_leaves_nothing(db: taskdb.Database, storage: str) -> None:
    store = BlobStore(db, storage=storage)
    never = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield pattern(MiB)
        await never.wait()
        yield b"never"

    writer = asyncio.ensure_future(store.write(stalls()))

    async def writing() -> list[int]:
        return [b.size for b in await store.list_blobs(state="writing")]

    await eventually(writing, lambda sizes: bool(sizes) and sizes[0] >= 4 * MiB)
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    assert await leftovers(db) == (0, 0, 0)
    assert (await store.gc(grace_seconds=0, stale_seconds=0)).bytes_freed == 0


async def test_twenty_concurrent_writers(db: taskdb.Database) -> None:
    store = BlobStore(db, piece_bytes=64 * 1024, commit_bytes=128 * 1024)
    payloads = [pattern(300_000 + i * 1000, seed=i) for i in range(20)]
    infos = await asyncio.gather(*(store.write(chunked(p, 50_000)) for p in payloads))
    assert len({i.key for i in infos}) == 20
    for info, payload in zip(infos, payloads, strict=True):
        assert await read_all(store, info.key) == payload


async def test_an_abandoned_read_lets_go_of_its_reader(db: taskdb.Database) -> None:
    store = BlobStore(db)
    info = await store.write(chunked(pattern(6 * MiB), MiB))
    stream = await store.open_stream(info.key)
    assert stream is not None
    assert len(await anext(stream)) == MiB
    await stream.aclose()  # type: ignore[attr-defined]

    async def readers() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name == "taskdb-blob-reader"]

    await eventually(readers, lambda names: not names)
    assert await read_all(store, info.key) == pattern(6 * MiB)  # the blob is intact


def copy_backends(db_url: str, *, terminate: bool = False) -> int:
    """The backends of ``db_url``'s database whose last statement is a blob read's
    COPY and that still run it (``terminate``: all of them, killed)."""
    name = make_url(db_url).database
    where = "datname = %s AND query LIKE 'COPY (SELECT seq, data FROM taskdb_blob_chunks%%'"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        if terminate:
            sql = f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE {where}"
        else:
            sql = f"SELECT count(*) FROM pg_stat_activity WHERE {where} AND state = 'active'"
        row = admin.execute(sql, (name,)).fetchone()
    return int(row[0]) if row else 0


async def three_statements(db: taskdb.Database, seed: int) -> tuple[BlobStore, str, bytes]:
    """A PostgreSQL blob that takes three COPY statements to read: (store, key, bytes)."""
    if db.dialect != "postgresql":
        pytest.skip("PostgreSQL's COPY statements")
    store = BlobStore(db)
    data = pattern(2 * READ_STATEMENT_BYTES + 8 * MiB, seed)
    return store, (await store.write(chunked(data, MiB))).key, data


async def test_an_abandoned_postgresql_read_leaves_no_copy_running(
    db: taskdb.Database, db_url: str
) -> None:
    store, key, data = await three_statements(db, seed=4)
    for taken in (1, READ_STATEMENT_BYTES // MiB + 2):  # in the first statement, the second
        stream = await store.open_stream(key)
        assert stream is not None
        for _ in range(taken):
            await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
        await eventually(lambda: asyncio.to_thread(copy_backends, db_url), lambda n: n == 0)
    assert await read_all(store, key) == data  # the pool's connections are sound


async def test_a_postgresql_read_goes_on_after_its_connections_die(
    db: taskdb.Database, db_url: str
) -> None:
    store, key, data = await three_statements(db, seed=5)
    stream = await store.open_stream(key)
    assert stream is not None
    got = [await anext(stream)]
    assert await asyncio.to_thread(copy_backends, db_url, terminate=True) >= 1
    got.extend([chunk async for chunk in stream])
    assert b"".join(got) == data


async def test_a_blob_deleted_while_read_ends_the_stream_with_an_error(
    db: taskdb.Database, storage: str
) -> None:
    # more than a reader has in flight once it handed over a chunk (PostgreSQL's chunk
    # rows: two COPY statements, whose snapshots still see the blob)
    store = BlobStore(db, storage=storage)
    info = await store.write(chunked(pattern(2 * READ_STATEMENT_BYTES + 8 * MiB), MiB))
    stream = await store.open_stream(info.key)
    assert stream is not None
    await anext(stream)
    assert (await store.gc(grace_seconds=0)).blobs_removed == 1
    with pytest.raises(StorageError):
        async for _ in stream:
            pass


async def test_unknown_and_unfinished_blobs_are_not_readable(db: taskdb.Database) -> None:
    store = BlobStore(db)
    assert await store.read("no-such-key") is None
    assert await store.open_stream("no-such-key") is None
    assert await store.info("no-such-key") is None
    repo = SqlTaskOutputRepository(db)
    assert await repo.get_output_by_ref(make_cache_ref("no-such-key")) is None

    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield pattern(MiB)
        await release.wait()

    writer = asyncio.ensure_future(store.write(slow()))
    (pending,) = await eventually(lambda: store.list_blobs(state="writing"), bool)
    assert await store.open_stream(pending.key) is None
    assert await repo.get_output_by_ref(make_cache_ref(pending.key)) is None
    release.set()
    assert (await writer).size == MiB
    assert await store.read(pending.key) is not None


async def test_a_cache_row_holds_only_the_ref(db: taskdb.Database) -> None:
    repo = SqlTaskOutputRepository(db)
    assert repo.save_output_stream is not None
    ref = await repo.save_output_stream(
        "render", {"page": 1}, "image", chunked(pattern(5 * MiB), MiB)
    )
    await repo.save_output("render", {"page": 1}, {"image": ref, "pages": 1})
    async with db.transaction(write=False) as conn:
        raw = await conn.scalar(text("SELECT CAST(output AS TEXT) FROM taskdb_task_outputs"))
    assert isinstance(raw, str) and len(raw.encode()) < 1024
    assert await repo.get_output("render", {"page": 1}) == {"image": ref, "pages": 1}


async def test_gc_removes_orphans_past_the_grace_and_stale_writers(
    db: taskdb.Database, storage: str
) -> None:
    clock = FakeClock()
    store = BlobStore(db, clock=clock, commit_bytes=MiB, storage=storage)
    orphan = await store.write(chunked(pattern(1000), 1000))
    held = await store.write(chunked(pattern(2000), 1000))
    async with db.transaction() as conn:
        assert await store.link(conn, [held.key, "no-such-key"], "job:1") == ["no-such-key"]
    clock.advance(10)
    fresh = await store.write(chunked(pattern(500), 500))  # unlinked, but within the grace

    release = asyncio.Event()

    async def crashed() -> AsyncIterator[bytes]:  # a writer that stopped touching its row
        yield pattern(MiB)
        await release.wait()
        yield b"more"

    writer = asyncio.ensure_future(store.write(crashed()))
    await eventually(lambda: store.list_blobs(state="writing"), lambda b: b and b[0].size == MiB)

    later = clock.now + timedelta(seconds=45)  # orphan: 55 s old; fresh and writer: 45 s
    dry = await store.gc(dry_run=True, grace_seconds=50, stale_seconds=20, now=later)
    assert (dry.dry_run, dry.blobs_removed, dry.stale_writers_removed) == (True, 1, 1)
    assert dry.bytes_freed == 1000 + MiB
    assert (await leftovers(db))[0] == 4  # nothing removed

    report = await store.gc(grace_seconds=50, stale_seconds=20, now=later)
    assert report == dry.model_copy(update={"dry_run": False})
    assert await store.info(orphan.key) is None
    assert await read_all(store, held.key) == pattern(2000)
    assert await read_all(store, fresh.key) == pattern(500)

    release.set()
    with pytest.raises(StorageError):  # its row is gone: the writer cannot commit
        await writer
    assert await leftovers(db) == (2, *bytes_where(storage, 2))


async def test_a_silent_producer_keeps_its_blob_alive(db: taskdb.Database) -> None:
    clock = FakeClock()
    store = BlobStore(db, clock=clock, touch_interval=0.02)
    release = asyncio.Event()

    async def silent() -> AsyncIterator[bytes]:
        yield b"start"
        await release.wait()

    writer = asyncio.ensure_future(store.write(silent()))
    await eventually(lambda: store.list_blobs(state="writing"), bool)
    clock.advance(1000)
    touched = await eventually(
        lambda: store.list_blobs(state="writing"), lambda b: b[0].updated_at == clock.now
    )
    assert touched[0].created_at < clock.now
    report = await store.gc(stale_seconds=50, now=clock.now + timedelta(seconds=10))
    assert report.stale_writers_removed == 0
    release.set()
    assert (await writer).size == len(b"start")


async def test_release_holders_frees_only_unshared_blobs(db: taskdb.Database) -> None:
    store = BlobStore(db)
    a = await store.write(chunked(b"a" * 10, 10))
    b = await store.write(chunked(b"b" * 10, 10))
    c = await store.write(chunked(b"c" * 10, 10))
    async with db.transaction() as conn:
        await store.link(conn, [a.key, b.key], "job:1")
        await store.link(conn, [a.key], "cache:7")
        await store.link(conn, [c.key], "job:2")
    async with db.transaction() as conn:
        assert await store.release_holders(conn, ["job:1"]) == 1
    assert await store.info(b.key) is None
    assert await read_all(store, a.key) == b"a" * 10  # cache:7 still holds it

    async with db.transaction() as conn:  # relink: job:2 now holds a instead of c
        assert await store.relink(conn, "job:2", [a.key]) == 1
    assert await store.info(c.key) is None
    async with db.transaction() as conn:
        assert await store.release_holders(conn, ["cache:7"]) == 0
        assert await store.release_holders(conn, ["job:2", "job:404"]) == 1
    assert await leftovers(db) == (0, 0, 0)


async def test_a_rolled_back_release_keeps_the_blob(db: taskdb.Database) -> None:
    store = BlobStore(db)
    a = await store.write(chunked(b"a", 1))
    async with db.transaction() as conn:
        await store.link(conn, [a.key], "job:1")
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            assert await store.release_holders(conn, ["job:1"]) == 1
            raise RuntimeError("the caller's transaction fails")
    assert await read_all(store, a.key) == b"a"


async def test_concurrent_saves_of_one_entry_keep_links_consistent(db: taskdb.Database) -> None:
    repo = SqlTaskOutputRepository(db)
    assert repo.save_output_stream is not None and repo.get_output_by_ref is not None
    shared = await repo.save_output_stream("t", {}, "s", chunked(b"shared", 6))
    refs = [await repo.save_output_stream("t", {}, "o", chunked(b"%d" % i, 2)) for i in range(12)]
    await asyncio.gather(
        *(repo.save_output("t", {"k": i % 2}, {"o": r, "s": shared}) for i, r in enumerate(refs))
    )
    kept = []
    for k in (0, 1):
        output = await repo.get_output("t", {"k": k})
        assert output is not None
        kept.append(output["o"])
    alive = [r for r in refs if await repo.get_output_by_ref(r) is not None]
    assert sorted(r["$ref"] for r in alive) == sorted(r["$ref"] for r in kept)  # type: ignore[index]
    assert await repo.get_output_by_ref(shared) is not None
    assert await repo.clear() == 2
    assert await leftovers(db) == (0, 0, 0)


async def test_a_new_connection_reads_the_blob(db: taskdb.Database, db_url: str) -> None:
    repo = SqlTaskOutputRepository(db)
    assert repo.save_output_stream is not None
    data = pattern(3 * MiB + 11, seed=9)
    ref = await repo.save_output_stream("t", {}, "out", chunked(data, MiB), mime="image/png")
    await repo.save_output("t", {}, {"out": ref})
    async with taskdb.connect(db_url) as other:
        again = SqlTaskOutputRepository(other)
        output = await again.get_output("t", {})
        assert output is not None and output["out"] == ref
        blob = await again.get_output_by_ref(ref)
        assert blob is not None and blob.read() == data and blob.mime == "image/png"


async def test_gc_arguments_are_checked(db: taskdb.Database) -> None:
    with pytest.raises(taskdb.ConfigurationError):
        await BlobStore(db).gc(grace_seconds=-1)
    with pytest.raises(taskdb.ConfigurationError):
        BlobStore(db, piece_bytes=2, commit_bytes=1)


def test_pieces_are_exact_and_memory_is_bounded() -> None:
    pieces = _Pieces(piece_bytes=10, commit_bytes=30)
    data = pattern(1000)
    out: list[bytes] = []
    fed = 0
    for size in (1, 9, 10, 25, 3, 200, 7, 745):
        for _ in pieces.feed(data[fed : fed + size]):
            ready = pieces.take()
            assert sum(map(len, ready)) == 30  # a commit's worth, never more
            out.extend(ready)
        fed += size
    out.extend(pieces.take(final=True))
    assert b"".join(out) == data and all(len(p) == 10 for p in out)
    with pytest.raises(taskdb.InvalidJobInput):
        list(pieces.feed("text"))  # type: ignore[arg-type]


async def test_blobs_of_either_storage_are_read_and_freed_alike(db: taskdb.Database) -> None:
    storages = ["chunks", "large_object"] if db.dialect == "postgresql" else ["chunks"]
    written = {
        s: await BlobStore(db, storage=s).write(chunked(pattern(3 * MiB, 5), MiB)) for s in storages
    }
    for reader in storages:  # a store reads a blob from wherever it was written
        for info in written.values():
            assert await read_all(BlobStore(db, storage=reader), info.key, 700_000) == pattern(
                3 * MiB, 5
            )
    los = 1 if db.dialect == "postgresql" else 0
    assert await leftovers(db) == (len(storages), 3, los)
    report = await BlobStore(db).gc(grace_seconds=0)
    assert report.blobs_removed == len(storages)
    assert await leftovers(db) == (0, 0, 0)


async def test_a_missing_chunk_row_ends_the_read_with_an_error(db: taskdb.Database) -> None:
    store = BlobStore(db, piece_bytes=MiB, commit_bytes=MiB)
    info = await store.write(chunked(pattern(10 * MiB), MiB))
    async with db.transaction() as conn:
        await conn.execute(text("DELETE FROM taskdb_blob_chunks WHERE seq = 6"))
    stream = await store.open_stream(info.key)
    assert stream is not None
    got = 0
    with pytest.raises(StorageError, match="misses chunk 6"):
        async for chunk in stream:
            got += len(chunk)
    assert got == 6 * MiB  # every byte before the gap was handed over


async def test_an_unknown_storage_is_refused(db: taskdb.Database) -> None:
    with pytest.raises(ConfigurationError, match="blob storage 'tape'"):
        BlobStore(db, storage="tape")
    if db.dialect == "sqlite":
        with pytest.raises(ConfigurationError, match="large_object"):
            BlobStore(db, storage="large_object")


async def test_the_environment_picks_the_storage(
    db: taskdb.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKDB_BLOB_STORAGE", "large_object")
    if db.dialect == "sqlite":
        with pytest.raises(ConfigurationError, match=r"\$TASKDB_BLOB_STORAGE"):
            BlobStore(db)
        return
    await BlobStore(db).write(chunked(pattern(1000), 1000))
    assert BlobStore(db, storage="chunks").storage == "chunks"  # the argument wins
    assert await leftovers(db) == (1, 0, 1)
