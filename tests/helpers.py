"""Shared test helpers: a controllable clock, polling with a deadline, and a
connection of the test database outside taskdb."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from sqlalchemy import make_url

T = TypeVar("T")


class FakeClock:
    """A clock tests move by hand: lease expiry, backoff and run_after without sleeping."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    predicate: Callable[[T], bool],
    timeout: float = 10.0,
    interval: float = 0.02,
) -> T:
    """Poll ``probe`` until ``predicate`` holds; fail with the last value at the deadline."""
    give_up = time.monotonic() + timeout
    while True:
        value = await probe()
        if predicate(value):
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"condition not reached within {timeout}s; last value: {value!r}")
        await asyncio.sleep(interval)


def outside_writer(url: str) -> sqlite3.Connection | psycopg.Connection[Any]:
    """A driver connection to the test database at ``url`` (as another process would
    hold), inside a write transaction that ``commit()`` ends. On SQLite it already
    holds the write lock, so every taskdb write waits for it."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database
        lite = sqlite3.connect(parsed.database, isolation_level=None)
        lite.execute("BEGIN IMMEDIATE")
        return lite
    return psycopg.connect(url.replace("+psycopg", ""))
