"""Queue state an operator sets: paused queues, which no worker claims from.

A queue has a row in ``taskdb_queues`` only once it was paused or resumed. The
claim statement skips a paused queue itself (:mod:`taskdb.store.statements`),
so every worker stops claiming from it with its next claim, on every machine;
jobs can still be submitted, and running ones finish.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from taskdb.store.database import Database
from taskdb.store.errors import reconnecting
from taskdb.store.schema import queues


class QueueStore:
    """Paused queues of one :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @reconnecting
    async def set_paused(self, name: str, paused: bool, now: datetime) -> None:
        stmt = self.db.backend.insert(queues).values(name=name, paused=paused, updated_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=[queues.c.name],
            set_={"paused": stmt.excluded.paused, "updated_at": stmt.excluded.updated_at},
        )
        async with self.db.transaction() as conn:
            await conn.execute(stmt)

    @reconnecting
    async def paused(self) -> set[str]:
        """The names of the paused queues."""
        stmt = select(queues.c.name).where(queues.c.paused)
        async with self.db.transaction(write=False, atomic=False) as conn:
            return set(await conn.scalars(stmt))
