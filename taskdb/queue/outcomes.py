"""Writing outcomes: group commit, with a claim riding on each batch.

Runs hand their outcome to :meth:`OutcomeWriter.record`; outcomes that arrive
while a batch is being written go together in the next one
(:class:`~taskdb.queue.batcher.Batcher`), and the statement that writes a
batch also claims jobs for the slots it frees (one round trip per batch for a
busy worker). Writes are fenced: only claims the worker still holds are
written. A value the database refuses fails only its own job, and a database
outage is ridden out while the job's lease lasts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from taskdb.core.clock import Clock
from taskdb.core.jobs import Claim, JobStatus
from taskdb.core.retry import Fail, Outcome
from taskdb.errors import InvalidJobInput, StorageError
from taskdb.queue.batcher import Batcher
from taskdb.queue.claimer import Claimer
from taskdb.store.errors import riding_out

log = logging.getLogger("taskdb.server")

Item = tuple[Claim, Outcome]
Statuses = dict[int, JobStatus]
"""The new status of each job whose outcome was written."""


class OutcomeStore(Protocol):
    """The writes an :class:`OutcomeWriter` makes (:class:`~taskdb.store.jobs.JobStore`)."""

    async def finish(self, worker_id: str, items: Sequence[Item], now: datetime) -> Statuses: ...

    async def finish_and_claim(
        self,
        worker_id: str,
        items: Sequence[Item],
        now: datetime,
        *,
        queue: str,
        limit: int,
        lease_seconds: float,
    ) -> tuple[Statuses, list[Any]]: ...


class OutcomeWriter:
    """Writes the outcomes of one server's runs (see the module docstring)."""

    def __init__(
        self,
        store: OutcomeStore,
        claimer: Claimer,
        *,
        worker_id: str,
        queue: str,
        lease_seconds: float,
        clock: Clock,
    ) -> None:
        self._store = store
        self._claimer = claimer
        self._worker_id = worker_id
        self._queue = queue
        self._lease = lease_seconds
        self._clock = clock
        self._batcher: Batcher[Item, Statuses] = Batcher(self._flush)

    @property
    def busy(self) -> bool:
        """Outcomes are waiting or being written."""
        return self._batcher.busy

    async def drain(self) -> None:
        """Wait until every outcome handed over so far is written (or failed)."""
        await self._batcher.drain()

    async def record(self, claim: Claim, outcome: Outcome) -> Statuses | None:
        """Write ``outcome``, retrying through a database outage while the lease lasts;
        ``None`` when it could not be written in time (the lease will expire and
        the job will be retried). The result maps the jobs written with it to their
        new status: ``claim``'s job is missing when its lease was lost."""
        give_up = time.monotonic() + self._lease
        try:
            return await riding_out(lambda: self._batcher.submit((claim, outcome)), give_up)
        except StorageError as exc:
            log.error("job %s: could not record its outcome: %s", claim.job_id, exc)
            return None

    async def _flush(self, items: Sequence[Item]) -> Statuses:
        """Write a batch of outcomes and, in the same round trip, claim jobs for the
        slots that are free."""
        now = self._clock()
        grant = await self._claimer.reserve(now)
        if grant == 0:
            return await self.finish(items)
        write = self._store.finish_and_claim(
            self._worker_id,
            items,
            now,
            queue=self._queue,
            limit=grant,
            lease_seconds=self._lease,
        )
        try:
            statuses, jobs = await self._claimer.claiming(grant, now, write)
        except InvalidJobInput:  # nothing was written: outcomes alone, claims later
            return await self.finish(items)
        await self._claimer.took(jobs, grant, now)
        return statuses

    async def finish(self, items: Sequence[Item]) -> Statuses:
        """Write a batch of outcomes. If a value is rejected (not JSON, or refused by
        the database: PostgreSQL jsonb has no ``\\u0000``), write the items one by one
        so one bad output cannot sink its siblings; the rejected one fails its job."""
        try:
            return await self._store.finish(self._worker_id, items, self._clock())
        except InvalidJobInput as exc:
            if len(items) > 1:
                statuses: Statuses = {}
                for item in items:
                    statuses |= await self.finish([item])
                return statuses
            ((claim, _),) = items
            rejected = Fail(f"output rejected: {exc}", InvalidJobInput.__name__)
            return await self._store.finish(self._worker_id, [(claim, rejected)], self._clock())
