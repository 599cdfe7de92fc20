"""The clock every time-dependent part takes, so tests can move time by hand."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from taskdb.errors import ConfigurationError

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC datetime."""


def utcnow() -> datetime:
    """The wall clock (the default :data:`Clock`)."""
    return datetime.now(UTC)


MAX_SECONDS = 100 * 365.25 * 86400
"""The longest duration taskdb takes (a hundred years): beyond it, datetimes overflow."""


def seconds(name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a duration in seconds: a finite number, ``>= 0`` (``> 0`` when
    ``positive``), at most :data:`MAX_SECONDS`; :class:`ConfigurationError` names
    ``name`` otherwise."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
        and value <= MAX_SECONDS
    )
    if not ok:
        bound = ">" if positive else ">="
        raise ConfigurationError(
            f"{name} must be a finite number of seconds {bound} 0 and at most 100 years, "
            f"got {value!r}"
        )
    return float(value)  # type: ignore[arg-type]


def age(name: str, value: object) -> timedelta:
    """``value`` as an age: a :class:`~datetime.timedelta` of at least 0 and at most
    100 years; :class:`ConfigurationError` names ``name`` otherwise."""
    if not isinstance(value, timedelta):
        raise ConfigurationError(f"{name} must be a timedelta, got {value!r}")
    seconds(name, value.total_seconds())
    return value
