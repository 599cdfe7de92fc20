"""Server-Sent Events against a real uvicorn server: the change feed (resuming from
``Last-Event-ID`` without a gap), one feed read for many browsers, and a job's
durable stream."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.engine import Engine

import taskdb
import taskdb.streams
from tests.web.conftest import sse_events


def _data(message: dict[str, str]) -> Any:
    return json.loads(message["data"])


async def test_the_change_feed_streams_and_resumes_from_last_event_id(
    db: taskdb.Database, live: str
) -> None:
    q = taskdb.JobQueueClient(db, "sse")
    async with httpx.AsyncClient(base_url=live, timeout=30) as http:
        async with http.stream("GET", "/api/changes?queue=sse") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            first = [(await q.submit({"n": n})).id for n in range(5)]
            got = await sse_events(response, 2)
        assert [_data(m)["job_id"] for m in got] == first[:2]
        assert all(m["event"] == "change" and m["id"] == _data(m)["cursor"] for m in got)
        later = [(await q.submit({"n": n})).id for n in range(5, 8)]  # while disconnected
        headers = {"Last-Event-ID": got[-1]["id"]}
        async with http.stream("GET", "/api/changes?queue=sse", headers=headers) as response:
            rest = await sse_events(response, 6)
        assert [_data(m)["job_id"] for m in rest] == first[2:] + later  # no gap, no repeat


@contextmanager
def feed_reads() -> Iterator[list[float]]:
    """Times of the change-feed reads any engine of this process runs while inside."""
    reads: list[float] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "taskdb_job_changes" in statement:
            reads.append(time.monotonic())

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        yield reads
    finally:
        event.remove(Engine, "before_cursor_execute", seen)


async def test_many_browsers_cost_one_feed_read_per_interval(
    db: taskdb.Database, live: str
) -> None:
    q = taskdb.JobQueueClient(db, "fan")
    clients = 10
    async with httpx.AsyncClient(base_url=live, timeout=30) as http:
        async with open_streams(http, "/api/changes", clients) as responses:
            with feed_reads() as reads:
                job = await q.submit({})
                got = await asyncio.gather(*(sse_events(r, 1) for r in responses))
                await asyncio.sleep(0.5)  # ten poll intervals of 0.05 s
        assert all(_data(m[0])["job_id"] == job.id for m in got)
    # one poller for the ten: about 0.5 / 0.05 reads (not ten times that)
    assert 2 <= len(reads) <= 20, len(reads)


class open_streams:
    """``count`` concurrent streaming GETs of ``path``, all open inside."""

    def __init__(self, http: httpx.AsyncClient, path: str, count: int) -> None:
        self.http, self.path, self.count = http, path, count
        self._opened: list[Any] = []

    async def __aenter__(self) -> list[httpx.Response]:
        for _ in range(self.count):
            cm = self.http.stream("GET", self.path)
            self._opened.append(cm)
        responses = [await cm.__aenter__() for cm in self._opened]
        return responses

    async def __aexit__(self, *exc: object) -> None:
        for cm in self._opened:
            await cm.__aexit__(None, None, None)


async def _streaming(value: Any, ctx: taskdb.JobContext) -> Any:
    ctx.emit_stream_event(taskdb.streams.TextDelta("log", "hello "))
    ctx.emit_stream_event(taskdb.streams.BinaryDelta("raw", b"\x00\xffbytes"))
    ctx.emit_stream_event(taskdb.streams.TextDelta("log", "world"))
    return {"ok": True}


async def test_a_jobs_durable_stream_streams_with_bytes_in_base64(
    db: taskdb.Database, live: str
) -> None:
    client = taskdb.JobQueueClient(db, "streams", poll_interval=0.02)
    async with taskdb.JobQueueServer(db, "streams", _streaming, poll_interval=0.02):
        handle = await client.submit({}, durable_stream=True)
        await handle.wait(timeout=30)
    async with httpx.AsyncClient(base_url=live, timeout=30) as http:
        async with http.stream("GET", f"/api/jobs/{handle.id}/stream") as response:
            messages = await sse_events(response, 4)
        events = [_data(m)["event"] for m in messages]
        assert [m["id"] for m in messages] == ["0", "1", "2", "3"]
        assert events[0] == {"type": "text-delta", "port": "log", "text": "hello "}
        assert base64.b64decode(events[1]["chunk"]) == b"\x00\xffbytes"
        assert events[3]["type"] == "finish"
        headers = {"Last-Event-ID": "1"}  # resumes after the offset it names
        async with http.stream("GET", f"/api/jobs/{handle.id}/stream", headers=headers) as response:
            again = await sse_events(response, 1)
        assert _data(again[0])["offset"] == 2
