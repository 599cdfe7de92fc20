"""Arguments are validated against the task's signature before anything is stored:
``InvalidJobInput`` names the bad field, and the jobs table stays empty, whichever
way the task is deferred."""

from __future__ import annotations

import asyncio
import gc
import math
import re
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import select

import taskdb
from taskdb import InvalidJobInput, TaskdbError
from taskdb.core.jobs import input_digest
from taskdb.store.schema import jobs
from tests.app.conftest import stored_jobs
from tests.app.tasks_app import checkout, resize

ORDER: dict[str, Any] = {
    "id": str(uuid4()),
    "placed": datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
    "color": "red",
    "items": [{"sku": "pen", "qty": 2, "price": "1.25"}],
}
GOOD = {resize: {"name": "dog"}, checkout: {"order": ORDER}}


def item(**fields: Any) -> dict[str, Any]:
    """``ORDER`` with one item changed."""
    return {"order": {**ORDER, "items": [{**ORDER["items"][0], **fields}]}}


@pytest.mark.parametrize(
    ("task", "kwargs", "field"),
    [
        pytest.param(resize, {}, "name", id="missing"),
        pytest.param(resize, {"name": "cat", "height": 3}, "height", id="extra"),
        pytest.param(resize, {"name": "cat", "width": "wide"}, "width", id="wrong-type"),
        pytest.param(checkout, item(qty="two"), "order.items.0.qty", id="wrong-type-in-a-model"),
        pytest.param(resize, {"name": "cat", "scale": math.nan}, "scale", id="nan"),
        pytest.param(resize, {"name": "cat", "scale": -math.inf}, "scale", id="inf"),
        pytest.param(resize, {"name": "cat", "ctx": None}, "ctx", id="the-context"),
        pytest.param(
            resize,
            {"name": "cat", "meta": {"k": object()}},
            "meta",
            id="not-json",
        ),
        pytest.param(
            resize,
            {"name": "cat", "meta": {"k": math.nan}},
            "meta",
            id="nan-in-any",
        ),
        pytest.param(
            checkout,
            item(weight=math.inf),
            "order.items.0.weight",
            id="inf-in-a-model",
        ),
        pytest.param(
            resize,
            {"name": "cat\x00dog"},
            "name",
            id="nul-in-a-string",
        ),
    ],
)
async def test_bad_arguments_name_the_field_and_store_nothing(
    db: taskdb.Database, app: taskdb.App, task: Any, kwargs: dict[str, Any], field: str
) -> None:
    names_it = rf"\b{re.escape(field)}\b"
    with pytest.raises(InvalidJobInput, match=names_it):
        await asyncio.to_thread(task.defer, **kwargs)
    with pytest.raises(InvalidJobInput, match=names_it):
        await task.defer_async(**kwargs)
    batch = [GOOD[task], kwargs, GOOD[task]]  # one bad item: none of them is stored
    with pytest.raises(InvalidJobInput, match=names_it):
        await asyncio.to_thread(task.defer_many, batch)
    with pytest.raises(InvalidJobInput, match=names_it):
        await task.defer_many_async(batch)
    assert await stored_jobs(db) == []


async def test_defer_many_names_the_bad_call_by_its_index(app: taskdb.App) -> None:
    batch = [{"name": "a"}, {"name": "b"}, {"name": "c", "width": "wide"}]
    with pytest.raises(InvalidJobInput, match=r"\b2\.width: "):
        await resize.defer_many_async(batch)


async def test_sync_defer_in_an_event_loop_points_to_defer_async(
    db: taskdb.Database, app: taskdb.App
) -> None:
    for defer in (
        lambda: resize.defer(name="cat"),
        lambda: resize.defer_many([{"name": "cat"}]),
        lambda: resize.configure(priority=1).defer(name="cat"),
    ):
        with pytest.raises(TaskdbError, match=r"event loop: use await \S+\.defer_async\("):
            defer()
    assert await stored_jobs(db) == []


async def test_a_deferred_job_is_stored_as_a_raw_submit_of_its_payload(
    db: taskdb.Database, app: taskdb.App
) -> None:
    """Typed jobs are encoded as they are checked; the stored input and its digest
    (what the output cache looks jobs up by) are those of the payload submitted raw."""
    (typed,) = await resize.defer_many_async([{"name": "cat", "width": 10}])
    payload = resize.signature.dump_args([{"name": "cat", "width": 10}])[0]
    raw = await taskdb.JobQueueClient(db, "app").submit(payload, task=resize.name)
    assert (await typed.get()).input == (await raw.get()).input == payload
    async with db.transaction(write=False) as conn:
        stored = select(jobs.c.input_digest).where(jobs.c.id.in_([typed.id, raw.id]))
        digests = set((await conn.execute(stored)).scalars())
    assert digests == {input_digest(payload)}


def test_encoding_a_batch_leaves_no_payload_alive() -> None:
    """A deferred batch keeps one encoded string per call, not its dicts: a batch of
    dicts alive at once sets off garbage collections (and with them full ones, 1.3x
    the raw submit's time per job in `benchmarks/typed_tasks.py`)."""
    # 1,000 payload dicts, past the 700 new objects that set a collection off; done
    # in a few ms, within the GIL's switch interval: no other thread allocates meanwhile
    calls = [{"name": f"cat-{i}", "width": i} for i in range(1000)]
    resize.signature.encode_args(calls[:1])  # (warm: anything made once is made)
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()  # the young generation's count starts at 0 (700 sets one off)
    gc.callbacks.append(count)
    try:
        encoded = resize.signature.encode_args(calls)
    finally:
        gc.callbacks.remove(count)
    assert len(encoded) == 1000 and collections == []  # dicts kept: one or more
