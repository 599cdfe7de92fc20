"""The clock every time-dependent part takes, so tests can move time by hand."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC datetime."""


def utcnow() -> datetime:
    """The wall clock (the default :data:`Clock`)."""
    return datetime.now(UTC)
