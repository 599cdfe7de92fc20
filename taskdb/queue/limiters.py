"""Limiters: decide how many jobs a server may start now.

A server asks ``reserve(want, now)`` before each claim, gives back what it
could not use with ``unreserve``, and calls ``on_finish`` when a job it
started ends. ``next_time`` tells when a limiter that granted nothing may
grant again (``None``: when a running job finishes).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime, timedelta
from typing import Literal

from taskdb.errors import ConfigurationError
from taskdb.store.database import Database
from taskdb.store.rates import RateWindow


class Limiter(ABC):
    def bind(self, db: Database, queue: str) -> None:  # noqa: B027 - optional hook
        """Called by the server with its database and queue before the first reserve."""

    @abstractmethod
    async def reserve(self, want: int, now: datetime) -> int:
        """How many of ``want`` job starts may begin now (0..want); those are taken."""

    async def unreserve(self, count: int, now: datetime) -> None:  # noqa: B027
        """Give back ``count`` starts reserved but not used."""

    def on_finish(self) -> None:  # noqa: B027
        """A job started under this limiter ended."""

    def next_time(self, now: datetime) -> datetime | None:
        """When a reserve that returned 0 may succeed (``None``: after a finish)."""
        return None

    @property
    def queue_cap(self) -> int | None:
        """The most jobs of the queue that may run at once across every worker, which
        the claim itself enforces (``None``: no such cap)."""
        return None


class NullLimiter(Limiter):
    """No limit."""

    async def reserve(self, want: int, now: datetime) -> int:
        return want


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigurationError(f"{name} must be positive, got {value!r}")


class ConcurrencyLimiter(Limiter):
    """At most ``max_concurrent`` jobs run at once: of this server
    (``scope="worker"``), or of the queue across every worker process and machine
    (``scope="queue"``: the database counts the queue's running jobs in the claim's
    transaction, under a lock per queue, so claims never overshoot)."""

    def __init__(
        self, max_concurrent: int, *, scope: Literal["worker", "queue"] = "worker"
    ) -> None:
        _positive("max_concurrent", max_concurrent)
        if scope not in ("worker", "queue"):
            raise ConfigurationError(f"scope must be 'worker' or 'queue', got {scope!r}")
        self.max_concurrent = max_concurrent
        self.scope = scope
        self.active = 0

    @property
    def queue_cap(self) -> int | None:
        return self.max_concurrent if self.scope == "queue" else None

    async def reserve(self, want: int, now: datetime) -> int:
        if self.scope == "queue":
            return want  # the claim counts the queue's running jobs itself
        grant = max(0, min(want, self.max_concurrent - self.active))
        self.active += grant
        return grant

    async def unreserve(self, count: int, now: datetime) -> None:
        if self.scope == "worker":
            self.active -= count

    def on_finish(self) -> None:
        if self.scope == "worker":
            self.active -= 1


class DelayLimiter(Limiter):
    """Job starts are at least ``seconds`` apart."""

    def __init__(self, seconds: float) -> None:
        _positive("seconds", seconds)
        self.seconds = seconds
        self._next: datetime | None = None
        self._previous: datetime | None = None

    async def reserve(self, want: int, now: datetime) -> int:
        if want <= 0 or (self._next is not None and now < self._next):
            return 0
        self._previous, self._next = self._next, now + timedelta(seconds=self.seconds)
        return 1

    async def unreserve(self, count: int, now: datetime) -> None:
        if count:
            self._next = self._previous

    def next_time(self, now: datetime) -> datetime | None:
        return self._next


class EvenlySpacedRateLimiter(DelayLimiter):
    """``max_executions`` per ``window_seconds``, spread evenly (one start per
    ``window / max_executions``) instead of in bursts."""

    def __init__(self, max_executions: int, window_seconds: float) -> None:
        _positive("max_executions", max_executions)
        _positive("window_seconds", window_seconds)
        super().__init__(window_seconds / max_executions)


class RateLimiter(Limiter):
    """At most ``max_executions`` starts in any sliding ``window_seconds``.

    The window lives in the database, so it holds across every server of the
    queue in every process.
    """

    def __init__(self, max_executions: int, window_seconds: float) -> None:
        _positive("max_executions", max_executions)
        _positive("window_seconds", window_seconds)
        self.max_executions = max_executions
        self.window_seconds = window_seconds
        self._window: RateWindow | None = None
        self._queue = ""
        self._taken: list[int] = []
        self._next: datetime | None = None

    def bind(self, db: Database, queue: str) -> None:
        self._window, self._queue = RateWindow(db), queue

    async def reserve(self, want: int, now: datetime) -> int:
        if self._window is None:
            raise ConfigurationError("RateLimiter is not bound: pass it to a JobQueueServer")
        ids, self._next = await self._window.take(
            self._queue, want, self.max_executions, self.window_seconds, now
        )
        self._taken = ids
        return len(ids)

    async def unreserve(self, count: int, now: datetime) -> None:
        if count and self._window is not None:
            unused, self._taken = self._taken[-count:], self._taken[:-count]
            await self._window.give_back(unused)

    def next_time(self, now: datetime) -> datetime | None:
        return self._next


class CompositeLimiter(Limiter):
    """Every limiter must agree: grants the smallest reservation of all."""

    def __init__(self, *limiters: Limiter) -> None:
        self.limiters = limiters

    def bind(self, db: Database, queue: str) -> None:
        for limiter in self.limiters:
            limiter.bind(db, queue)

    async def reserve(self, want: int, now: datetime) -> int:
        granted: list[tuple[Limiter, int]] = []
        grant = want
        try:
            for limiter in self.limiters:
                if grant == 0:
                    break
                got = await limiter.reserve(grant, now)
                granted.append((limiter, got))
                grant = min(grant, got)
        except BaseException:
            grant = 0  # one limiter failed: the others give back all they granted
            raise
        finally:
            for limiter, got in granted:
                await limiter.unreserve(got - grant, now)
        return grant

    async def unreserve(self, count: int, now: datetime) -> None:
        for limiter in self.limiters:
            await limiter.unreserve(count, now)

    def on_finish(self) -> None:
        for limiter in self.limiters:
            limiter.on_finish()

    def next_time(self, now: datetime) -> datetime | None:
        times = [t for t in (lim.next_time(now) for lim in self.limiters) if t is not None]
        return max(times) if times else None

    @property
    def queue_cap(self) -> int | None:
        caps = [cap for cap in (lim.queue_cap for lim in self.limiters) if cap is not None]
        return min(caps) if caps else None
