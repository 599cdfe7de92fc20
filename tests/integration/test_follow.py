"""Durable streams: follow() from any process, during and after the run (both dialects)."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

import taskdb
from taskdb import (
    ConfigurationError,
    JobContext,
    JobNotFound,
    JobQueueClient,
    RetryPolicy,
)
from taskdb.store.schema import job_streams
from taskdb.streams import BinaryDelta, Finish, Phase, StreamError, StreamEvent, TextDelta
from tests.conftest import POOLED, pooled_db_url

MIB = 1024 * 1024


@pytest.fixture(params=POOLED)
def db_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Also through PgBouncer in transaction mode (tests/conftest.py)."""
    return pooled_db_url(request, monkeypatch)


async def collect(
    client: JobQueueClient, job_id: int, from_offset: int = 0
) -> list[tuple[int, StreamEvent]]:
    return [pair async for pair in client.follow(job_id, from_offset)]


async def test_a_follower_sees_every_event_live_then_the_finish(
    client: JobQueueClient, serve: Callable[..., Any]
) -> None:
    gate = asyncio.Event()

    async def handler(input: Any, ctx: JobContext) -> Any:
        await ctx.emit_stream_event(Phase("writing", 0.0))
        for i in range(500):
            await ctx.emit_stream_event(TextDelta("text", f"{i},"))
            if i == 10:
                await gate.wait()  # the follower has started before we go on
        return {"count": 500}

    await serve(handler)
    handle = await client.submit({}, durable_stream=True)
    seen: list[tuple[int, StreamEvent]] = []
    async for offset, event in client.follow(handle.id):
        seen.append((offset, event))
        if offset == 5:
            gate.set()
    assert [o for o, _ in seen] == list(range(len(seen)))
    texts = [e.text for _, e in seen if isinstance(e, TextDelta)]
    assert texts == [f"{i}," for i in range(500)]
    assert seen[-1][1] == Finish({"output": {"count": 500}})
    # after the run: the same stream, and a reconnect from an offset gets the rest
    assert await collect(client, handle.id) == seen
    assert await collect(client, handle.id, 200) == seen[200:]


async def test_a_retried_job_restarts_its_stream_with_a_phase_and_a_failure_ends_it(
    client: JobQueueClient, serve: Callable[..., Any]
) -> None:
    async def handler(input: Any, ctx: JobContext) -> Any:
        ctx.emit_stream_event(TextDelta("text", f"try {ctx.job.attempts}"))
        raise RuntimeError(f"boom {ctx.job.attempts}")

    await serve(handler, retry=RetryPolicy(base_seconds=0.0, jitter=0.0))
    handle = await client.submit({}, durable_stream=True, max_retries=1)
    with pytest.raises(taskdb.JobError):
        await handle.wait(timeout=30)
    events = [e for _, e in await collect(client, handle.id)]
    assert events[:3] == [
        TextDelta("text", "try 1"),
        Phase("attempt 2", None),
        TextDelta("text", "try 2"),
    ]
    assert isinstance(events[3], StreamError) and "boom 2" in str(events[3].error)
    assert len(events) == 4


async def test_follow_errors(
    db: taskdb.Database, client: JobQueueClient, serve: Callable[..., Any]
) -> None:
    with pytest.raises(JobNotFound):
        await collect(client, 424242)
    plain = await client.submit({})
    with pytest.raises(ConfigurationError, match="durable_stream"):
        await collect(client, plain.id)
    with pytest.raises(ConfigurationError, match="from_offset"):
        await collect(client, plain.id, -1)


async def test_a_job_that_ended_without_closing_its_stream_is_closed_from_its_row(
    db: taskdb.Database, client: JobQueueClient
) -> None:
    handle = await client.submit({}, durable_stream=True)
    await client.abort(handle.id)  # never ran: no stream rows at all
    events = await collect(client, handle.id)
    assert len(events) == 1 and isinstance(events[0][1], StreamError)
    assert isinstance(events[0][1].error, taskdb.AbortedJobError)


async def test_purging_the_job_drops_its_stream(
    db: taskdb.Database, client: JobQueueClient, serve: Callable[..., Any]
) -> None:
    async def handler(input: Any, ctx: JobContext) -> Any:
        ctx.emit_stream_event(TextDelta("text", "x"))
        return {}

    await serve(handler)
    handle = await client.submit({}, durable_stream=True)
    await handle.wait(timeout=30)
    assert len(await collect(client, handle.id)) == 2
    with pytest.raises(ConfigurationError, match="only ended jobs"):
        await client.purge(timedelta(0), statuses=["PENDING"])
    with pytest.raises(ConfigurationError, match="not a valid JobStatus"):
        await client.purge(timedelta(0), statuses=["BOGUS"])
    assert await client.purge(timedelta(days=1)) == 0  # too recent
    assert await client.purge(timedelta(0)) == 1
    async with db.transaction(write=False) as conn:
        assert await conn.scalar(select(func.count()).select_from(job_streams)) == 0


FOLLOWER = """
import asyncio, hashlib, sys, taskdb
from taskdb.streams import BinaryDelta, TextDelta
async def main():
    db = taskdb.connect(sys.argv[1])
    client = taskdb.JobQueueClient(db, "q", poll_interval=0.02)
    digest, texts, last = hashlib.sha256(), 0, None
    async for offset, event in client.follow(int(sys.argv[2]), int(sys.argv[3])):
        if last is None:
            print("first", flush=True)
        if isinstance(event, BinaryDelta):
            digest.update(event.chunk)
        elif isinstance(event, TextDelta):
            texts += 1
        last = event.type
    print(digest.hexdigest(), texts, last)
    await db.aclose()
asyncio.run(main())
"""


def run_follower(url: str, job_id: int, from_offset: int = 0) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", FOLLOWER, url, str(job_id), str(from_offset)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1].split()


async def test_a_follower_in_another_process_gets_the_exact_bytes(
    db_url: str, client: JobQueueClient, serve: Callable[..., Any]
) -> None:
    digest = hashlib.sha256()
    chunks = [bytes([i]) * (256 * 1024 + i) for i in range(24)]  # ~6 MiB, uneven chunks
    for chunk in chunks:
        digest.update(chunk)
    gate = asyncio.Event()

    async def handler(input: Any, ctx: JobContext) -> Any:
        for i, chunk in enumerate(chunks):
            await ctx.emit_stream_event(BinaryDelta("video", chunk))
            await ctx.emit_stream_event(TextDelta("log", f"chunk {i}"))
            if i == 3:
                await gate.wait()
        return {"ok": True}

    await serve(handler)
    handle = await client.submit({}, durable_stream=True)
    live = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FOLLOWER,
        db_url,
        str(handle.id),
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    assert live.stdout is not None
    # the follower has an event while the handler waits at chunk 3: it follows live
    assert await asyncio.wait_for(live.stdout.readline(), 60) == b"first\n"
    gate.set()
    out, _ = await asyncio.wait_for(live.communicate(), 60)
    assert live.returncode == 0
    assert out.split() == [digest.hexdigest().encode(), b"24", b"finish"]
    # after the run, and reconnecting midway: offset 10 is chunk 5's binary delta
    assert run_follower(db_url, handle.id) == [digest.hexdigest(), "24", "finish"]
    rest = hashlib.sha256(b"".join(chunks[5:])).hexdigest()
    assert run_follower(db_url, handle.id, 10) == [rest, "19", "finish"]


RSS_FOLLOWER = """
import asyncio, hashlib, resource, sys, taskdb
from taskdb.streams import BinaryDelta
async def main():
    db = taskdb.connect(sys.argv[1])
    client = taskdb.JobQueueClient(db, "q", poll_interval=0.02)
    await client.get(int(sys.argv[2]))  # connected and warmed up before the baseline
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    digest = hashlib.sha256()
    async for _offset, event in client.follow(int(sys.argv[2])):
        if isinstance(event, BinaryDelta):
            digest.update(event.chunk)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(digest.hexdigest(), grown // 1024)
    await db.aclose()
asyncio.run(main())
"""


async def test_following_a_large_binary_stream_keeps_memory_bounded(
    db_url: str, client: JobQueueClient, serve: Callable[..., Any]
) -> None:
    chunk = bytes(range(256)) * 4096  # 1 MiB
    total = 96

    async def handler(input: Any, ctx: JobContext) -> Any:
        for _ in range(total):
            await ctx.emit_stream_event(BinaryDelta("video", chunk))
        return {}

    await serve(handler)
    handle = await client.submit({}, durable_stream=True)
    await handle.wait(timeout=120)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", RSS_FOLLOWER, db_url, str(handle.id)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    digest, grown_mib = done.stdout.split()
    assert digest == hashlib.sha256(chunk * total).hexdigest()
    assert int(grown_mib) < 48, f"the follower grew by {grown_mib} MiB for a 96 MiB stream"


async def test_the_stream_ends_as_the_row_did_when_the_output_is_refused(
    client: JobQueueClient, serve: Callable[..., Any]
) -> None:
    async def handler(input: Any, ctx: JobContext) -> Any:
        ctx.emit_stream_event(TextDelta("text", "done, but"))
        return {"not json": {1, 2}}  # the database refuses it: the job fails

    await serve(handler)
    handle = await client.submit({}, durable_stream=True, max_retries=0)
    with pytest.raises(taskdb.JobError):
        await handle.wait(timeout=30)
    events = [e for _, e in await collect(client, handle.id)]
    assert events[0] == TextDelta("text", "done, but")
    assert isinstance(events[-1], StreamError) and len(events) == 2
    assert (await client.get(handle.id)).error_code == "InvalidJobInput"


async def test_an_abort_that_wins_over_a_late_completion_ends_the_stream_failed(
    client: JobQueueClient, serve: Callable[..., Any]
) -> None:
    started = asyncio.Event()

    async def handler(input: Any, ctx: JobContext) -> Any:
        ctx.emit_stream_event(TextDelta("text", "working"))
        started.set()
        await ctx.abort_signal.wait()
        return {"ok": True}  # completes anyway, inside the grace period

    await serve(handler, abort_grace_seconds=30)
    handle = await client.submit({}, durable_stream=True)
    await asyncio.wait_for(started.wait(), 30)
    await client.abort(handle.id)
    with pytest.raises(taskdb.AbortedJobError):
        await handle.wait(timeout=30)
    events = [e for _, e in await collect(client, handle.id)]
    assert events[0] == TextDelta("text", "working")
    assert isinstance(events[-1], StreamError)
    assert isinstance(events[-1].error, taskdb.AbortedJobError)
