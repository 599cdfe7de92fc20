"""Port schemas: which output ports stream, and how (pure).

A port schema is a JSON Schema object; each property is a port. Streaming
ports carry ``"x-stream": "append" | "replace" | "object" | "binary"``;
binary ports may carry ``"format": "blob" | "binary"`` (absent: ``"blob"``)
and ``"contentMediaType"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, cast

from taskdb.errors import TaskdbError
from taskdb.streams.blob import Blob

StreamMode = Literal["none", "append", "replace", "object", "binary"]
OutputStreamMode = Literal["none", "append", "replace", "object", "binary", "mixed"]
BinaryFormat = Literal["blob", "binary"]

_MODES = ("append", "replace", "object", "binary")
_FORMATS = ("blob", "binary")


class StreamSchemaError(TaskdbError):
    """A port schema has an invalid stream annotation."""


def _port(schema: Mapping[str, Any] | None, port: str) -> Mapping[str, Any]:
    props = (schema or {}).get("properties") or {}
    found = props.get(port)
    return found if isinstance(found, Mapping) else {}


def get_port_stream_mode(schema: Mapping[str, Any] | None, port: str) -> StreamMode:
    """How ``port`` streams: its ``x-stream`` annotation, or ``"none"``."""
    mode = _port(schema, port).get("x-stream")
    if mode is None:
        return "none"
    if mode not in _MODES:
        raise StreamSchemaError(
            f"port {port!r}: x-stream must be one of {', '.join(_MODES)}, got {mode!r}"
        )
    return cast(StreamMode, mode)


def get_streaming_ports(schema: Mapping[str, Any] | None) -> list[tuple[str, StreamMode]]:
    """Every streaming port with its mode, in schema order (binary ports included)."""
    props = (schema or {}).get("properties") or {}
    modes = ((port, get_port_stream_mode(schema, port)) for port in props)
    return [(port, mode) for port, mode in modes if mode != "none"]


def get_binary_port_id(schema: Mapping[str, Any] | None) -> str | None:
    """The first binary port, or ``None``."""
    return next((p for p, mode in get_streaming_ports(schema) if mode == "binary"), None)


def get_binary_port_format(schema: Mapping[str, Any] | None, port: str) -> BinaryFormat:
    """``"blob"`` (also when absent) or ``"binary"``; anything else is a schema error."""
    fmt = _port(schema, port).get("format", "blob")
    if fmt not in _FORMATS:
        raise StreamSchemaError(
            f"binary port {port!r}: format must be 'blob' or 'binary', got {fmt!r}"
        )
    return cast(BinaryFormat, fmt)


def get_port_media_type(schema: Mapping[str, Any] | None, port: str) -> str | None:
    """The port's ``contentMediaType`` (the MIME type of its bytes), if declared."""
    mime = _port(schema, port).get("contentMediaType")
    return mime if isinstance(mime, str) else None


def get_output_stream_mode(schema: Mapping[str, Any] | None) -> OutputStreamMode:
    """The one mode all streaming ports share, ``"mixed"`` when they differ, else ``"none"``."""
    modes = {mode for _, mode in get_streaming_ports(schema)}
    if not modes:
        return "none"
    if len(modes) > 1:
        return "mixed"
    return cast(OutputStreamMode, modes.pop())


def edge_needs_accumulation(
    src_schema: Mapping[str, Any] | None,
    src_port: str,
    dst_schema: Mapping[str, Any] | None,
    dst_port: str,
) -> bool:
    """Whether an edge must materialize the producer's stream for its consumer:
    the source streams and the destination does not take that mode."""
    src = get_port_stream_mode(src_schema, src_port)
    return src != "none" and src != get_port_stream_mode(dst_schema, dst_port)


def materialize_binary(
    chunks: Iterable[bytes], format: str | None = None, *, mime: str | None = None
) -> Blob | bytes:
    """Join ordered chunks: a :class:`Blob` for ``"blob"`` (or absent), ``bytes`` for
    ``"binary"``. A large Blob spills to a temporary file instead of memory."""
    if format in (None, "blob"):
        return Blob.from_chunks(chunks, mime=mime)
    if format == "binary":
        return b"".join(chunks)
    raise StreamSchemaError(f"binary format must be 'blob' or 'binary', got {format!r}")
