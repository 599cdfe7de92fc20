"""The output cache's rows: ``taskdb_task_outputs``, and the blobs they link.

An entry is keyed by ``(namespace, task_type, fingerprint)`` and holds a JSON
output. It links the blobs its output refers to (holder ``'cache:<row id>'``)
in the transaction that writes it, so a blob lives as long as some entry (or
job) refers to it; replacing or removing entries frees the blobs left
unreferenced. :class:`~taskdb.cache.SqlTaskOutputRepository` is the cache
interface over this store.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, delete, func, select

from taskdb.errors import StorageError
from taskdb.store.blobs import BlobStore
from taskdb.store.database import Database
from taskdb.store.dialect import Dialect
from taskdb.store.errors import reconnecting
from taskdb.store.params import bind, params
from taskdb.store.schema import UtcDateTime, task_outputs

DELETE_BATCH = 500
"""Entries removed per transaction by :meth:`OutputStore.remove`."""


def holder(row_id: int) -> str:
    """The blob-link holder name of a cache entry."""
    return f"cache:{row_id}"


class _Statements:
    def __init__(self, d: Dialect) -> None:
        t = task_outputs.c
        key = (t.namespace == bind("ns"), t.task_type == bind("type"), t.fingerprint == bind("fp"))
        stmt = d.insert(task_outputs).values(
            namespace=bind("ns"),
            task_type=bind("type"),
            fingerprint=bind("fp"),
            output=bind("output", t.output.type),
            created_at=bind("now", UtcDateTime()),
        )
        self.upsert = stmt.on_conflict_do_update(
            index_elements=[t.namespace, t.task_type, t.fingerprint],
            set_={"output": stmt.excluded.output, "created_at": stmt.excluded.created_at},
        ).returning(t.id)
        self.get = select(t.output).where(*key)
        self.size = select(func.count()).where(t.namespace == bind("ns"))
        mine = t.namespace == bind("ns")
        older = t.created_at < bind("cutoff", UtcDateTime())
        self.remove = {
            aged: delete(task_outputs)
            .where(
                t.id.in_(select(t.id).where(*where).order_by(t.id).limit(bind("limit", Integer())))
            )
            .returning(t.id)
            for aged, where in ((False, (mine,)), (True, (mine, older)))
        }


_BUILT: dict[str, _Statements] = {}


class OutputStore:
    """Cache entries of one :class:`Database` (see the module docstring)."""

    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self.db = db
        self.blobs = blobs
        built = _BUILT.get(db.backend.name)
        if built is None:
            built = _BUILT[db.backend.name] = _Statements(db.backend)
        self._s = built

    @reconnecting
    async def save(
        self,
        namespace: str,
        task_type: str,
        fingerprint: str,
        output: Any,
        refs: Sequence[str],
        now: datetime,
    ) -> None:
        """Upsert the entry and make its blob links exactly ``refs`` (blobs only the
        replaced output referred to are freed)."""
        values = params(ns=namespace, type=task_type, fp=fingerprint, output=output, now=now)
        async with self.db.transaction() as conn:
            row_id = await conn.scalar(self._s.upsert, values)
            if row_id is None:
                raise StorageError("the cache upsert returned no row")
            await self.blobs.relink(conn, holder(row_id), refs)

    @reconnecting
    async def get(self, namespace: str, task_type: str, fingerprint: str) -> Any:
        """The entry's output, or ``None``."""
        values = params(ns=namespace, type=task_type, fp=fingerprint)
        async with self.db.transaction(write=False, atomic=False) as conn:
            return await conn.scalar(self._s.get, values)

    @reconnecting
    async def size(self, namespace: str) -> int:
        async with self.db.transaction(write=False, atomic=False) as conn:
            return int(await conn.scalar(self._s.size, params(ns=namespace)) or 0)

    async def remove(self, namespace: str, older_than: datetime | None = None) -> int:
        """Delete the namespace's entries (created before ``older_than`` if given) in
        batches, each with its blob links in one short transaction; returns how many."""
        removed = 0
        while True:
            batch = await self._remove_batch(namespace, older_than)
            removed += batch
            if batch < DELETE_BATCH:
                return removed

    @reconnecting
    async def _remove_batch(self, namespace: str, older_than: datetime | None) -> int:
        stmt = self._s.remove[older_than is not None]
        values = params(ns=namespace, limit=DELETE_BATCH)
        if older_than is not None:
            values |= params(cutoff=older_than)
        async with self.db.transaction() as conn:
            ids: list[int] = list(await conn.scalars(stmt, values))
            await self.blobs.release_holders(conn, [holder(i) for i in ids])
        return len(ids)
