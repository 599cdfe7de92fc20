"""Typed round trips through a real worker (servers of the App in this process):
``result()`` gives the declared return type back, whether the task was deferred
from sync code (``defer``) or async code (``defer_async``)."""

from __future__ import annotations

import asyncio
import base64
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest

import taskdb
from taskdb import InvalidJobInput, JobError, JobQueueClient
from tests.app.conftest import Serve
from tests.app.tasks_app import (
    Attachment,
    Base64Upload,
    Color,
    Item,
    Order,
    Receipt,
    Report,
    Upload,
    attach,
    base64_upload_size,
    checkout,
    echo_values,
    filled,
    greet,
    report,
    reverse,
    upload_size,
)

INLINE_LIMIT = 65_536  # outputs of this many bytes or more become blobs behind a CacheRef


async def both_ways(task: taskdb.TypedTask[Any], **kwargs: Any) -> list[Any]:
    """The results of ``task`` deferred with ``defer`` (in a thread, as sync code
    would) and with ``defer_async``, each waited for by its own kind of handle."""
    sync_handle = await asyncio.to_thread(task.defer, **kwargs)
    async_handle = await task.defer_async(**kwargs)
    return list(
        await asyncio.gather(
            asyncio.to_thread(sync_handle.result, 10), async_handle.result(timeout=10)
        )
    )


async def test_models_come_back_as_models(app: taskdb.App, serve: Serve) -> None:
    await serve()
    order = Order(
        id=uuid4(),
        placed=datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=-5))),
        color=Color.BLUE,
        items=[Item(sku="pen", qty=3, price=Decimal("1.10")), Item(sku="ink", qty=1, price=9)],
    )
    expected = Receipt(order=order, total=Decimal("12.20"), skus=("pen", "ink"))
    for result in await both_ways(checkout, order=order, discount=Decimal("0.10")):
        assert isinstance(result, Receipt) and isinstance(result.order.items[0], Item)
        assert result == expected
        assert result.order.placed.utcoffset() is not None
    # A model may be passed as the dict it validates from.
    handle = await checkout.defer_async(order=order.model_dump(mode="json"))
    assert await handle.result(timeout=10) == Receipt(
        order=order, total=Decimal("12.30"), skus=("pen", "ink")
    )


async def test_scalars_and_containers_keep_their_types(app: taskdb.App, serve: Serve) -> None:
    await serve()
    values = (
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=9))),
        UUID("12345678-1234-5678-1234-567812345678"),
        Decimal("3.1415926535897932384626"),
        Color.RED,
        (7, "seven"),
        ["a", "b"],
        {"x": 0.5, "y": -2.0},
        None,
    )
    names = ("when", "uid", "amount", "color", "pair", "tags", "scores", "maybe")
    kwargs = dict(zip(names, values, strict=True))
    for result in await both_ways(echo_values, **kwargs):
        assert result == values
        assert [type(v) for v in result] == [type(v) for v in values]
    with_int = await echo_values.defer_async(**{**kwargs, "maybe": 4})
    assert (await with_int.result(timeout=10))[-1] == 4


async def test_bytes_travel_as_base64_and_small_outputs_inline(
    db: taskdb.Database, app: taskdb.App, serve: Serve
) -> None:
    await serve()
    data, made = bytes(range(256)), datetime(2026, 3, 4, tzinfo=UTC)
    reversed_, attached = await asyncio.gather(
        both_ways(reverse, data=data), both_ways(attach, name="a", data=data, made=made)
    )
    assert reversed_ == [data[::-1]] * 2
    assert attached == [Attachment(name="a", data=data, made=made)] * 2
    handle = await reverse.defer_async(data=data)
    stored = (await handle.get()).input["data"]
    assert isinstance(stored, str) and base64.urlsafe_b64decode(stored) == data


async def test_large_binary_outputs_come_back_as_resolvable_refs(
    db: taskdb.Database, app: taskdb.App, serve: Serve
) -> None:
    await serve()
    inline, refs = await asyncio.gather(
        both_ways(filled, size=INLINE_LIMIT - 1, fill=1),
        both_ways(filled, size=INLINE_LIMIT, fill=2),
    )
    assert inline == [b"\x01" * (INLINE_LIMIT - 1)] * 2
    for ref in refs:
        assert taskdb.is_cache_ref(ref) and ref["size"] == INLINE_LIMIT
        blob = await taskdb.resolve_job_output(ref, taskdb.SqlTaskOutputRepository(db))
        assert isinstance(blob, taskdb.Blob) and blob.read() == b"\x02" * INLINE_LIMIT


async def test_a_model_holding_a_large_binary_keeps_the_ref(
    db: taskdb.Database, app: taskdb.App, serve: Serve
) -> None:
    await serve()
    small, large = [await (await report.defer_async(size=n)).result(10) for n in (9, INLINE_LIMIT)]
    assert small == Report(title="r", data=b"r" * 9)
    assert isinstance(large, Report) and taskdb.is_cache_ref(large.data)
    blob = await taskdb.resolve_job_output(large.data, taskdb.SqlTaskOutputRepository(db))
    assert isinstance(blob, taskdb.Blob) and blob.read() == b"r" * INLINE_LIMIT


async def test_bytes_inside_a_model_argument_follow_the_models_own_config(
    db: taskdb.Database, app: taskdb.App, serve: Serve
) -> None:
    """A model's bytes travel as its config says: base64 round-trips any bytes; the
    default (UTF-8 text) refuses bytes that are not UTF-8, naming the field."""
    await serve()
    binary = b"\xff\x00\xfe"
    sizes = await both_ways(base64_upload_size, upload=Base64Upload(name="x", data=binary))
    assert sizes == [3, 3]
    assert await both_ways(upload_size, upload=Upload(name="x", data=b"text")) == [4, 4]
    with pytest.raises(InvalidJobInput, match=r"\bupload: not JSON"):
        await upload_size.defer_async(upload=Upload(name="x", data=binary))


async def test_stored_arguments_are_validated_again_on_the_worker(
    db: taskdb.Database, app: taskdb.App, serve: Serve
) -> None:
    await serve()
    raw = JobQueueClient(db, checkout.queue, poll_interval=0.02)
    handle = await raw.submit({"order": {"id": "not-a-uuid"}}, task=checkout.name)
    with pytest.raises(JobError) as failed:
        await handle.wait(timeout=10)
    assert failed.value.error_code == InvalidJobInput.__name__
    assert "order" in failed.value.message
    job = await handle.get()
    assert job.status is taskdb.JobStatus.FAILED
    assert job.attempts == 1 < job.max_retries  # bad input never gets better: no retry


async def test_sync_defer_from_16_threads_at_once(app: taskdb.App, serve: Serve) -> None:
    await serve(workers=8)
    start = threading.Barrier(16)

    def defer_and_wait(thread: int) -> list[tuple[int, str, str]]:
        start.wait(timeout=10)
        handles = [(f"{thread}-{i}", greet.defer(name=f"{thread}-{i}")) for i in range(3)]
        return [(h.id, name, h.result(timeout=20)) for name, h in handles]

    def in_16_threads() -> list[tuple[int, str, str]]:
        with ThreadPoolExecutor(16) as pool:
            return [job for jobs in pool.map(defer_and_wait, range(16)) for job in jobs]

    done = await asyncio.to_thread(in_16_threads)
    assert len({job_id for job_id, _, _ in done}) == len(done) == 48
    assert all(output == f"hello {name}" for _, name, output in done)
