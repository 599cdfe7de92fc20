"""Static checks of the typed-task API: ``make types`` runs mypy --strict on this file
(it is not collected by pytest). Each ``assert_type`` fails the build if a type
the API promises is lost."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, assert_type

from pydantic import BaseModel

import taskdb
from taskdb import App, SyncTaskHandle, TaskHandle, TypedTask

app = App()


class Thumb(BaseModel):
    width: int


@app.task
async def bare(x: int) -> Thumb:
    return Thumb(width=x)


@app.task(queue="images", max_retries=2)
async def with_options(x: int) -> Thumb:
    return Thumb(width=x)


@app.task(queue="text")
def plain(text: str) -> list[str]:
    return text.split()


assert_type(bare, TypedTask[Thumb])
assert_type(with_options, TypedTask[Thumb])
assert_type(plain, TypedTask[list[str]])


def sync_view() -> None:
    handle = with_options.defer(x=1)
    assert_type(handle, SyncTaskHandle[Thumb])
    assert_type(handle.result(timeout=1), Thumb)
    assert_type(plain.configure(priority=5).defer(text="a b").result(), list[str])
    assert_type(app.sync_handle(1), SyncTaskHandle[Any])


async def async_view() -> None:
    handle = await with_options.defer_async(x=1)
    assert_type(handle, TaskHandle[Thumb])
    assert_type(await handle.result(), Thumb)
    assert_type(await plain.defer_many_async([{"text": "a"}]), list[TaskHandle[list[str]]])
    assert_type(await app.handle(1), TaskHandle[Any])
    assert_type(await handle.get(), taskdb.Job)


@app.periodic(cron="*/5 * * * *", timezone="Europe/Paris")
@app.task(queue="reports", name="typing_rollup")
async def rollup(tick: datetime) -> Thumb:
    return Thumb(width=1)


assert_type(rollup, TypedTask[Thumb])


def ping() -> int:
    return 1


assert_type(app.periodic(every=timedelta(seconds=10), name="typing_ping")(ping), TypedTask[int])
