"""``StreamProcessor``: folds a task's stream events into its final output (sans-IO).

Per port, by the port's mode: ``append`` joins text deltas, ``replace`` keeps
the last value, ``object`` replaces (a dict) or upserts by ``"id"`` (a
list), ``binary`` joins byte chunks into a :class:`Blob` (``format: blob``,
spilling to a temp file) or ``bytes`` (``format: binary``). ``Phase`` events
become progress and are never accumulated. The task's own ``Finish`` values
win over accumulated ones (Spec 1 precedence).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from taskdb.streams.blob import DEFAULT_SPILL_BYTES, Blob, BlobWriter
from taskdb.streams.events import (
    BinaryDelta,
    Finish,
    ObjectDelta,
    Phase,
    Snapshot,
    StreamError,
    StreamEvent,
    StreamEventError,
    TextDelta,
)
from taskdb.streams.ports import (
    StreamMode,
    get_binary_port_format,
    get_port_media_type,
    get_streaming_ports,
)


class StreamProcessor:
    """Accumulates the stream of one task run. Feed events in order; after a
    ``Finish``, :attr:`output` is the enriched finish payload."""

    def __init__(
        self,
        schema: Mapping[str, Any] | None,
        *,
        accumulate: Iterable[str] | None = None,
        spill_bytes: int = DEFAULT_SPILL_BYTES,
    ) -> None:
        """``accumulate`` limits accumulation to these ports (default: every
        streaming port); deltas of other streaming ports pass without being kept."""
        self.schema = schema
        self.modes: dict[str, StreamMode] = dict(get_streaming_ports(schema))
        self.accumulating = set(self.modes if accumulate is None else accumulate)
        self._spill_bytes = spill_bytes
        self._text: dict[str, list[str]] = {}
        self._values: dict[str, Any] = {}
        self._items: dict[str, dict[Any, Any]] = {}
        self._binary: dict[str, BlobWriter] = {}
        self.progress: float | None = None
        self.message: str | None = None
        self.error: BaseException | None = None
        self.output: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.output is not None or self.error is not None

    def feed(self, event: StreamEvent) -> None:
        """Take the next event; events after the end of the stream are an error."""
        if self.done:
            raise StreamEventError(f"{event.type} event after the end of the stream")
        if isinstance(event, TextDelta):
            mode = self._mode(event.port, ("append", "replace"), event.type)
            if event.port in self.accumulating:
                if mode == "append":
                    self._text.setdefault(event.port, []).append(event.text)
                else:
                    self._values[event.port] = event.text
        elif isinstance(event, ObjectDelta):
            self._mode(event.port, ("object", "replace"), event.type)
            if event.port in self.accumulating:
                self._object(event.port, event.value)
        elif isinstance(event, BinaryDelta):
            self._mode(event.port, ("binary",), event.type)
            if event.port in self.accumulating:
                writer = self._binary.get(event.port)
                if writer is None:
                    writer = self._binary[event.port] = BlobWriter(spill_bytes=self._spill_bytes)
                writer.write(event.chunk)
        elif isinstance(event, Phase):
            self.message = event.message
            if event.progress is not None:
                self.progress = event.progress
        elif isinstance(event, Snapshot):
            for port, value in event.data.items():
                self._set(port, value)
        elif isinstance(event, Finish):
            self.output = {**self.accumulated(), **event.data}  # explicit values win
        elif isinstance(event, StreamError):
            self.error = event.error
            self.discard()

    def accumulated(self) -> dict[str, Any]:
        """The values accumulated so far (binary ports materialized per their format)."""
        values = dict(self._values)
        for port, parts in self._text.items():
            values[port] = "".join(parts)
        for port, items in self._items.items():
            values[port] = list(items.values())
        for port, writer in self._binary.items():
            # a writer hands its content over once: keep the result as the value
            values[port] = self._values[port] = self._materialize(port, writer)
        self._binary.clear()
        return values

    def discard(self) -> None:
        """Drop accumulated bytes (a failed or cancelled stream)."""
        for writer in self._binary.values():
            writer.discard()
        self._binary.clear()

    # -- internals ---------------------------------------------------------------------

    def _mode(self, port: str, allowed: tuple[str, ...], kind: str) -> StreamMode:
        mode = self.modes.get(port, "none")
        if mode not in allowed:
            raise StreamEventError(f"{kind} event for port {port!r}, whose stream mode is {mode}")
        return mode

    def _object(self, port: str, value: dict[str, Any] | list[Any]) -> None:
        if isinstance(value, dict):
            self._items.pop(port, None)
            self._values[port] = value
            return
        items = self._items.setdefault(port, {})
        for position, item in enumerate(value):
            key = item.get("id") if isinstance(item, dict) else None
            # items without an id are appended, never merged
            items[key if key is not None else ("#", len(items), position)] = item

    def _set(self, port: str, value: Any) -> None:
        self._text.pop(port, None)
        self._items.pop(port, None)
        writer = self._binary.pop(port, None)
        if writer is not None:
            writer.discard()
        self._values[port] = value

    def _materialize(self, port: str, writer: BlobWriter) -> Blob | bytes:
        blob = writer.finish(mime=get_port_media_type(self.schema, port))
        if get_binary_port_format(self.schema, port) == "binary":
            data = blob.read()
            blob.close()
            return data
        return blob
