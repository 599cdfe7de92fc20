"""StreamPump decisions in isolation, and pipe_binary_to_cache."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import taskdb
from taskdb.cache import MemoryTaskOutputRepository, SqlTaskOutputRepository, is_cache_ref
from taskdb.graph import StreamPump, Task, TaskContext, TaskGraph
from taskdb.store.blobs import BlobStore
from taskdb.streams import BinaryDelta, Finish, StreamEvent, TextDelta
from tests.graph.tasks import BIN_OUT, TEXT_OUT, Bytes, Words

MIB = 1024 * 1024


class Digest(Task):
    """Needs the whole bytes (its port does not stream)."""

    input_schema = {"properties": {"data": {}}}

    async def execute(self, inputs: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return {"size": len(bytes(inputs["data"]))}


class Copy(Task):
    """Reads the binary deltas live (same mode)."""

    input_schema = BIN_OUT
    output_schema = BIN_OUT

    async def execute_stream(
        self, inputs: dict[str, Any], ctx: TaskContext
    ) -> AsyncIterator[StreamEvent]:
        async for event in ctx.input_stream("data"):
            if isinstance(event, BinaryDelta):
                yield event
        yield Finish({})


class Mixed(Task):
    output_schema = {"properties": {**BIN_OUT["properties"], **TEXT_OUT["properties"]}}


def graph_of(*tasks: Task) -> TaskGraph:
    graph = TaskGraph()
    for task in tasks:
        graph.add(task)
    return graph


def test_can_stream_binary_to_cache_cases() -> None:
    streaming = MemoryTaskOutputRepository(streaming=True)
    graph = graph_of(Bytes("b"), Words("w"), Mixed("m"))
    assert StreamPump.can_stream_binary_to_cache(graph, graph.tasks["b"], streaming)
    assert not StreamPump.can_stream_binary_to_cache(graph, graph.tasks["b"], None)
    plain = MemoryTaskOutputRepository(streaming=False)
    assert not StreamPump.can_stream_binary_to_cache(graph, graph.tasks["b"], plain)
    assert not StreamPump.can_stream_binary_to_cache(graph, graph.tasks["w"], streaming)
    assert not StreamPump.can_stream_binary_to_cache(graph, graph.tasks["m"], streaming)


class Uncached(Bytes):
    cacheable = False


def test_a_task_whose_outputs_are_not_cached_never_streams_to_the_cache() -> None:
    """The runner sends bytes to the cache only for cached outputs: the pump agrees."""
    graph = graph_of(Uncached("u"))
    assert not StreamPump.can_stream_binary_to_cache(
        graph, graph.tasks["u"], MemoryTaskOutputRepository()
    )


def test_a_consumer_needing_materialized_bytes_blocks_pure_streaming() -> None:
    streaming = MemoryTaskOutputRepository()
    graph = graph_of(Bytes("b"), Copy("copy"))
    graph.connect("b", "data", "copy", "data")
    assert not StreamPump.any_consumer_needs_materialized(graph, graph.tasks["b"])
    assert StreamPump.can_stream_binary_to_cache(graph, graph.tasks["b"], streaming)
    graph.add(Digest("digest"))
    graph.connect("b", "data", "digest", "data")
    assert StreamPump.any_consumer_needs_materialized(graph, graph.tasks["b"])
    assert StreamPump.port_needs_materialized(graph, graph.tasks["b"], "data")
    assert not StreamPump.can_stream_binary_to_cache(graph, graph.tasks["b"], streaming)


async def events(*chunks: bytes, fail: bool = False) -> AsyncIterator[StreamEvent]:
    yield TextDelta("other", "ignored")
    for chunk in chunks:
        yield BinaryDelta("data", chunk)
        yield BinaryDelta("elsewhere", b"not this port")
    if fail:
        raise RuntimeError("producer died")
    yield Finish({})


async def test_pipe_binary_to_cache_feeds_the_sink_and_resolves_at_end() -> None:
    cache = MemoryTaskOutputRepository()
    ref, _detach = StreamPump.pipe_binary_to_cache(
        events(b"ab", b"cd", b"ef"), cache, "T", {"x": 1}, "data", mime="text/plain"
    )
    committed = await ref
    assert is_cache_ref(committed)
    assert committed["size"] == 6
    assert cache.get_output_by_ref is not None
    blob = await cache.get_output_by_ref(committed)
    assert blob is not None and blob.read() == b"abcdef"


async def test_pipe_binary_to_cache_commits_nothing_when_the_producer_fails(
    db: taskdb.Database,
) -> None:
    cache = SqlTaskOutputRepository(db)
    ref, _detach = StreamPump.pipe_binary_to_cache(
        events(bytes(3 * MIB), bytes(3 * MIB), fail=True), cache, "T", {}, "data"
    )
    with pytest.raises(RuntimeError, match="producer died"):
        await ref
    assert await BlobStore(db).list_blobs() == []


async def test_detach_stops_piping_and_commits_nothing(db: taskdb.Database) -> None:
    cache = SqlTaskOutputRepository(db)
    written = asyncio.Event()

    async def endless() -> AsyncIterator[StreamEvent]:
        while True:  # more than one commit's worth, then the producer hangs
            for _ in range(6):
                yield BinaryDelta("data", bytes(MIB))
            written.set()
            await asyncio.Event().wait()

    ref, detach = StreamPump.pipe_binary_to_cache(endless(), cache, "T", {}, "data")
    await asyncio.wait_for(written.wait(), 30)
    detach()
    with pytest.raises(asyncio.CancelledError):
        await ref
    assert await BlobStore(db).list_blobs() == []
