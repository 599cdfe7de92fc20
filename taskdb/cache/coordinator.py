"""``CacheCoordinator``: what a graph run asks of its output cache.

It looks outputs up and saves them by the task's cache policy, builds the
per-port binary sinks that stream a task's bytes straight into a streaming
cache (:meth:`get_binary_ref_sinks_by_policy`), and after the run brings
small refs back inline (:meth:`hydrate_refs_below_threshold`) so only
outputs at or above ``reference_threshold_bytes`` stay references.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from taskdb.cache.repository import TaskOutputRepository
from taskdb.core.refs import CacheRef, is_cache_ref
from taskdb.settings import DEFAULT_REFERENCE_THRESHOLD
from taskdb.streams.channel import Channel
from taskdb.streams.ports import get_binary_port_format, get_port_media_type, get_streaming_ports

SINK_BUFFER_CHUNKS = 8


class BinaryStreamRouter(Channel[bytes]):
    """The bounded pump between a task's ``binary-delta`` chunks and a cache sink:
    memory is bounded by ``maxsize`` chunks, not by the payload."""

    def __init__(self, maxsize: int = SINK_BUFFER_CHUNKS) -> None:
        super().__init__(maxsize)


class BinaryRefSink:
    """Streams one port's bytes into ``cache.save_output_stream`` as they arrive.

    ``send`` chunks, then ``finish()`` for the committed :class:`CacheRef`;
    ``cancel()`` drops the stream (nothing is committed).
    """

    def __init__(
        self,
        cache: TaskOutputRepository,
        task_type: str,
        inputs: Mapping[str, Any],
        port: str,
        *,
        mime: str | None = None,
        maxsize: int = SINK_BUFFER_CHUNKS,
    ) -> None:
        save = cache.save_output_stream
        if save is None:
            raise TypeError(f"{type(cache).__name__} cannot save output streams")
        self.port = port
        self.router = BinaryStreamRouter(maxsize)
        self._save: asyncio.Task[CacheRef] = asyncio.ensure_future(
            save(task_type, dict(inputs), port, aiter(self.router), mime=mime)
        )

    async def send(self, chunk: bytes) -> None:
        if self._save.done():  # the sink failed: surface its error to the producer
            self._save.result()
        await self.router.send(chunk)

    async def finish(self) -> CacheRef:
        self.router.close()
        return await self._save

    async def cancel(self) -> None:
        self.router.close(asyncio.CancelledError())
        self._save.cancel()
        with contextlib.suppress(BaseException):
            await self._save


class CacheCoordinator:
    """The cache side of a graph run (``cache`` None: every call is a no-op)."""

    def __init__(
        self,
        cache: TaskOutputRepository | None,
        reference_threshold_bytes: int = DEFAULT_REFERENCE_THRESHOLD,
    ) -> None:
        self.cache = cache
        self.threshold = (
            DEFAULT_REFERENCE_THRESHOLD
            if reference_threshold_bytes < 0
            else reference_threshold_bytes
        )

    @property
    def streams(self) -> bool:
        """Whether binary outputs can go straight into the cache."""
        return self.cache is not None and self.cache.supports_streaming()

    async def get_by_policy(
        self, task_type: str, inputs: Mapping[str, Any], cacheable: bool
    ) -> dict[str, Any] | None:
        if self.cache is None or not cacheable:
            return None
        return await self.cache.get_output(task_type, dict(inputs))

    async def save_by_policy(
        self, task_type: str, inputs: Mapping[str, Any], output: dict[str, Any], cacheable: bool
    ) -> None:
        if self.cache is not None and cacheable:
            await self.cache.save_output(task_type, dict(inputs), output)

    def binary_sink_ports(self, schema: Mapping[str, Any] | None, cacheable: bool) -> list[str]:
        """The binary streaming ports whose bytes go to the cache as a stream: all of
        them when the task's outputs are cached and the cache can stream, else none
        (the one place that decides it)."""
        if not (cacheable and self.streams):
            return []
        return [port for port, mode in get_streaming_ports(schema) if mode == "binary"]

    def get_binary_ref_sinks_by_policy(
        self,
        task_type: str,
        inputs: Mapping[str, Any],
        schema: Mapping[str, Any] | None,
        cacheable: bool,
    ) -> dict[str, BinaryRefSink]:
        """One sink per port of :meth:`binary_sink_ports` (none: the bytes are
        accumulated)."""
        cache = self.cache
        return {
            port: BinaryRefSink(
                cache, task_type, inputs, port, mime=get_port_media_type(schema, port)
            )
            for port in self.binary_sink_ports(schema, cacheable)
            if cache is not None
        }

    async def hydrate_refs_below_threshold(
        self, output: dict[str, Any], schema: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """``output`` with refs smaller than the threshold replaced by their bytes
        (a ``Blob`` or ``bytes`` per the port's format). Only binary streaming
        ports of ``schema`` are touched: a ``{"$ref": ...}`` elsewhere is data."""
        if self.threshold == 0:
            return output
        return await self.materialize_refs(
            output, schema, lambda _port, ref: ref.get("size", self.threshold) < self.threshold
        )

    async def materialize_refs(
        self,
        output: dict[str, Any],
        schema: Mapping[str, Any] | None,
        wanted: Callable[[str, CacheRef], bool],
    ) -> dict[str, Any]:
        """``output`` with the refs at binary streaming ports of ``schema`` for which
        ``wanted(port, ref)`` replaced by their bytes (a ``Blob``, or ``bytes`` for
        ``format: binary``); the same object when none is. A dangling ref stays:
        resolution is best effort."""
        get = None if self.cache is None else self.cache.get_output_by_ref
        if get is None:
            return output
        value = output
        for port, mode in get_streaming_ports(schema):
            ref = output.get(port)
            if mode != "binary" or not is_cache_ref(ref) or not wanted(port, ref):
                continue
            blob = await get(ref)
            if blob is not None:
                binary = get_binary_port_format(schema, port) == "binary"
                value = {**value, port: blob.read() if binary else blob}
        return value
