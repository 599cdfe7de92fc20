"""``StreamPump``: the graph-aware decisions about a task's binary stream.

``can_stream_binary_to_cache`` says when a task's bytes may go straight
into the cache without the runner accumulating them; ``pipe_binary_to_cache``
turns a task's events into the chunk stream a cache sink consumes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from typing import Any

from taskdb.cache.coordinator import BinaryRefSink
from taskdb.cache.repository import TaskOutputRepository
from taskdb.core.refs import CacheRef
from taskdb.graph.dataflow import DataflowGraph
from taskdb.graph.task import Task
from taskdb.streams.events import BinaryDelta, StreamEvent
from taskdb.streams.ports import edge_needs_accumulation, get_streaming_ports


class StreamPump:
    """Static decisions and plumbing; holds no state."""

    @staticmethod
    def any_consumer_needs_materialized(graph: DataflowGraph, task: Task) -> bool:
        """Whether a consumer of one of ``task``'s binary ports needs the whole
        value rather than the deltas (its port does not stream binary, or it
        must wait for ``task`` to finish anyway)."""
        for flow in graph.outgoing(task.id):
            consumer = graph.tasks[flow.target_id]
            for source_port, target_port in graph.port_pairs(flow):
                binary = dict(get_streaming_ports(task.output_schema)).get(source_port)
                if binary != "binary":
                    continue
                if edge_needs_accumulation(
                    task.output_schema, source_port, consumer.input_schema, target_port
                ) or not graph.is_stream_edge(flow, source_port, target_port):
                    return True
        return False

    @staticmethod
    def can_stream_binary_to_cache(
        graph: DataflowGraph, task: Task, cache: TaskOutputRepository | None
    ) -> bool:
        """True only when ``cache`` streams, every streaming port of ``task`` is
        binary, and no consumer needs the materialized bytes."""
        if cache is None or not cache.supports_streaming():
            return False
        modes = [mode for _, mode in get_streaming_ports(task.output_schema)]
        if not modes or any(mode != "binary" for mode in modes):
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
