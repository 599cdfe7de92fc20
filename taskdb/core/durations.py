"""Parse human durations (``90s``, ``15m``, ``12h``, ``7d``) and times (pure)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from taskdb.core.clock import seconds
from taskdb.errors import ConfigurationError

__all__ = ["parse_duration", "parse_rate", "parse_when"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (a number with an optional unit s/m/h/d/w)."""
    match = _PATTERN.match(text)
    if match is None:
        raise ConfigurationError(
            f"bad duration {text!r}: use a number with s, m, h, d or w (e.g. 7d)"
        )
    return seconds(
        f"duration {text.strip()!r}", float(match.group(1)) * _UNITS[match.group(2) or "s"]
    )


def parse_rate(text: str) -> tuple[int, float]:
    """``N/period`` (``100/1m``, ``5/s``): at most N starts per period, in seconds."""
    count, slash, period = text.partition("/")
    if not slash or not count.strip().isdigit() or int(count) < 1:
        raise ConfigurationError(f"bad rate {text!r}: use N/period, e.g. 100/1m or 5/s")
    return int(count), parse_duration(period if period[:1].isdigit() else f"1{period}")


def parse_when(text: str | None, now: datetime | None = None) -> datetime | None:
    """A point in time: an ISO datetime with an offset, or a delay from ``now``
    such as ``10m``; ``None`` stays ``None``."""
    if text is None:
        return None
    if _PATTERN.match(text):
        return (now or datetime.now(UTC)) + timedelta(seconds=parse_duration(text))
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            f"bad time {text!r}: use an ISO datetime with an offset or a delay like 10m"
        ) from None
    if parsed.tzinfo is None:
        raise ConfigurationError(f"time {text!r} has no timezone offset")
    return parsed
