"""``SqlTaskOutputRepository``: the output cache in the taskdb database.

Entries are rows of ``taskdb_task_outputs`` keyed by ``(namespace, task_type,
inputs_fingerprint(inputs))``; blobs go through :class:`~taskdb.store.blobs.BlobStore`.
An entry links the blobs its output refers to (holder ``'cache:<row id>'``), in
the transaction that writes it, so a blob lives as long as some entry (or job)
refers to it; replacing or removing entries frees the blobs left unreferenced.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Integer, bindparam, delete, func, select

from taskdb.cache.inline import decode_binary_values, encode_binary_values
from taskdb.cache.refs import CacheRef, iter_cache_refs, make_cache_ref, ref_key
from taskdb.cache.repository import (
    Inputs,
    Output,
    TaskOutputRepository,
    check_age,
    check_output,
    check_task_type,
    child_namespace,
    inputs_fingerprint,
)
from taskdb.errors import StorageError
from taskdb.store import postgres, sqlite
from taskdb.store.blobs import BlobStore, Clock, GcReport, utcnow
from taskdb.store.database import Database
from taskdb.store.schema import UtcDateTime, task_outputs
from taskdb.streams.blob import Blob

_DELETE_BATCH = 500  # entries removed per transaction by clear / clear_older_than


def _p(name: str, type_: Any = None) -> Any:
    return bindparam(f"p_{name}", type_=type_)


def holder(row_id: int) -> str:
    """The blob-link holder name of a cache entry."""
    return f"cache:{row_id}"


class _Statements:
    def __init__(self, dialect: str) -> None:
        t = task_outputs.c
        insert = postgres.insert if dialect == "postgresql" else sqlite.insert
        key = (t.namespace == _p("ns"), t.task_type == _p("type"), t.fingerprint == _p("fp"))
        stmt = insert(task_outputs).values(
            namespace=_p("ns"),
            task_type=_p("type"),
            fingerprint=_p("fp"),
            output=_p("output", t.output.type),
            created_at=_p("now", UtcDateTime()),
        )
        self.upsert = stmt.on_conflict_do_update(
            index_elements=[t.namespace, t.task_type, t.fingerprint],
            set_={"output": stmt.excluded.output, "created_at": stmt.excluded.created_at},
        ).returning(t.id)
        self.get = select(t.output).where(*key)
        self.size = select(func.count()).where(t.namespace == _p("ns"))
        mine = t.namespace == _p("ns")
        older = t.created_at < _p("cutoff", UtcDateTime())
        self.remove = {
            name: delete(task_outputs)
            .where(
                t.id.in_(select(t.id).where(*where).order_by(t.id).limit(_p("limit", Integer())))
            )
            .returning(t.id)
            for name, where in (("all", (mine,)), ("older", (mine, older)))
        }


@cache
def _statements(dialect: str) -> _Statements:
    return _Statements(dialect)


class SqlTaskOutputRepository(TaskOutputRepository):
    """The output cache in a taskdb database (PostgreSQL or SQLite), with streaming.

    ``namespace`` ``""`` is the shared cache; :meth:`with_namespace` (what
    :class:`~taskdb.cache.RunPrivateCacheRepo` uses) gives a view over a nested
    namespace sharing the database and the blob store. ``clock`` stamps entries;
    ``blob_store`` tunes blob I/O (default ``BlobStore(db, clock=clock)``).
    """

    def __init__(
        self,
        db: Database,
        *,
        namespace: str = "",
        clock: Clock = utcnow,
        blob_store: BlobStore | None = None,
    ) -> None:
        self.db = db
        self.namespace = child_namespace("", namespace) if namespace else ""
        self.blobs = blob_store or BlobStore(db, clock=clock)
        self._clock = clock
        self._s = _statements(db.dialect)

    def __repr__(self) -> str:
        return f"SqlTaskOutputRepository({self.db!r}, namespace={self.namespace!r})"

    def with_namespace(self, namespace: str) -> SqlTaskOutputRepository:
        return SqlTaskOutputRepository(
            self.db,
            namespace=child_namespace(self.namespace, namespace),
            clock=self._clock,
            blob_store=self.blobs,
        )

    def _key(self, task_type: str, inputs: Inputs) -> dict[str, str]:
        return {
            "p_ns": self.namespace,
            "p_type": check_task_type(task_type),
            "p_fp": inputs_fingerprint(inputs),
        }

    async def save_output(self, task_type: str, inputs: Inputs, output: Output) -> None:
        """Upsert the entry and make its blob links the refs ``output`` holds (blobs
        only the replaced output referred to are freed). ``output`` must be JSON,
        except for binary values (``bytes``, ``Blob``), which are inlined losslessly."""
        value = encode_binary_values(check_output(output))
        keys = [ref_key(r) for r in iter_cache_refs(value)]
        params = {**self._key(task_type, inputs), "p_output": value, "p_now": self._clock()}
        async with self.db.transaction() as conn:
            row_id = await conn.scalar(self._s.upsert, params)
            if row_id is None:
                raise StorageError("the cache upsert returned no row")
            await self.blobs.relink(conn, holder(row_id), keys)

    async def get_output(self, task_type: str, inputs: Inputs) -> dict[str, object] | None:
        params = self._key(task_type, inputs)
        async with self.db.transaction(write=False, atomic=False) as conn:
            found = await conn.scalar(self._s.get, params)
        if found is None:
            return None
        if not isinstance(found, dict):
            raise StorageError(f"malformed cache entry for {task_type!r}: not a JSON object")
        decoded: dict[str, object] = decode_binary_values(found)
        return decoded

    async def size(self) -> int:
        async with self.db.transaction(write=False, atomic=False) as conn:
            return int(await conn.scalar(self._s.size, {"p_ns": self.namespace}) or 0)

    async def clear(self) -> int:
        return await self._remove("all", {})

    async def clear_older_than(self, seconds: float) -> int:
        return await self._remove("older", {"p_cutoff": self._clock() - check_age(seconds)})

    async def _remove(self, which: str, cutoff: dict[str, datetime]) -> int:
        """Delete entries in batches, each with its blob links in one short transaction."""
        stmt = self._s.remove[which]
        params = {**cutoff, "p_ns": self.namespace, "p_limit": _DELETE_BATCH}
        removed = 0
        while True:
            async with self.db.transaction() as conn:
                ids: list[int] = list(await conn.scalars(stmt, params))
                await self.blobs.release_holders(conn, [holder(i) for i in ids])
            removed += len(ids)
            if len(ids) < _DELETE_BATCH:
                return removed

    # -- streaming -------------------------------------------------------------

    async def save_output_stream(
        self,
        task_type: str,
        inputs: Inputs,
        port: str,
        chunks: AsyncIterable[bytes],
        *,
        mime: str | None = None,
    ) -> CacheRef:
        """Stream ``chunks`` into a blob; the ref (with size, mime and port) is
        returned once it is committed. Nothing is left if the stream fails."""
        check_task_type(task_type)
        info = await self.blobs.write(chunks, mime=mime)
        return make_cache_ref(info.key, size=info.size, mime=mime, port=port)

    async def get_output_by_ref(self, ref: CacheRef) -> Blob | None:
        """The blob as a :class:`Blob` (spilled to a temporary file when large), or
        ``None`` for a ref to no committed blob."""
        return await self.blobs.read(ref_key(ref))

    async def get_output_stream_by_ref(self, ref: CacheRef) -> AsyncIterator[bytes] | None:
        """The blob's chunks, or ``None`` for a ref to no committed blob."""
        return await self.blobs.open_stream(ref_key(ref))


async def collect_garbage(
    db: Database,
    *,
    dry_run: bool = False,
    grace_seconds: float = 3600.0,
    stale_seconds: float = 900.0,
    now: datetime | None = None,
) -> GcReport:
    """Reclaim orphaned blobs of ``db`` (see :meth:`BlobStore.gc`): committed blobs
    nothing has linked for ``grace_seconds``, and unfinished ones whose writer
    has been silent for ``stale_seconds``. ``dry_run`` only counts them."""
    return await BlobStore(db).gc(
        dry_run=dry_run, grace_seconds=grace_seconds, stale_seconds=stale_seconds, now=now
    )
