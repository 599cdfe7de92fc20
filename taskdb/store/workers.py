"""The registry of running workers (``taskdb_workers``): what the dashboard's workers
page shows.

Each queue server writes its row when it starts and at every heartbeat (an
upsert: a row lost to an outage comes back with the next beat) and deletes it
when it stops cleanly. A worker killed without a clean stop leaves its row
behind: :attr:`WorkerInfo.stale` says so once its heartbeat is older than a
lease, the time after which its jobs go back to other workers anyway.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import delete, func, select

from taskdb.core.jobs import RUNNING_STATUSES
from taskdb.store.database import Database
from taskdb.store.errors import reconnecting
from taskdb.store.schema import jobs, workers


class WorkerInfo(BaseModel):
    """One queue server of a worker process, as its last heartbeat left it."""

    model_config = ConfigDict(frozen=True)

    worker_id: str
    queue: str
    hostname: str
    pid: int
    slots: int
    running: int
    """Jobs of the queue this worker holds now (``PROCESSING`` or ``ABORTING``)."""
    started_at: datetime
    heartbeat_at: datetime
    stale: bool
    """No heartbeat for longer than a lease: the worker is most likely dead."""


class WorkerStore:
    """The worker rows of one :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @reconnecting
    async def beat(
        self, worker_id: str, queue: str, slots: int, lease_seconds: float, now: datetime
    ) -> None:
        """Write (or refresh) the row of ``worker_id`` serving ``queue``: alive at ``now``."""
        stmt = self.db.backend.insert(workers).values(
            worker_id=worker_id,
            queue=queue,
            hostname=socket.gethostname()[:255],
            pid=os.getpid(),
            slots=slots,
            lease_seconds=lease_seconds,
            started_at=now,
            heartbeat_at=now,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[workers.c.worker_id, workers.c.queue],
            set_={"heartbeat_at": stmt.excluded.heartbeat_at, "slots": stmt.excluded.slots},
        )
        async with self.db.transaction() as conn:
            await conn.execute(stmt)

    @reconnecting
    async def remove(self, worker_id: str, queue: str) -> None:
        """Delete the row of a worker that stopped cleanly."""
        stmt = delete(workers).where(workers.c.worker_id == worker_id, workers.c.queue == queue)
        async with self.db.transaction() as conn:
            await conn.execute(stmt)

    @reconnecting
    async def list_workers(self, now: datetime) -> list[WorkerInfo]:
        """Every registered worker, most recently started first, with its running jobs."""
        running = (
            select(jobs.c.worker_id, jobs.c.queue, func.count())
            .where(jobs.c.status.in_(RUNNING_STATUSES))
            .group_by(jobs.c.worker_id, jobs.c.queue)
        )
        rows = select(workers).order_by(workers.c.started_at.desc(), workers.c.worker_id)
        async with self.db.transaction(write=False) as conn:
            held = {(r[0], r[1]): int(r[2]) for r in (await conn.execute(running)).all()}
            found = (await conn.execute(rows)).all()
        return [
            WorkerInfo(
                worker_id=r.worker_id,
                queue=r.queue,
                hostname=r.hostname,
                pid=r.pid,
                slots=r.slots,
                running=held.get((r.worker_id, r.queue), 0),
                started_at=r.started_at,
                heartbeat_at=r.heartbeat_at,
                stale=(now - r.heartbeat_at).total_seconds() > r.lease_seconds,
            )
            for r in found
        ]
