"""Parse human durations such as ``90s``, ``15m``, ``12h`` or ``7d`` (pure)."""

from __future__ import annotations

import re

from taskdb.errors import ConfigurationError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (a number with an optional unit s/m/h/d/w)."""
    match = _PATTERN.match(text)
    if match is None:
        raise ConfigurationError(
            f"bad duration {text!r}: use a number with s, m, h, d or w (e.g. 7d)"
        )
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]
