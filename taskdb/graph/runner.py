"""Running a task graph: ``RunConfig``, ``GraphRunner`` and ``GraphResult``.

Every task runs in its own asyncio task as soon as its inputs are ready.
Value dataflows wait for the producer's final output; stream edges hand the
consumer the producer's deltas through a bounded :class:`Channel` per
consumer, so fan-out delivers the same events in order to each and a slow
consumer slows its producer instead of growing memory.

A streaming task's events go through a :class:`StreamProcessor` that keeps
only the ports someone needs whole: a consumer on a value edge, the cache,
or (``should_accumulate``) the caller, for leaf tasks. Binary ports of a
cached task stream straight into a streaming cache through per-port sinks
and the output carries a ``CacheRef`` there; when a consumer also needs the
bytes, the runner tees (the consumer gets the bytes, the output the ref).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from taskdb.cache.coordinator import CacheCoordinator
from taskdb.cache.repository import TaskOutputRepository
from taskdb.core.inline import iter_binary_chunks
from taskdb.core.refs import is_cache_ref
from taskdb.errors import AbortedJobError, GraphError, GraphTimeout, TaskFailed
from taskdb.graph.dataflow import ALL_PORTS, DataflowGraph
from taskdb.graph.pump import StreamPump
from taskdb.graph.task import ProgressCallback, Task, TaskContext, TaskStatus
from taskdb.settings import DEFAULT_REFERENCE_THRESHOLD
from taskdb.streams.blob import Blob
from taskdb.streams.channel import Channel
from taskdb.streams.events import (
    BinaryDelta,
    Finish,
    ObjectDelta,
    Phase,
    Snapshot,
    StreamEvent,
    TextDelta,
    with_port,
)
from taskdb.streams.ports import (
    get_port_stream_mode,
    get_streaming_ports,
)
from taskdb.streams.processor import StreamProcessor

EventCallback = Callable[[str, StreamEvent], object]
"""``(task_id, event)``: every stream event of every task, in order per task."""


@dataclass(slots=True)
class RunConfig:
    """How one graph run behaves.

    ``reference_threshold_bytes``: binary outputs streamed to the cache stay
    refs at or above this size (``0``: always a ref; negative: the default).
    ``should_accumulate``: keep the streamed values of leaf tasks in their
    outputs (turn off when the caller consumes ``on_event`` instead).
    ``timeout``: seconds for the whole run. ``abort_signal``: set it to abort.
    ``stream_buffer``: events buffered per stream edge before the producer waits.
    """

    output_cache: TaskOutputRepository | None = None
    reference_threshold_bytes: int = DEFAULT_REFERENCE_THRESHOLD
    run_id: str | None = None
    should_accumulate: bool = True
    timeout: float | None = None
    abort_signal: asyncio.Event | None = None
    on_progress: ProgressCallback | None = None
    on_event: EventCallback | None = None
    stream_buffer: int = 64


@dataclass(slots=True)
class GraphResult:
    """Per-task outputs and statuses of a finished run."""

    run_id: str
    outputs: dict[str, dict[str, Any]]
    statuses: dict[str, TaskStatus]
    cached: set[str] = field(default_factory=set)
    """Ids of tasks whose output came from the cache (they did not run)."""

    def __getitem__(self, task_id: str) -> dict[str, Any]:
        return self.outputs[task_id]


class _UpstreamFailed(GraphError):
    """What a stream consumer reads when its producer failed."""


@dataclass(slots=True)
class _Link:
    """One live stream edge pair, seen from its producer."""

    source_port: str
    target_port: str
    channel: Channel[StreamEvent]


class GraphRunner:
    """Runs ``graph`` once per :meth:`run`; :meth:`abort` stops a run in progress."""

    def __init__(self, graph: DataflowGraph, config: RunConfig | None = None) -> None:
        self.graph = graph
        self.config = config or RunConfig()
        self.statuses: dict[str, TaskStatus] = {}
        self._abort = self.config.abort_signal or asyncio.Event()
        self._coordinator = CacheCoordinator(
            self.config.output_cache, self.config.reference_threshold_bytes
        )

    def abort(self) -> None:
        self._abort.set()

    async def run(self, inputs: Mapping[str, Any] | None = None) -> GraphResult:
        """Run every task; ``inputs`` go to the tasks no dataflow feeds.

        Raises the first failure: :class:`TaskFailed` (naming the task, the
        task's error chained), :class:`TaskInputError`, :class:`GraphTimeout`,
        or :class:`AbortedJobError` when aborted.
        """
        run = _Run(self, dict(inputs or {}))
        return await run.execute()


class _Run:
    """The state of one run."""

    def __init__(self, runner: GraphRunner, inputs: dict[str, Any]) -> None:
        self.graph = runner.graph
        self.config = runner.config
        self.coordinator = runner._coordinator
        self.abort_signal = runner._abort
        self.inputs = inputs
        self.run_id = self.config.run_id or uuid.uuid4().hex
        self.statuses = runner.statuses
        self.outputs: dict[str, dict[str, Any]] = {}
        self.cached: set[str] = set()
        loop = asyncio.get_running_loop()
        # what value consumers receive (a tee gives them bytes where the output has a ref)
        self.values: dict[str, asyncio.Future[dict[str, Any]]] = {
            tid: loop.create_future() for tid in self.graph.tasks
        }
        self.links: dict[str, list[_Link]] = {tid: [] for tid in self.graph.tasks}
        self.feeds: dict[str, dict[str, Channel[StreamEvent]]] = {
            tid: {} for tid in self.graph.tasks
        }
        for flow in self.graph.dataflows:
            for source_port, target_port in self.graph.port_pairs(flow):
                if self.graph.is_stream_edge(flow, source_port, target_port):
                    channel: Channel[StreamEvent] = Channel(self.config.stream_buffer)
                    self.links[flow.source_id].append(_Link(source_port, target_port, channel))
                    self.feeds[flow.target_id][target_port] = channel
        for tid in self.graph.tasks:
            self.statuses[tid] = TaskStatus.PENDING

    async def execute(self) -> GraphResult:
        jobs: dict[asyncio.Future[Any], str] = {
            asyncio.ensure_future(self._guarded(tid)): tid for tid in self.graph.topological_order()
        }
        aborted = asyncio.ensure_future(self.abort_signal.wait())
        loop = asyncio.get_running_loop()
        deadline = None if self.config.timeout is None else loop.time() + self.config.timeout
        pending: set[asyncio.Future[Any]] = set(jobs)
        try:
            while pending:
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                done, pending = await asyncio.wait(
                    pending | {aborted}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(aborted)
                if aborted in done:
                    for job in pending:
                        self.statuses[jobs[job]] = TaskStatus.ABORTING
                    raise AbortedJobError("graph run aborted")
                if not done:
                    assert self.config.timeout is not None
                    raise GraphTimeout(self.config.timeout)
                errors = [e for j in done if (e := j.exception()) is not None]
                if errors:
                    # a consumer that saw its producer fail is not the first failure
                    errors.sort(key=lambda e: isinstance(e, _UpstreamFailed))
                    raise errors[0]
        finally:
            aborted.cancel()
            for job in pending:
                job.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for job, tid in jobs.items():
                if job.cancelled() or (job.done() and job.exception() is not None):
                    self.statuses[tid] = TaskStatus.FAILED
        return GraphResult(self.run_id, self.outputs, dict(self.statuses), self.cached)

    async def _guarded(self, tid: str) -> None:
        task = self.graph.tasks[tid]
        try:
            if task.timeout is None:
                await self._run_task(task)
            else:
                try:
                    async with asyncio.timeout(task.timeout):
                        await self._run_task(task)
                except TimeoutError:
                    raise GraphTimeout(task.timeout, tid) from None
        except asyncio.CancelledError:
            self._close_links(tid, None)
            raise
        except GraphError as exc:
            self._close_links(tid, exc)
            raise
        except Exception as exc:
            self._close_links(tid, exc)
            raise TaskFailed(tid, f"{type(exc).__name__}: {exc}") from exc
        finally:
            for channel in self.feeds[tid].values():
                channel.abandon()  # a consumer that stopped reading never blocks its producer

    def _close_links(self, tid: str, error: BaseException | None) -> None:
        for link in self.links[tid]:
            link.channel.close(_UpstreamFailed(f"producer {tid!r} failed: {error!r}"))

    # -- one task ------------------------------------------------------------------------

    async def _inputs(self, task: Task) -> dict[str, Any]:
        inputs = dict(task.defaults)
        incoming = self.graph.incoming(task.id)
        if not incoming:
            inputs.update(self.inputs)
        live = self.feeds[task.id]
        for flow in incoming:
            pairs = (
                [(s, t) for s, t in self.graph.port_pairs(flow) if t not in live]
                if flow.source_port != ALL_PORTS
                else None
            )
            if pairs == []:
                continue  # every pair streams: do not wait for the producer
            values = await asyncio.shield(self.values[flow.source_id])
            if pairs is None:  # "*": every value the target does not stream
                inputs.update({k: v for k, v in values.items() if k not in live})
            else:
                inputs.update({t: values[s] for s, t in pairs if s in values})
        return inputs

    async def _run_task(self, task: Task) -> None:
        tid = task.id
        inputs = await self._inputs(task)
        self.statuses[tid] = TaskStatus.PROCESSING
        task.validate_inputs(inputs)
        live_inputs = bool(self.feeds[tid])
        cacheable = task.cacheable and not live_inputs  # a live input has no value to key by
        cached = await self.coordinator.get_by_policy(task.type, inputs, cacheable)
        if cached is not None:
            self.cached.add(tid)
            await self._replay(task, cached)
            if task.streams and self.config.on_event is not None:
                self.config.on_event(tid, Finish(cached))  # a streaming hit still finishes
            self._complete(tid, await self._materialized(task, cached), cached)
            return
        ctx = TaskContext(
            tid,
            self.run_id,
            self.abort_signal,
            {port: aiter(channel) for port, channel in self.feeds[tid].items()},
            self.config.on_progress,
        )
        if task.streams:
            value, output = await self._stream(task, inputs, ctx, cacheable)
        else:
            output = await task.execute(inputs, ctx)
            if not isinstance(output, dict):
                raise TypeError(f"execute returned {type(output).__name__}, not a dict")
            await self._replay(task, output)
            value = output
        await self.coordinator.save_by_policy(task.type, inputs, output, cacheable)
        self._complete(tid, value, output)

    def _complete(self, tid: str, value: dict[str, Any], output: dict[str, Any]) -> None:
        for link in self.links[tid]:
            link.channel.close()
        self.outputs[tid] = output
        self.statuses[tid] = TaskStatus.COMPLETED
        self.values[tid].set_result(value)

    def _accumulated_ports(self, task: Task, cacheable: bool) -> set[str]:
        """The streaming ports whose whole value someone needs."""
        wanted = set()
        leaf = not self.graph.outgoing(task.id)
        for port, _mode in get_streaming_ports(task.output_schema):
            if (
                self.graph.needs_value(task.id, port)
                or (leaf and self.config.should_accumulate)
                or (cacheable and self.coordinator.cache is not None)
            ):
                wanted.add(port)
        return wanted

    async def _stream(
        self, task: Task, inputs: dict[str, Any], ctx: TaskContext, cacheable: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run ``execute_stream``; returns (value for consumers, output)."""
        tid = task.id
        schema = task.output_schema
        accumulate = self._accumulated_ports(task, cacheable)
        sinks = self.coordinator.get_binary_ref_sinks_by_policy(
            task.type, inputs, schema, cacheable
        )
        # streamed to the cache: accumulated only when a consumer needs the bytes (a tee)
        accumulate -= {
            p for p in sinks if not StreamPump.port_needs_materialized(self.graph, task, p)
        }
        processor = StreamProcessor(schema, accumulate=accumulate)
        by_port: dict[str, list[_Link]] = {}
        for link in self.links[tid]:
            by_port.setdefault(link.source_port, []).append(link)
        on_event = self.config.on_event
        on_progress = self.config.on_progress
        try:
            streaming = False
            explicit: set[str] = set()
            async for event in task.execute_stream(inputs, ctx):
                if not streaming:
                    streaming = True
                    self.statuses[tid] = TaskStatus.STREAMING
                processor.feed(event)
                port = getattr(event, "port", None)
                if port is not None:
                    if isinstance(event, BinaryDelta) and port in sinks:
                        await sinks[port].send(event.chunk)
                    for link in by_port.get(port, ()):
                        await link.channel.send(with_port(event, link.target_port))
                elif isinstance(event, Finish):
                    explicit = set(event.data)  # consumers get theirs after the loop
                elif isinstance(event, Snapshot):
                    for link in self.links[tid]:
                        if link.source_port in event.data:
                            data = {link.target_port: event.data[link.source_port]}
                            await link.channel.send(Snapshot(data))
                elif isinstance(event, Phase) and on_progress is not None:
                    on_progress(tid, event.progress or 0.0, event.message)
                if on_event is not None:
                    on_event(tid, event)
                if processor.done:
                    break
            if processor.error is not None:
                raise processor.error
            if processor.output is None:  # the stream ended without a Finish
                processor.feed(Finish({}))
            assert processor.output is not None
            value = output = processor.output
            await self._finish_links(value, by_port)
            if sinks:
                output = dict(output)
                for port, sink in sinks.items():
                    if port in explicit:  # the task's own Finish value wins
                        await sink.cancel()
                    else:
                        output[port] = await sink.finish()
                output = await self.coordinator.hydrate_refs_below_threshold(output, schema)
            return value, output
        except BaseException:
            processor.discard()
            for sink in sinks.values():
                await asyncio.shield(sink.cancel())
            raise

    @staticmethod
    async def _finish_links(value: dict[str, Any], by_port: Mapping[str, list[_Link]]) -> None:
        """Each stream consumer gets one ``Finish``: its port's final value when known
        (the producer's explicit value wins), else empty."""
        for port, links in by_port.items():
            for link in links:
                data = {link.target_port: value[port]} if port in value else {}
                await link.channel.send(Finish(data))

    async def _materialized(self, task: Task, output: dict[str, Any]) -> dict[str, Any]:
        """``output`` with the refs of binary ports that a consumer needs whole
        replaced by their bytes (what a tee hands consumers)."""
        return await self.coordinator.materialize_refs(
            output, task.output_schema, lambda port, _ref: self.graph.needs_value(task.id, port)
        )

    async def _replay(self, task: Task, output: Mapping[str, Any]) -> None:
        """Feed stream consumers of a task that did not stream (cache hit, or
        ``execute``) its final values as deltas, then a ``Finish``."""
        for link in self.links[task.id]:
            if link.source_port not in output:
                continue
            value = output[link.source_port]
            mode = get_port_stream_mode(task.output_schema, link.source_port)
            async for event in _as_events(mode, link.target_port, value, self.coordinator):
                await link.channel.send(event)
            await link.channel.send(Finish({link.target_port: value}))


async def _as_events(
    mode: str, port: str, value: Any, coordinator: CacheCoordinator
) -> AsyncIterator[StreamEvent]:
    if mode in ("append", "replace") and isinstance(value, str):
        yield TextDelta(port, value)
    elif mode in ("object", "replace") and isinstance(value, dict | list):
        yield ObjectDelta(port, value)
    elif mode == "binary":
        if is_cache_ref(value):
            stream = getattr(coordinator.cache, "get_output_stream_by_ref", None)
            chunks = None if stream is None else await stream(value)
            if chunks is None:
                raise GraphError(f"cannot replay port {port!r}: its cached ref is dangling")
            async for chunk in chunks:
                yield BinaryDelta(port, chunk)
        elif isinstance(value, Blob | bytes | bytearray | memoryview):
            async for chunk in iter_binary_chunks(value):
                yield BinaryDelta(port, chunk)
