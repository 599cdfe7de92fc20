"""Claiming: how many jobs a server may take now, and the loop that takes them.

:class:`Slots` is the accounting (pure). :class:`Claimer` reserves starts from
the server's limiter for the free slots, runs each claim so that a failed or
cancelled one gives its reservation back, and hands what a claim returned to
its :class:`ClaimHost` (the server). Its :meth:`Claimer.run` is the fetch
loop: claim while slots are free, sleep until woken (a slot freed, work
submitted in this process, or NOTIFY) or the poll interval passed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from taskdb.core.clock import Clock
from taskdb.errors import TaskdbError
from taskdb.queue.limiters import Limiter
from taskdb.store.errors import retry_level

log = logging.getLogger("taskdb.server")
T = TypeVar("T")

MAX_BACKOFF = 10.0  # seconds between claims while the database keeps failing


class Slots:
    """A server's slot accounting (pure).

    ``executing`` counts runs whose handler has not returned (each holds a
    slot); ``claiming`` counts starts reserved by claims in flight. Outcomes are
    written in the background, so jobs claimed and not yet recorded (``held``)
    may outnumber the slots; they are capped at twice the slots so that a slow
    database slows claiming down.
    """

    __slots__ = ("batch_size", "claiming", "executing", "workers")

    def __init__(self, workers: int, batch_size: int) -> None:
        self.workers = workers
        self.batch_size = batch_size
        self.executing = 0
        self.claiming = 0

    def claimable(self, held: int) -> int:
        """How many jobs a claim may take now (free slots no claim in flight fills)."""
        if held >= 2 * self.workers:
            return 0
        return min(self.workers - self.executing - self.claiming, self.batch_size)


class ClaimHost(Protocol):
    """What a :class:`Claimer` asks of its server."""

    @property
    def accepting(self) -> bool:
        """The server takes new jobs (it is running, not draining)."""
        ...

    @property
    def held(self) -> int:
        """Jobs claimed and not yet recorded."""
        ...

    @property
    def recording(self) -> bool:
        """Outcomes are being written: their write claims for the freed slots."""
        ...

    async def claim_rows(self, limit: int, now: datetime) -> list[Any]:
        """Claim up to ``limit`` jobs (the rows claimed)."""
        ...

    async def accept(self, jobs: Sequence[Any]) -> int:
        """Start the claimed ``jobs`` (or give them back); returns how many started."""
        ...

    def listen_for_work(self, idle: bool) -> bool:
        """Wake on notifications of new work while ``idle``; True when that just began."""
        ...

    async def sleep(self, seconds: float | None) -> None:
        """Sleep until woken or ``seconds`` passed (``None``: until woken)."""
        ...


class Claimer:
    """Reservations, claims and the fetch loop of one server (see the module docstring)."""

    def __init__(
        self,
        host: ClaimHost,
        slots: Slots,
        limiter: Limiter,
        *,
        clock: Clock,
        poll_interval: float,
    ) -> None:
        self.host = host
        self.slots = slots
        self.limiter = limiter
        self._clock = clock
        self._poll = poll_interval
        self.claimed = 0
        """Jobs started from claims so far."""

    def wanted(self) -> int:
        """How many jobs a claim may take now (0 while the server does not accept)."""
        return self.slots.claimable(self.host.held) if self.host.accepting else 0

    async def reserve(self, now: datetime) -> int:
        """Starts reserved for the free slots, for a claim riding on an outcome write
        (0 when none is free or the limiter fails: the outcomes go on alone; and
        under a queue-wide cap, which only the fetch loop's own claims count)."""
        want = self.wanted()
        if want <= 0 or self.limiter.queue_cap is not None:
            return 0
        try:
            return await self.limiter.reserve(want, now)
        except TaskdbError as exc:
            log.warning("claim with outcomes skipped (%s)", exc)
            return 0

    async def claiming(self, grant: int, now: datetime, claim: Awaitable[T]) -> T:
        """Await ``claim``, a claim of up to ``grant`` jobs reserved from the limiter;
        if it fails or is cancelled, it started nothing: the reservation goes back."""
        self.slots.claiming += grant
        try:
            return await claim
        except BaseException:
            await self.unreserve(grant, now)
            raise
        finally:
            self.slots.claiming -= grant

    async def took(self, jobs: Sequence[Any], grant: int, now: datetime) -> None:
        """Start the jobs a claim of ``grant`` returned; the starts they leave unused
        go back to the limiter."""
        started = await self.host.accept(jobs) if jobs else 0
        await self.unreserve(grant - started, now)
        self.claimed += started

    async def unreserve(self, count: int, now: datetime) -> None:
        """Give back limiter starts no job will use. Also after a failed claim, so an
        outage cannot shrink a ConcurrencyLimiter for good; a RateLimiter whose table
        is away keeps its slots (they leave the window with time)."""
        if count <= 0:
            return
        try:
            await self.limiter.unreserve(count, now)
        except TaskdbError as exc:
            log.warning("limiter: %d unused starts not given back (%s)", count, exc)

    def _until(self, when: datetime | None) -> float:
        if when is None:
            return self._poll
        return max(0.001, min(self._poll, (when - self._clock()).total_seconds()))

    async def run(self) -> None:
        """The fetch loop, until the server stops accepting jobs."""
        host = self.host
        failures = 0
        while host.accepting:
            want = self.wanted()
            # While outcomes are being written, their write claims for the free slots.
            if want <= 0 or host.recording:
                await host.sleep(None)
                continue
            now = self._clock()
            try:
                grant = await self.limiter.reserve(want, now)
                if grant == 0:
                    await host.sleep(self._until(self.limiter.next_time(now)))
                    continue
                jobs = await self.claiming(grant, now, host.claim_rows(grant, now))
                await self.took(jobs, grant, now)
                failures = 0
            except Exception as exc:
                # A storage error is expected (outages); anything else is a bug, in a
                # limiter plugin or here, that must not stop the worker from claiming.
                failures += 1
                if isinstance(exc, TaskdbError):
                    log.log(retry_level(exc), "claim failed (%s); retrying", exc)
                else:
                    log.exception("claim failed unexpectedly; retrying")
                await host.sleep(min(self._poll * 2**failures, MAX_BACKOFF))
                continue
            # Short of runnable jobs: from now on, wake on NOTIFY of new work, and
            # claim once more first (what committed before the watch notified nobody).
            if host.listen_for_work(len(jobs) < grant):
                continue
            if len(jobs) < want:
                await host.sleep(self._poll)
