"""The rate-limit window: job starts per queue in a sliding window, across processes.

Each start a :class:`~taskdb.RateLimiter` grants is a row of
``taskdb_rate_limit_hits``; a reservation counts the rows of the window under
a per-queue lock, so every server of the queue in every process shares one
window.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select

from taskdb.store.database import Database
from taskdb.store.errors import reconnecting
from taskdb.store.schema import rate_limit_hits


class RateWindow:
    """The sliding windows of one :class:`Database` (one per queue)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @reconnecting
    async def take(
        self, queue: str, want: int, limit: int, window_seconds: float, now: datetime
    ) -> tuple[list[int], datetime | None]:
        """Reserve up to ``want`` executions in the sliding window, across processes.

        Returns the reserved hit ids and, when fewer than ``want`` were free,
        when the next slot frees up.
        """
        start = now - timedelta(seconds=window_seconds)
        hits = rate_limit_hits
        async with self.db.transaction() as conn:
            await self.db.backend.lock(conn, f"taskdb-rate:{queue}")
            await conn.execute(delete(hits).where(hits.c.queue == queue, hits.c.at <= start))
            query = select(hits.c.at).where(hits.c.queue == queue).order_by(hits.c.at)
            in_window: list[datetime] = list((await conn.scalars(query)).all())
            grant = max(0, min(want, limit - len(in_window)))
            ids: list[int] = []
            if grant:
                result = await conn.execute(
                    insert(hits).returning(hits.c.id, sort_by_parameter_order=True),
                    [{"queue": queue, "at": now}] * grant,
                )
                ids = [int(i) for i in result.scalars().all()]
        # The window is full: the next slot frees when its oldest hit ages out.
        oldest = in_window[0] if in_window else now
        next_free = oldest + timedelta(seconds=window_seconds) if grant < want else None
        return ids, next_free

    @reconnecting
    async def give_back(self, ids: Sequence[int]) -> None:
        """Delete hits reserved by :meth:`take` that no job used."""
        if ids:
            async with self.db.transaction() as conn:
                await conn.execute(delete(rate_limit_hits).where(rate_limit_hits.c.id.in_(ids)))
