"""``StreamPump``: the graph-aware decisions about a task's binary stream.

Two questions decide what happens to a binary port's bytes, each answered in
one place. *Do they go to the cache as a stream?* The cache side answers
(:meth:`~taskdb.cache.coordinator.CacheCoordinator.binary_sink_ports`: the
task is cached and the cache can stream). *Does a consumer need them whole?*
The graph answers (:meth:`StreamPump.port_needs_materialized`). The runner
asks both for every streaming task: bytes that go to the cache and that no
consumer needs whole are never accumulated; bytes that go to the cache and
that a consumer needs are teed. :meth:`StreamPump.can_stream_binary_to_cache`
combines them for a whole task; :meth:`StreamPump.pipe_binary_to_cache`
drives a cache sink from a task's events outside a run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from typing import Any

from taskdb.cache.coordinator import BinaryRefSink, CacheCoordinator
from taskdb.cache.repository import TaskOutputRepository
from taskdb.core.refs import CacheRef
from taskdb.graph.dataflow import DataflowGraph
from taskdb.graph.task import Task
from taskdb.streams.events import BinaryDelta, StreamEvent
from taskdb.streams.ports import get_streaming_ports


class StreamPump:
    """Static decisions and plumbing; holds no state."""

    @staticmethod
    def port_needs_materialized(graph: DataflowGraph, task: Task, port: str) -> bool:
        """Whether a consumer of ``task.port`` needs the whole value rather than the
        deltas (its port does not stream in the same mode, so it waits for
        ``task`` to finish)."""
        return graph.needs_value(task.id, port)

    @staticmethod
    def any_consumer_needs_materialized(graph: DataflowGraph, task: Task) -> bool:
        """Whether a consumer of one of ``task``'s binary ports needs the whole value."""
        return any(
            StreamPump.port_needs_materialized(graph, task, port)
            for port, mode in get_streaming_ports(task.output_schema)
            if mode == "binary"
        )

    @staticmethod
    def can_stream_binary_to_cache(
        graph: DataflowGraph, task: Task, cache: TaskOutputRepository | None
    ) -> bool:
        """True only when ``cache`` streams, every streaming port of ``task`` is
        binary (and so goes to the cache as a stream), and no consumer needs the
        materialized bytes: the runner then holds none of them."""
        streaming = [port for port, _mode in get_streaming_ports(task.output_schema)]
        sinks = CacheCoordinator(cache).binary_sink_ports(task.output_schema, task.cacheable)
        if not streaming or sinks != streaming:
            return False
        return not StreamPump.any_consumer_needs_materialized(graph, task)

    @staticmethod
    def pipe_binary_to_cache(
        events: AsyncIterable[StreamEvent],
        cache: TaskOutputRepository,
        task_type: str,
        inputs: Mapping[str, Any],
        port: str,
        *,
        mime: str | None = None,
    ) -> tuple[Awaitable[CacheRef], Callable[[], None]]:
        """Drive ``cache.save_output_stream`` with the ``binary-delta`` chunks of
        ``port`` found in ``events``.

        Returns ``(ref, detach)``: ``ref`` resolves to the committed
        :class:`CacheRef` at the end of the stream (or raises the producer's or
        the sink's error); ``detach()`` stops piping and commits nothing.
        """
        sink = BinaryRefSink(cache, task_type, inputs, port, mime=mime)

        async def pump() -> CacheRef:
            try:
                async for event in events:
                    if isinstance(event, BinaryDelta) and event.port == port:
                        await sink.send(event.chunk)
            except BaseException:
                await asyncio.shield(sink.cancel())
                raise
            return await sink.finish()

        task = asyncio.ensure_future(pump())

        def detach() -> None:
            task.cancel()

        return task, detach
