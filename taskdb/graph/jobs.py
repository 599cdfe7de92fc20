"""Durable graph jobs: submit a :class:`TaskGraph` as a job; a worker runs it.

The worker runs the graph with a :class:`RunPrivateCacheRepo` namespaced by
the job's run id over the database cache, so when a worker dies mid-graph
the next attempt (on any worker) reuses every task output already saved and
only runs what is left. Binary outputs stay in the database as refs; the
job's output is ``{"outputs": {task_id: output}}`` with those refs in it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any, cast

from taskdb.cache.repository import RunPrivateCacheRepo
from taskdb.cache.sql import SqlTaskOutputRepository
from taskdb.errors import InvalidJobInput
from taskdb.graph.model import TaskGraph
from taskdb.graph.registry import graph_from_json, graph_to_json
from taskdb.graph.runner import RunConfig
from taskdb.queue.client import JobHandle, JobQueueClient
from taskdb.queue.context import JobContext
from taskdb.queue.outputs import link_output, store_output
from taskdb.settings import DEFAULT_REFERENCE_THRESHOLD
from taskdb.store.blobs import BlobStore
from taskdb.store.database import Database
from taskdb.streams.events import (
    BinaryDelta,
    ObjectDelta,
    Phase,
    Snapshot,
    StreamEvent,
    TextDelta,
    with_port,
)


def graph_job_input(graph: TaskGraph, inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The job input that describes running ``graph`` with ``inputs``."""
    return {"graph": graph_to_json(graph), "inputs": dict(inputs or {})}


async def submit_graph(
    client: JobQueueClient,
    graph: TaskGraph,
    inputs: Mapping[str, Any] | None = None,
    **options: Any,
) -> JobHandle:
    """Submit ``graph`` as a job of ``client``'s queue (``options`` as for ``submit``)."""
    return await client.submit(graph_job_input(graph, inputs), **options)


class GraphJobHandler:
    """A :class:`~taskdb.JobQueueServer` handler running submitted graphs.

    Progress is the mean of the tasks' progress. The job's stream (``on_stream``
    listeners, and ``follow`` when submitted with ``durable_stream=True``)
    carries every task's deltas with the port named ``"task_id.port"``, their
    snapshots likewise, and phases as ``"task_id: message"``; the tasks' own
    finish and error events stay inside the run (the job's stream ends with
    the job's). ``keep_cache`` keeps the run-private cache entries after success
    (by default they are cleared; the job row keeps the refs it needs).
    """

    def __init__(
        self,
        db: Database,
        *,
        reference_threshold_bytes: int = DEFAULT_REFERENCE_THRESHOLD,
        keep_cache: bool = False,
    ) -> None:
        self.db = db
        self.reference_threshold_bytes = reference_threshold_bytes
        self.keep_cache = keep_cache

    async def __call__(self, input: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
        if not isinstance(input, Mapping) or not isinstance(input.get("graph"), Mapping):
            raise InvalidJobInput("a graph job's input must be {'graph': ..., 'inputs': {...}}")
        graph = graph_from_json(input["graph"])
        job = ctx.job
        run_id = job.job_run_id or f"job-{job.id}"
        cache = RunPrivateCacheRepo(SqlTaskOutputRepository(self.db), run_id)
        progress = _Progress(ctx, list(graph.tasks))

        def on_event(task_id: str, event: StreamEvent) -> None:
            flat = job_stream_event(task_id, event)
            if flat is not None:
                ctx.emit_stream_event(flat)

        try:
            result = await graph.run(
                input.get("inputs") or {},
                RunConfig(
                    output_cache=cache,
                    reference_threshold_bytes=self.reference_threshold_bytes,
                    run_id=run_id,
                    abort_signal=ctx.abort_signal,
                    on_progress=progress.update,
                    on_event=on_event,
                ),
            )
        finally:
            await progress.close()
        blobs = BlobStore(self.db)
        output = await store_output(
            {"outputs": result.outputs}, blobs, self.reference_threshold_bytes
        )
        if not self.keep_cache:
            # link what the outputs hold to this job before the run-private entries,
            # which also link those blobs, go
            await link_output(output, blobs, job.id)
            await cache.clear()
        return cast(dict[str, Any], output)


def job_stream_event(task_id: str, event: StreamEvent) -> StreamEvent | None:
    """A task's event as its graph job streams it (``None``: not streamed)."""
    if isinstance(event, TextDelta | ObjectDelta | BinaryDelta):
        return with_port(event, f"{task_id}.{event.port}")
    if isinstance(event, Snapshot):
        return Snapshot({f"{task_id}.{port}": value for port, value in event.data.items()})
    if isinstance(event, Phase):
        return Phase(f"{task_id}: {event.message}", event.progress)
    return None


class _Progress:
    """Folds per-task progress into the job's, writing only the latest value."""

    def __init__(self, ctx: JobContext, task_ids: list[str]) -> None:
        self._ctx = ctx
        self._tasks = dict.fromkeys(task_ids, 0.0)
        self._latest: tuple[float, str | None] | None = None
        self._wake = asyncio.Event()
        self._writer = asyncio.ensure_future(self._write())

    def update(self, task_id: str, progress: float, message: str | None) -> None:
        self._tasks[task_id] = max(0.0, min(100.0, progress))
        mean = sum(self._tasks.values()) / max(1, len(self._tasks))
        self._latest = (mean, f"{task_id}: {message}" if message else task_id)
        self._wake.set()

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._latest is not None:
                progress, message = self._latest
                await self._ctx.update_progress(progress, message)

    async def close(self) -> None:
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
