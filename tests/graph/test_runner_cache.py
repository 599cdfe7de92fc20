"""The runner with an output cache: hits, binary refs, threshold, tee (memory and SQL)."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import pytest

import taskdb
from taskdb import TaskFailed
from taskdb.cache import (
    MemoryTaskOutputRepository,
    RunPrivateCacheRepo,
    SqlTaskOutputRepository,
    TaskOutputRepository,
    is_cache_ref,
    resolve_output,
)
from taskdb.graph import RunConfig, Task, TaskContext, TaskGraph
from taskdb.store.blobs import BlobStore
from taskdb.streams import BinaryDelta, Blob, StreamError, StreamEvent
from tests.graph.tasks import BIN_OUT, Bytes, Length, Words
from tests.helpers import eventually

MIB = 1024 * 1024


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def cache_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue(
        "fresh_sqlite_url" if request.param == "sqlite" else "fresh_pg_url"
    )
    return url


@pytest.fixture
async def cache(cache_url: str | None) -> AsyncIterator[TaskOutputRepository]:
    if cache_url is None:
        yield MemoryTaskOutputRepository()
        return
    db = taskdb.connect(cache_url)
    yield SqlTaskOutputRepository(db)
    await db.aclose()


class Digest(Task):
    """Needs the whole bytes of ``data`` (a value edge from a binary port)."""

    input_schema = {"properties": {"data": {}}}
    output_schema = {"properties": {"size": {}, "kind": {}}}
    cacheable = False

    async def execute(self, inputs: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        data = inputs["data"]
        return {"size": len(bytes(data)), "kind": type(data).__name__}


def bytes_graph(chunks: int, size: int) -> TaskGraph:
    graph = TaskGraph()
    graph.add(Bytes("bytes", chunks=chunks, size=size))
    return graph


async def resolved(cache: TaskOutputRepository, value: Any) -> Any:
    assert cache.get_output_by_ref is not None
    return await resolve_output(value, cache.get_output_by_ref)


async def test_a_cache_hit_skips_execution_and_still_finishes(
    cache: TaskOutputRepository,
) -> None:
    graph = TaskGraph()
    graph.add(Words("words", count=3))
    graph.add(Length("length"))
    graph.connect("words", "text", "length", "text")
    Words.runs = Length.runs = 0
    first = await graph.run(config=RunConfig(output_cache=cache))
    finishes: list[tuple[str, StreamEvent]] = []
    second = await graph.run(
        config=RunConfig(
            output_cache=cache,
            on_event=lambda t, e: finishes.append((t, e)) if e.type == "finish" else None,
        )
    )
    assert (Words.runs, Length.runs) == (1, 1)
    assert second.cached == {"words", "length"}
    assert second.outputs == first.outputs
    assert [t for t, _ in finishes] == ["words"]  # the streaming task's hit yields its finish
    assert await cache.size() == 2


async def test_binary_output_streams_into_the_cache_as_a_ref(cache: TaskOutputRepository) -> None:
    if not cache.supports_streaming():
        pytest.skip("needs a streaming cache")
    result = await bytes_graph(5, MIB).run(
        config=RunConfig(output_cache=cache, reference_threshold_bytes=0)
    )
    ref = result["bytes"]["data"]
    assert is_cache_ref(ref)
    assert ref["size"] == 5 * MIB and ref.get("mime") == "application/octet-stream"
    assert len(json.dumps(result["bytes"])) < 1024
    blob = await resolved(cache, ref)
    assert isinstance(blob, Blob) and blob.size == 5 * MIB
    assert b"".join(blob.chunks())[MIB * 4 : MIB * 4 + 3] == b"\x04\x04\x04"
    # the cache row holds the ref too: a hit returns it without running
    Bytes.runs = 0
    again = await bytes_graph(5, MIB).run(
        config=RunConfig(output_cache=cache, reference_threshold_bytes=0)
    )
    assert Bytes.runs == 0 and again["bytes"]["data"] == ref


async def test_refs_below_the_threshold_are_rehydrated(cache: TaskOutputRepository) -> None:
    result = await bytes_graph(4, 1000).run(config=RunConfig(output_cache=cache))
    value = result["bytes"]["data"]
    assert isinstance(value, Blob) and value.size == 4000
    Bytes.runs = 0
    hit = await bytes_graph(4, 1000).run(config=RunConfig(output_cache=cache))
    assert Bytes.runs == 0
    assert bytes(hit["bytes"]["data"]) == bytes(value)


async def test_tee_gives_the_consumer_bytes_and_the_output_a_ref(
    cache: TaskOutputRepository,
) -> None:
    if not cache.supports_streaming():
        pytest.skip("needs a streaming cache")
    graph = bytes_graph(3, MIB)
    graph.add(Digest("digest"))
    graph.connect("bytes", "data", "digest", "data")
    result = await graph.run(config=RunConfig(output_cache=cache, reference_threshold_bytes=0))
    assert result["digest"] == {"size": 3 * MIB, "kind": "Blob"}
    assert is_cache_ref(result["bytes"]["data"])
    # a later hit hands the consumer the bytes again, read back from the cache
    hit = await graph.run(config=RunConfig(output_cache=cache, reference_threshold_bytes=0))
    assert "bytes" in hit.cached and hit["digest"] == {"size": 3 * MIB, "kind": "Blob"}


async def test_run_private_cache_keeps_runs_apart(cache: TaskOutputRepository) -> None:
    Words.runs = 0
    for run_id in ("run-a", "run-b", "run-a"):
        graph = TaskGraph()
        graph.add(Words("words", count=2))
        await graph.run(config=RunConfig(output_cache=RunPrivateCacheRepo(cache, run_id)))
    assert Words.runs == 2  # run-a's second attempt resumed from its own entry
    assert await cache.size() == 0  # nothing leaked into the shared namespace


async def test_piping_to_the_cache_does_not_hold_the_bytes(cache: TaskOutputRepository) -> None:
    if not cache.supports_streaming() or isinstance(cache, MemoryTaskOutputRepository):
        pytest.skip("needs a database cache (the memory cache holds its blobs by design)")
    tracemalloc.start()
    try:
        result = await bytes_graph(48, MIB).run(
            config=RunConfig(output_cache=cache, reference_threshold_bytes=0)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result["bytes"]["data"]["size"] == 48 * MIB
    assert peak < 24 * MIB, f"peak {peak / MIB:.1f} MiB for a 48 MiB stream"


class Documented(Task):
    """A non-binary port whose value looks like a reference: it is data."""

    output_schema = {"properties": {"schema": {"type": "object"}, "fake": {"type": "object"}}}

    async def execute(self, inputs: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return {
            "schema": {"$ref": "#/defs/x"},
            "fake": {"kind": "taskdb/CacheRef", "$ref": "nope", "size": 1},
        }


async def test_ref_lookalikes_outside_binary_ports_are_never_resolved(
    cache: TaskOutputRepository,
) -> None:
    graph = TaskGraph()
    graph.add(Documented("doc"))
    expected = {
        "schema": {"$ref": "#/defs/x"},
        "fake": {"kind": "taskdb/CacheRef", "$ref": "nope", "size": 1},
    }
    first = await graph.run(config=RunConfig(output_cache=cache))
    hit = await graph.run(config=RunConfig(output_cache=cache))
    assert first["doc"] == hit["doc"] == expected
    assert "doc" in hit.cached
    assert not is_cache_ref(expected["schema"])


class BrokenBytes(Task):
    """Streams 6 MiB of binary deltas, then fails or hangs (``hang``)."""

    output_schema = BIN_OUT
    hang = False

    async def execute_stream(
        self, inputs: dict[str, Any], ctx: TaskContext
    ) -> AsyncIterator[StreamEvent]:
        for _ in range(6):
            yield BinaryDelta("data", bytes(MIB))
        if self.hang:
            await asyncio.Event().wait()
        yield StreamError(OSError("encoder crashed"))


async def test_a_failing_or_aborted_binary_stream_leaves_no_blob(db: taskdb.Database) -> None:
    cache = SqlTaskOutputRepository(db)
    graph = TaskGraph()
    graph.add(BrokenBytes("broken"))
    with pytest.raises(TaskFailed, match="encoder crashed"):
        await graph.run(config=RunConfig(output_cache=cache, reference_threshold_bytes=0))
    assert await BlobStore(db).list_blobs() == []

    hanging = BrokenBytes("hanging")
    hanging.hang = True
    graph = TaskGraph()
    graph.add(hanging)
    abort = asyncio.Event()
    run = asyncio.ensure_future(graph.run(config=RunConfig(output_cache=cache, abort_signal=abort)))

    async def some_bytes_committed() -> bool:
        return bool(await BlobStore(db).list_blobs(state="writing"))

    await eventually(some_bytes_committed, lambda found: found)
    abort.set()
    with pytest.raises(taskdb.AbortedJobError):
        await run
    assert await BlobStore(db).list_blobs() == []
    assert await cache.size() == 0
