"""Small binary values inlined losslessly in JSON rows (pure).

Bytes below the reference threshold do not earn a blob: they are stored in
the row itself as ``{"kind": "taskdb/Bytes", "base64": ..., "format":
"binary" | "blob", "mime"?: ...}`` and come back as the same type (``bytes``
or :class:`Blob`). Like a ``CacheRef``, the ``kind`` brand is what marks an
envelope: a user dict without it is never decoded.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeGuard

from taskdb.errors import InvalidJobInput
from taskdb.streams.blob import Blob

INLINE_BYTES_KIND = "taskdb/Bytes"

Binary = bytes | bytearray | memoryview | Blob


def is_binary(value: object) -> TypeGuard[Binary]:
    return isinstance(value, bytes | bytearray | memoryview | Blob)


def encode_inline(value: Binary) -> dict[str, Any]:
    """The JSON envelope of a binary value (the whole value goes in the row)."""
    if isinstance(value, Blob):
        envelope = {"kind": INLINE_BYTES_KIND, "format": "blob", "base64": _b64(value.read())}
        if value.mime is not None:
            envelope["mime"] = value.mime
        return envelope
    return {"kind": INLINE_BYTES_KIND, "format": "binary", "base64": _b64(bytes(value))}


def is_inline_bytes(value: object) -> TypeGuard[dict[str, Any]]:
    return (
        isinstance(value, Mapping)
        and value.get("kind") == INLINE_BYTES_KIND
        and isinstance(value.get("base64"), str)
    )


def decode_inline(envelope: Mapping[str, Any]) -> bytes | Blob:
    """The value an envelope holds; a malformed one is an :class:`InvalidJobInput`."""
    try:
        data = base64.b64decode(envelope["base64"], validate=True)
    except (KeyError, TypeError, binascii.Error) as exc:
        raise InvalidJobInput(f"malformed inline bytes: {exc}") from None
    if envelope.get("format") == "blob":
        mime = envelope.get("mime")
        return Blob(data, mime=mime if isinstance(mime, str) else None)
    return data


_SCALARS = frozenset({str, int, float, bool, type(None)})


def holds(value: Any, leaf: Callable[[Any], bool]) -> bool:
    """Whether ``value`` or anything in its dicts, lists and tuples is a ``leaf``
    (iterative: any nesting depth; cheap for plain JSON, the common case)."""
    if type(value) in _SCALARS:  # most outputs: no stack at all
        return False
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) in _SCALARS:
            continue
        if leaf(item):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def encode_binary_values(value: Any) -> Any:
    """``value`` with every binary leaf in its dicts and lists inlined (the same
    object when there is none)."""
    if not holds(value, is_binary):
        return value
    return _encode_all(value)


def _encode_all(value: Any) -> Any:
    if is_binary(value):
        return encode_inline(value)
    if isinstance(value, dict):
        items = {k: _encode_all(v) for k, v in value.items()}
        return value if all(items[k] is value[k] for k in value) else items
    if isinstance(value, list | tuple):
        elements = [_encode_all(v) for v in value]
        changed = any(a is not b for a, b in zip(elements, value, strict=True))
        return elements if changed or isinstance(value, tuple) else value
    return value


def decode_binary_values(value: Any) -> Any:
    """The inverse of :func:`encode_binary_values` (the same object when nothing is inlined)."""
    if not holds(value, is_inline_bytes):
        return value
    return _decode_all(value)


def _decode_all(value: Any) -> Any:
    if is_inline_bytes(value):
        return decode_inline(value)
    if isinstance(value, dict):
        items = {k: _decode_all(v) for k, v in value.items()}
        return value if all(items[k] is value[k] for k in value) else items
    if isinstance(value, list):
        elements = [_decode_all(v) for v in value]
        return value if all(a is b for a, b in zip(elements, value, strict=True)) else elements
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def iter_binary_chunks(value: Binary, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    """A binary value as ordered chunks of at most ``chunk_size`` bytes."""
    if isinstance(value, Blob):
        for chunk in value.chunks(chunk_size):
            yield chunk
        return
    view = memoryview(value)
    for start in range(0, len(view), chunk_size):
        yield bytes(view[start : start + chunk_size])
