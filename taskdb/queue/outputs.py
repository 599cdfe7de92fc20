"""Job outputs as small rows: binary values go to the blob store, refs stay.

A handler may return, at any depth of dicts, lists and tuples, ``bytes``
(or ``bytearray`` / ``memoryview``), a :class:`Blob`, or an async iterator
of byte chunks. :func:`store_output` turns them into JSON: values at or above
the threshold are streamed into the blob store (never held whole: an async
iterator is written as it produces) and replaced by a ``CacheRef``; smaller
ones are inlined losslessly (``taskdb.core.inline``). Every blob the output
refers to, including refs the handler returned itself, is linked to the job
by the transaction that writes the job's outcome (:meth:`JobStore.finish
<taskdb.store.jobs.JobStore.finish>`), so purging the job releases it, ``gc``
never takes it while the row lives, and a blob whose outcome was never
written (the worker died, its write was fenced off) is an orphan ``gc``
reclaims.

A storage error while a blob is written is retried with backoff (a value
that can be read again: ``bytes``, a :class:`Blob`) until ``retry_until``;
an async iterator cannot be replayed, so its error propagates at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from taskdb.core.inline import encode_inline, holds, is_binary, iter_binary_chunks
from taskdb.core.refs import is_cache_ref, iter_cache_refs, make_cache_ref, ref_key
from taskdb.store.blobs import BlobStore
from taskdb.store.errors import riding_out
from taskdb.store.schema import job_holder
from taskdb.streams.blob import Blob


def _stored_leaf(value: Any) -> bool:
    return is_cache_ref(value) or is_binary(value) or _is_chunk_stream(value)


def needs_storing(value: Any) -> bool:
    """Whether :func:`store_output` would change anything (cheap for plain JSON:
    this runs on every job's output)."""
    return holds(value, _stored_leaf)


async def store_output(
    value: Any, blobs: BlobStore, threshold: int, *, retry_until: float | None = None
) -> Any:
    """``value`` as row JSON, its large binary values streamed into ``blobs`` (see
    the module docstring; ``retry_until`` is a ``time.monotonic()`` deadline).
    Nothing is linked: pass :func:`output_refs` to the outcome that stores it."""
    return await _store(value, blobs, threshold, retry_until)


def output_refs(stored: Any) -> tuple[str, ...]:
    """The blob keys the stored output ``stored`` refers to."""
    return tuple(ref_key(ref) for ref in iter_cache_refs(stored))


async def link_output(stored: Any, blobs: BlobStore, job_id: int) -> None:
    """Link the blobs ``stored`` refers to to job ``job_id`` now, in a transaction of
    their own, for a handler that must release other holders of those blobs
    before it returns (a graph job clearing its run cache); the outcome links
    them again in its own transaction."""
    keys = output_refs(stored)
    if keys:
        async with blobs.db.transaction() as conn:
            await blobs.link(conn, keys, job_holder(job_id))


async def _store(value: Any, blobs: BlobStore, threshold: int, until: float | None) -> Any:
    if is_binary(value):
        size = value.size if isinstance(value, Blob) else len(value)
        if size < threshold:
            return encode_inline(value)
        mime = value.mime if isinstance(value, Blob) else None
        return await riding_out(lambda: _write(blobs, iter_binary_chunks(value), mime), until)
    if _is_chunk_stream(value):
        return await _store_stream(value, blobs, threshold)
    if isinstance(value, dict):
        return {k: await _store(v, blobs, threshold, until) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [await _store(v, blobs, threshold, until) for v in value]
    return value


async def _store_stream(stream: AsyncIterator[Any], blobs: BlobStore, threshold: int) -> Any:
    """Buffer up to ``threshold`` bytes: a shorter stream is inlined, a longer one
    is written to a blob with the buffered head first."""
    head: list[bytes] = []
    size = 0
    async for chunk in stream:
        head.append(bytes(chunk))
        size += len(chunk)
        if size >= threshold:
            break
    else:
        return encode_inline(b"".join(head))

    async def rest() -> AsyncIterator[bytes]:
        for chunk in head:
            yield chunk
        head.clear()
        async for chunk in stream:
            yield bytes(chunk)

    return await _write(blobs, rest(), None)


async def _write(blobs: BlobStore, chunks: AsyncIterator[bytes], mime: str | None) -> Any:
    info = await blobs.write(chunks, mime=mime)
    return make_cache_ref(info.key, size=info.size, mime=mime)


def _is_chunk_stream(value: Any) -> bool:
    return hasattr(value, "__anext__") and not isinstance(value, Blob)
