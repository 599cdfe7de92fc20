"""Keeping leases: heartbeats, abort requests and recovery of dead workers' jobs.

A worker renews the leases of the jobs it runs every third of the lease; a
job missing from the renewal was lost (its lease expired and another worker
may have it) and its handler is cancelled; a job found ABORTING is aborted.
Between beats, abort requests are polled on their own, cheaper, interval.
Every few seconds the worker also reaps its queue: jobs whose worker died go
back to PENDING (or fail), pending jobs past their deadline fail; and it gives
back its strays, jobs a claim took for it whose answer never arrived.
:class:`LeaseSchedule` is the timing (pure); :class:`LeaseKeeper` the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from taskdb.core.clock import Clock
from taskdb.core.jobs import Claim, JobStatus
from taskdb.errors import TaskdbError
from taskdb.store.errors import retry_level

log = logging.getLogger("taskdb.server")

REAP_EVERY = 5.0  # seconds between reaps, at most


@dataclass(slots=True)
class LeaseSchedule:
    """When to beat and when to reap (pure; times are ``time.monotonic()`` seconds)."""

    lease_seconds: float
    abort_poll_interval: float
    last_beat: float = field(default_factory=time.monotonic)
    last_reap: float = field(default_factory=time.monotonic)

    @property
    def tick(self) -> float:
        """Seconds between looks: abort requests are polled this often."""
        return min(self.abort_poll_interval, self.lease_seconds / 3)

    def due(self, now: float) -> tuple[bool, bool]:
        """Whether to beat and whether to reap at ``now``."""
        beat = now - self.last_beat >= self.lease_seconds / 3
        reap = now - self.last_reap >= min(self.lease_seconds / 2, REAP_EVERY)
        return beat, reap

    def done(self, now: float, *, beat: bool, reap: bool) -> None:
        """Record what was done at ``now`` (a failed look is tried again next tick)."""
        if beat:
            self.last_beat = now
        if reap:
            self.last_reap = now


class LeaseStore(Protocol):
    """The statements a :class:`LeaseKeeper` runs (:class:`~taskdb.store.jobs.JobStore`)."""

    async def heartbeat(
        self, worker_id: str, claims: Sequence[Claim], now: datetime, lease_seconds: float
    ) -> dict[int, JobStatus]: ...

    async def aborting(self, claims: Sequence[Claim]) -> set[int]: ...

    async def reap(self, queue: str, now: datetime) -> int: ...

    async def release_strays(
        self, worker_id: str, known: Sequence[Claim], now: datetime, lease_seconds: float
    ) -> list[int]: ...


class WorkerRegistry(Protocol):
    """Where a worker says it is alive (:class:`~taskdb.store.workers.WorkerStore`)."""

    async def beat(
        self, worker_id: str, queue: str, slots: int, lease_seconds: float, now: datetime
    ) -> None: ...

    async def remove(self, worker_id: str, queue: str) -> None: ...


class LeaseHost(Protocol):
    """What a :class:`LeaseKeeper` asks of its server."""

    def held_claims(self) -> list[Claim]:
        """The claims whose handlers still run (not lost, outcome not being written)."""
        ...

    def known_claims(self) -> list[Claim]:
        """Every claim the server runs or is recording, and those whose run ended
        with its outcome unwritten by an error (left to their lease)."""
        ...

    def lost(self, claim: Claim) -> None:
        """The lease of ``claim`` was lost: cancel its handler (if it still runs)."""
        ...

    def abort(self, job_id: int) -> None:
        """Job ``job_id`` is being aborted."""
        ...

    def wake(self) -> None:
        """Jobs were requeued: look for work."""
        ...

    def beat(self) -> None:
        """A heartbeat went through: the worker is alive."""
        ...


class LeaseKeeper:
    """Renews leases, forwards aborts and reaps for one server."""

    def __init__(
        self,
        host: LeaseHost,
        store: LeaseStore,
        schedule: LeaseSchedule,
        *,
        worker_id: str,
        queue: str,
        clock: Clock,
        registry: WorkerRegistry | None = None,
        slots: int = 0,
    ) -> None:
        self.host = host
        self._registry = registry
        self._slots = slots
        self._store = store
        self.schedule = schedule
        self._worker_id = worker_id
        self._queue = queue
        self._clock = clock

    async def run(self) -> None:
        """Beat, poll and reap on the schedule until cancelled; the worker's registry
        row is written first and deleted when cancelled (a clean stop)."""
        try:
            await self._announce()
            await self._loop()
        finally:
            await self._withdraw()

    async def _announce(self) -> None:
        if self._registry is None:
            return
        try:
            await self._registry.beat(
                self._worker_id,
                self._queue,
                self._slots,
                self.schedule.lease_seconds,
                self._clock(),
            )
        except TaskdbError as exc:  # only the dashboard misses it: the next beat retries
            log.warning("cannot register the worker (%s)", exc)

    async def _withdraw(self) -> None:
        if self._registry is not None:
            with contextlib.suppress(TaskdbError, TimeoutError):
                await asyncio.wait_for(self._registry.remove(self._worker_id, self._queue), 5)

    async def _loop(self) -> None:
        schedule = self.schedule
        while True:
            await asyncio.sleep(schedule.tick)
            now = time.monotonic()
            beat, reap = schedule.due(now)
            try:
                await self.once(beat=beat, reap=reap)
            except Exception as exc:  # not done: try again next tick
                if isinstance(exc, TaskdbError):
                    log.log(retry_level(exc), "lease maintenance failed (%s); retrying", exc)
                else:
                    log.exception("lease maintenance failed unexpectedly; retrying")
                continue
            schedule.done(now, beat=beat, reap=reap)
            if beat:
                self.host.beat()
                await self._announce()

    async def once(self, *, beat: bool, reap: bool) -> None:
        """One look: renew leases (``beat``) or poll for aborts, then reap (``reap``)."""
        host = self.host
        claims = host.held_claims()
        now = self._clock()
        if beat:
            held = await self._store.heartbeat(
                self._worker_id, claims, now, self.schedule.lease_seconds
            )
            for claim in claims:
                status = held.get(claim.job_id)
                if status is None:
                    host.lost(claim)
                elif status is JobStatus.ABORTING:
                    host.abort(claim.job_id)
        else:
            for job_id in await self._store.aborting(claims):
                host.abort(job_id)
        if reap:
            reaped = await self._store.reap(self._queue, now)
            if reaped:
                log.info(
                    "queue %r: %d job(s) whose worker stopped renewing its lease, or whose "
                    "deadline passed, taken back",
                    self._queue,
                    reaped,
                    extra={"queue": self._queue},
                )
                host.wake()
            strays = await self._store.release_strays(
                self._worker_id, host.known_claims(), now, self.schedule.lease_seconds
            )
            if strays:
                log.warning(
                    "queue %r: job(s) %s, held by this worker but not run by it, given "
                    "back (a claim whose answer was lost, or a release that failed)",
                    self._queue,
                    ", ".join(map(str, strays)),
                    extra={"queue": self._queue},
                )
                host.wake()
