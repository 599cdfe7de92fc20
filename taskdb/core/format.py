"""Human formatting for the CLI (pure): sizes, ages, and job outputs whose binary
values are summarised (``<ref 5.0 MiB image/png>``, ``<bytes 12 B>``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from taskdb.core.inline import is_inline_bytes
from taskdb.core.refs import is_cache_ref

__all__ = [
    "binary_values",
    "human_age",
    "human_seconds",
    "human_size",
    "inline_size",
    "render",
    "summarize_binary",
]

_UNITS = ("KiB", "MiB", "GiB", "TiB")


def human_size(size: int) -> str:
    """``12 B``, ``1.5 KiB``, ``5.0 MiB``, ..."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            break
    return f"{value:.1f} {unit}"


def human_seconds(seconds: float) -> str:
    """``42s``, ``5m``, ``3h``, ``2d`` (rounded)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def human_age(when: datetime | None, now: datetime | None = None) -> str:
    """How long ago ``when`` was (``-`` for ``None``)."""
    if when is None:
        return "-"
    now = datetime.now(UTC) if now is None else now
    return human_seconds((now - when).total_seconds()) + " ago"


def inline_size(envelope: dict[str, Any]) -> int:
    """The byte size of an inline-bytes envelope, without decoding it."""
    text: str = envelope["base64"]
    return len(text) * 3 // 4 - (len(text) - len(text.rstrip("=")))


def summarize_binary(value: dict[str, Any]) -> str:
    """``<ref 5.0 MiB image/png>`` for a ref, ``<bytes 12 B>`` for inline bytes."""
    if is_cache_ref(value):
        size = value.get("size")
        parts = ["ref", human_size(size) if isinstance(size, int) else value["$ref"]]
    else:
        parts = ["bytes", human_size(inline_size(value))]
    mime = value.get("mime")
    if isinstance(mime, str):
        parts.append(mime)
    return f"<{' '.join(parts)}>"


def _is_binary(value: object) -> bool:
    return is_cache_ref(value) or is_inline_bytes(value)


def render(value: Any, indent: int = 0) -> str:
    """``value`` as indented JSON in which refs and inline bytes are summarised."""
    if isinstance(value, dict) and _is_binary(value):
        return summarize_binary(value)
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(k))}: {render(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and value:
        items = [f"{inner}{render(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(value, default=str)


def binary_values(value: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """``(path, value)`` of every ref and inline-bytes envelope inside ``value``; the
    path joins dict keys and list indexes with dots (``outputs.render.video``)."""
    if isinstance(value, dict):
        if _is_binary(value):
            yield path, value
            return
        items: Iterator[tuple[object, Any]] = iter(value.items())
    elif isinstance(value, list):
        items = iter(enumerate(value))
    else:
        return
    for key, item in items:
        yield from binary_values(item, f"{path}.{key}" if path else str(key))
