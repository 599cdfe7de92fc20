"""The App and its tasks under test, at module level so that worker subprocesses
(``python -m taskdb worker tests.app.tasks_app:app``) know them by the same names.

``app`` opens ``TASKDB_URL`` in a subprocess; in-process tests bind it to the
test's database (the ``app`` fixture).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import os
import threading
import time
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict

import taskdb
from taskdb.streams import TextDelta

app = taskdb.App(queue="app", max_retries=2, poll_interval=0.02)

SHARED = "shared"
"""The queue of the tasks the two worker processes share."""


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Item(BaseModel):
    sku: str
    qty: int
    price: Decimal
    weight: float = 0.0


class Order(BaseModel):
    id: UUID
    placed: datetime
    color: Color
    items: list[Item]


class Receipt(BaseModel):
    order: Order
    total: Decimal
    skus: tuple[str, ...]


class Attachment(BaseModel):
    name: str
    data: bytes
    made: datetime


class Upload(BaseModel):
    name: str
    data: bytes  # its own model: JSON holds it as UTF-8 text (pydantic's default)


class Base64Upload(BaseModel):
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    name: str
    data: bytes


class Report(BaseModel):
    title: str
    data: bytes | taskdb.CacheRef  # a CacheRef once it is 64 KiB or more


class Done(BaseModel):
    """What the shared tasks return: their result and the process that ran them."""

    value: Any
    pid: int


# -- typed values ------------------------------------------------------------------------


@app.task
async def resize(
    name: str,
    width: int = 256,
    scale: float = 1.0,
    meta: dict[str, Any] | None = None,
    *,
    ctx: taskdb.JobContext,
) -> str:
    return f"{name}@{round(width * scale)}"


@app.task
async def checkout(order: Order, discount: Decimal = Decimal(0)) -> Receipt:
    total = sum((i.price * i.qty for i in order.items), Decimal(0)) - discount
    return Receipt(order=order, total=total, skus=tuple(i.sku for i in order.items))


@app.task
def echo_values(
    when: datetime,
    uid: UUID,
    amount: Decimal,
    color: Color,
    pair: tuple[int, str],
    tags: list[str],
    scores: dict[str, float],
    maybe: int | None = None,
) -> tuple[
    datetime, UUID, Decimal, Color, tuple[int, str], list[str], dict[str, float], int | None
]:
    return (when, uid, amount, color, pair, tags, scores, maybe)


@app.task
def reverse(data: bytes) -> bytes:
    return data[::-1]


@app.task
async def filled(size: int, fill: int) -> bytes:
    return bytes([fill]) * size


@app.task
def attach(name: str, data: bytes, made: datetime) -> Attachment:
    return Attachment(name=name, data=data, made=made)


@app.task
async def upload_size(upload: Upload) -> int:
    return len(upload.data)


@app.task
async def base64_upload_size(upload: Base64Upload) -> int:
    return len(upload.data)


@app.task(queue="reports")
async def report(size: int) -> Report:
    return Report(title="r", data=b"r" * size)


@app.task
def greet(name: str, excited: bool = False) -> str:
    return f"hello {name}{'!' if excited else ''}"


# -- where and how tasks run -------------------------------------------------------------

SEEN: dict[str, Any] = {}
"""What in-process tasks observed (the test reads it after the job ended)."""


@app.task
def thread_of_def(ctx: taskdb.SyncJobContext) -> list[str]:
    return [threading.current_thread().name, type(ctx).__name__]


@app.task
async def thread_of_async(ctx: taskdb.JobContext) -> list[str]:
    return [threading.current_thread().name, type(ctx).__name__]


@app.task
def until_aborted(ctx: taskdb.SyncJobContext) -> None:
    """Report progress from the worker thread, then run until the job is aborted."""
    SEEN["thread"] = threading.current_thread().name
    ctx.update_progress(40, "halfway", {"step": 2})
    give_up = time.monotonic() + 20  # never outlive the test
    while not ctx.aborting and time.monotonic() < give_up:
        time.sleep(0.01)
    SEEN["aborting"] = ctx.aborting


RAN: list[str] = []
"""Tags of the ``record`` jobs, in the order they ran."""


@app.task
async def record(tag: str) -> str:
    RAN.append(tag)
    return tag


@app.task
def fail(message: str) -> None:
    raise RuntimeError(message)


@app.task
async def narrate(words: list[str], ctx: taskdb.JobContext) -> int:
    for word in words:
        await ctx.emit_stream_event(TextDelta("text", word))
    return len(words)


# -- the tasks two worker processes share ------------------------------------------------


@app.task(queue=SHARED)
async def add(a: int, b: int) -> Done:
    await asyncio.sleep(0.01)
    return Done(value=a + b, pid=os.getpid())


@app.task(queue=SHARED)
def shout(text: str) -> Done:
    time.sleep(0.01)
    return Done(value=text.upper(), pid=os.getpid())


@app.task(queue=SHARED)
async def digest(data: bytes) -> Done:
    await asyncio.sleep(0.01)
    return Done(value=hashlib.sha256(data).hexdigest(), pid=os.getpid())


# -- a plain handler (no App) ------------------------------------------------------------


async def which_queue(value: Any, ctx: taskdb.JobContext) -> dict[str, Any]:
    """``taskdb worker tests.app.tasks_app:which_queue -q A -q B``: serves both."""
    return {"queue": ctx.job.queue, "value": value}
