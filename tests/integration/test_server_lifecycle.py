"""The server's lifecycle under what callers and plugins do to it: a cancelled
stop, a limiter that raises, a start that fails (both dialects)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import pytest

import taskdb
from taskdb import JobContext, JobQueueClient, JobQueueServer, JobStatus, NullLimiter, ServerState
from tests.helpers import eventually
from tests.integration.conftest import FAST


class _Flaky(NullLimiter):
    """Raises from ``bind`` or ``reserve`` the first ``times`` calls (a plugin's bug)."""

    def __init__(self, where: str, times: int = 1) -> None:
        self.where, self.left = where, times

    def _maybe_raise(self, where: str) -> None:
        if self.where == where and self.left:
            self.left -= 1
            raise RuntimeError(f"limiter bug in {where}")

    def bind(self, db: taskdb.Database, queue: str) -> None:
        self._maybe_raise("bind")

    async def reserve(self, want: int, now: datetime) -> int:
        self._maybe_raise("reserve")
        return await super().reserve(want, now)


async def test_a_cancelled_stop_still_drains_to_stopped(
    db: taskdb.Database, client: JobQueueClient
) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(value: Any, ctx: JobContext) -> Any:
        started.set()
        await release.wait()
        return value

    server = JobQueueServer(db, "q", slow, **FAST)
    await server.start()
    handle = await client.submit("x")
    await asyncio.wait_for(started.wait(), 10)
    stopping = asyncio.ensure_future(server.stop(timeout=10))
    await asyncio.sleep(0)
    stopping.cancel()  # e.g. Ctrl-C in asyncio.run, or a timeout around stop()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert server.state is ServerState.DRAINING
    release.set()  # the drain goes on without its caller: the job finishes
    await eventually(lambda: asyncio.sleep(0, server.state), lambda s: s is ServerState.STOPPED)
    assert await handle.wait(timeout=5) == "x"
    await server.stop()  # stopped: returns at once
    await server.start()  # and it can start again
    assert server.state is ServerState.RUNNING
    await server.stop()


async def test_a_limiter_that_raises_does_not_kill_the_claim_loop(
    db: taskdb.Database, client: JobQueueClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="taskdb")

    async def echo(value: Any, ctx: JobContext) -> Any:
        return value

    handle = await client.submit("after the bug")
    async with JobQueueServer(db, "q", echo, limiter=_Flaky("reserve"), **FAST):
        assert await handle.wait(timeout=10) == "after the bug"
    assert any(
        "claim failed unexpectedly" in r.getMessage() and r.exc_info for r in caplog.records
    ), caplog.text


async def test_a_start_that_fails_leaves_the_server_stopped(
    db: taskdb.Database, client: JobQueueClient
) -> None:
    async def echo(value: Any, ctx: JobContext) -> Any:
        return value

    server = JobQueueServer(db, "q", echo, limiter=_Flaky("bind"), **FAST)
    with pytest.raises(RuntimeError, match="limiter bug in bind"):
        await server.start()
    assert server.state is ServerState.STOPPED
    await server.start()  # the second bind works: not stuck in STARTING
    handle = await client.submit(1)
    assert await handle.wait(timeout=10) == 1
    await server.stop()
    assert (await handle.get()).status is JobStatus.COMPLETED
