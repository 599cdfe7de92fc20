"""Stream events and their JSON codec (pure).

Events are small frozen dataclasses (the per-chunk hot path stays cheap);
``event_to_json`` / ``event_from_json`` carry them across a process, bytes as
base64 and errors as ``{"name", "message"}``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, ClassVar

from taskdb.errors import TaskdbError, job_error_from_row


class StreamEventError(TaskdbError):
    """A serialized stream event is malformed."""


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Text appended to ``port``."""

    type: ClassVar[str] = "text-delta"
    port: str
    text: str


@dataclass(frozen=True, slots=True)
class ObjectDelta:
    """A dict replaces the value of ``port``; a list upserts its items by ``"id"``."""

    type: ClassVar[str] = "object-delta"
    port: str
    value: dict[str, Any] | list[Any]


@dataclass(frozen=True, slots=True)
class BinaryDelta:
    """The next chunk of the bytes of ``port`` (chunks are ordered)."""

    type: ClassVar[str] = "binary-delta"
    port: str
    chunk: bytes


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole output so far."""

    type: ClassVar[str] = "snapshot"
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Finish:
    """The end of the stream, with the task's explicit final values."""

    type: ClassVar[str] = "finish"
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StreamError:
    """The producer failed."""

    type: ClassVar[str] = "error"
    error: BaseException


@dataclass(frozen=True, slots=True)
class Phase:
    """Progress metadata: becomes progress, never accumulated into the output."""

    type: ClassVar[str] = "phase"
    message: str
    progress: float | None = None


StreamEvent = TextDelta | ObjectDelta | BinaryDelta | Snapshot | Finish | StreamError | Phase

EVENT_TYPES: dict[str, type[StreamEvent]] = {
    cls.type: cls
    for cls in (TextDelta, ObjectDelta, BinaryDelta, Snapshot, Finish, StreamError, Phase)
}


def with_port(event: StreamEvent, port: str) -> StreamEvent:
    """A delta addressed to ``port`` instead (the same object when it already is);
    other events have no port and are returned as they are."""
    if isinstance(event, TextDelta):
        return event if event.port == port else TextDelta(port, event.text)
    if isinstance(event, ObjectDelta):
        return event if event.port == port else ObjectDelta(port, event.value)
    if isinstance(event, BinaryDelta):
        return event if event.port == port else BinaryDelta(port, event.chunk)
    return event


def event_to_json(event: StreamEvent) -> dict[str, Any]:
    """A JSON-ready dict for ``event`` (bytes as base64, errors by name and message)."""
    if isinstance(event, TextDelta):
        return {"type": event.type, "port": event.port, "text": event.text}
    if isinstance(event, ObjectDelta):
        return {"type": event.type, "port": event.port, "value": event.value}
    if isinstance(event, BinaryDelta):
        chunk = base64.b64encode(event.chunk).decode("ascii")
        return {"type": event.type, "port": event.port, "chunk": chunk}
    if isinstance(event, Snapshot | Finish):
        return {"type": event.type, "data": event.data}
    if isinstance(event, StreamError):
        err = event.error
        name = getattr(err, "error_code", None) or type(err).__name__
        return {"type": event.type, "error": {"name": name, "message": str(err)}}
    if isinstance(event, Phase):
        return {"type": event.type, "message": event.message, "progress": event.progress}
    raise StreamEventError(f"not a stream event: {event!r}")


def event_from_json(data: Any) -> StreamEvent:
    """The event ``data`` describes; :class:`StreamEventError` if it is malformed.

    An error comes back as the taskdb class of its name where there is one,
    else as a :class:`~taskdb.JobError` carrying the name as ``error_code``.
    """
    try:
        kind = data["type"]
        if kind == TextDelta.type:
            return TextDelta(_str(data["port"]), _str(data["text"]))
        if kind == ObjectDelta.type:
            value = data["value"]
            if not isinstance(value, dict | list):
                raise TypeError("value must be an object or a list")
            return ObjectDelta(_str(data["port"]), value)
        if kind == BinaryDelta.type:
            chunk = base64.b64decode(_str(data["chunk"]), validate=True)
            return BinaryDelta(_str(data["port"]), chunk)
        if kind in (Snapshot.type, Finish.type):
            payload = data["data"]
            if not isinstance(payload, dict):
                raise TypeError("data must be an object")
            return Snapshot(payload) if kind == Snapshot.type else Finish(payload)
        if kind == StreamError.type:
            err = data["error"]
            return StreamError(job_error_from_row(_str(err["name"]), _str(err["message"])))
        if kind == Phase.type:
            progress = data.get("progress")
            if progress is not None and not isinstance(progress, int | float):
                raise TypeError("progress must be a number")
            return Phase(_str(data["message"]), None if progress is None else float(progress))
    except (KeyError, TypeError, binascii.Error) as exc:
        raise StreamEventError(f"malformed stream event {_short(data)}: {exc}") from None
    raise StreamEventError(f"unknown stream event type in {_short(data)}")


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _short(data: Any) -> str:
    text = repr(data)
    return text if len(text) <= 80 else text[:77] + "..."
