"""``SqlTaskOutputRepository``: the output cache in the taskdb database.

Entries are rows of ``taskdb_task_outputs`` keyed by ``(namespace, task_type,
inputs_fingerprint(inputs))`` (:class:`~taskdb.store.outputs.OutputStore`);
blobs go through :class:`~taskdb.store.blobs.BlobStore`, and an entry links
the blobs its output refers to, so a blob lives as long as something refers
to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from datetime import datetime

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
from taskdb.core.clock import Clock, utcnow
from taskdb.core.inline import decode_binary_values, encode_binary_values
from taskdb.core.refs import CacheRef, iter_cache_refs, make_cache_ref, ref_key
from taskdb.errors import StorageError
from taskdb.store.blobs import BlobStore, GcReport
from taskdb.store.database import Database
from taskdb.store.outputs import OutputStore
from taskdb.streams.blob import Blob


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
        self._entries = OutputStore(db, self.blobs)

    def __repr__(self) -> str:
        return f"SqlTaskOutputRepository({self.db!r}, namespace={self.namespace!r})"

    def with_namespace(self, namespace: str) -> SqlTaskOutputRepository:
        return SqlTaskOutputRepository(
            self.db,
            namespace=child_namespace(self.namespace, namespace),
            clock=self._clock,
            blob_store=self.blobs,
        )

    async def save_output(self, task_type: str, inputs: Inputs, output: Output) -> None:
        """Upsert the entry and make its blob links the refs ``output`` holds (blobs
        only the replaced output referred to are freed). ``output`` must be JSON,
        except for binary values (``bytes``, ``Blob``), which are inlined losslessly."""
        value = encode_binary_values(check_output(output))
        refs = [ref_key(r) for r in iter_cache_refs(value)]
        fingerprint = inputs_fingerprint(inputs)
        await self._entries.save(
            self.namespace, check_task_type(task_type), fingerprint, value, refs, self._clock()
        )

    async def get_output(self, task_type: str, inputs: Inputs) -> dict[str, object] | None:
        found = await self._entries.get(
            self.namespace, check_task_type(task_type), inputs_fingerprint(inputs)
        )
        if found is None:
            return None
        if not isinstance(found, dict):
            raise StorageError(f"malformed cache entry for {task_type!r}: not a JSON object")
        decoded: dict[str, object] = decode_binary_values(found)
        return decoded

    async def size(self) -> int:
        return await self._entries.size(self.namespace)

    async def clear(self) -> int:
        return await self._entries.remove(self.namespace)

    async def clear_older_than(self, seconds: float) -> int:
        cutoff: datetime = self._clock() - check_age(seconds)
        return await self._entries.remove(self.namespace, cutoff)

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
