"""The synchronous client (web apps, scripts, threads) on both dialects: the same
store logic as the async client, run on the database's sync engine."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import taskdb
from taskdb import (
    AbortedJobError,
    JobContext,
    JobNotFound,
    JobStatus,
    SyncJobQueueClient,
    TaskdbError,
    WaitTimeout,
)
from tests.store.test_reconnect import drop_connections


async def _double(value: Any, ctx: JobContext) -> Any:
    return {"double": value["n"] * 2}


def _in_thread(work: Any) -> Any:
    """Run blocking ``work`` in a thread (the test's event loop must not block)."""
    return asyncio.to_thread(work)


async def test_sync_submits_from_16_threads_are_all_run(db: taskdb.Database, serve: Any) -> None:
    client = SyncJobQueueClient(db, "q", poll_interval=0.02)
    handles: list[Any] = []
    lock = threading.Lock()

    def submit_many(thread: int) -> None:
        for i in range(10):
            handle = client.submit({"n": thread * 100 + i})
            with lock:
                handles.append((thread * 100 + i, handle))

    def all_threads() -> None:
        threads = [threading.Thread(target=submit_many, args=(t,)) for t in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    await _in_thread(all_threads)
    assert len({h.id for _, h in handles}) == 160
    await serve(_double, workers=8)

    def wait_all() -> list[tuple[int, Any]]:
        return [(n, h.wait(timeout=30)) for n, h in handles]

    assert all(out == {"double": n * 2} for n, out in await _in_thread(wait_all))


async def test_sync_reads_aborts_and_dedupes(db: taskdb.Database) -> None:
    client = SyncJobQueueClient(db, "q", poll_interval=0.02)

    def body() -> None:
        first = client.submit({"x": 1}, fingerprint="key", priority=3)
        assert client.submit({"x": 2}, fingerprint="key").id == first.id
        job = first.get()
        assert (job.status, job.input, job.priority) == (JobStatus.PENDING, {"x": 1}, 3)
        with pytest.raises(WaitTimeout):
            first.wait(timeout=0.05)
        first.abort()
        with pytest.raises(AbortedJobError):
            first.wait(timeout=1)
        batch = client.submit_batch([{"n": 1}, {"n": 2}], job_run_id="run")
        assert client.abort_run("run") == 2 and batch[1].get().status is JobStatus.FAILED
        with pytest.raises(JobNotFound):
            client.get(10**9)
        assert client.output_for_input({"x": 1}) is None

    await _in_thread(body)


async def test_the_sync_client_refuses_to_block_an_event_loop(db: taskdb.Database) -> None:
    client = SyncJobQueueClient(db, "q")
    with pytest.raises(TaskdbError, match=r"event loop: use JobQueueClient\.submit"):
        client.submit({})
    with pytest.raises(TaskdbError, match=r"use await JobQueueClient\.wait"):
        client.wait(1)


async def test_the_sync_client_rides_out_a_dropped_connection(db: taskdb.Database) -> None:
    client = SyncJobQueueClient(db, "q")
    first = await _in_thread(lambda: client.submit({"n": 1}))
    await drop_connections(db)
    second = await _in_thread(lambda: client.submit({"n": 2}))
    assert second.id > first.id
    assert (await _in_thread(second.get)).input == {"n": 2}


@pytest.mark.parametrize("job_id", [0, -1, 2**63, 10**20])
async def test_an_id_no_job_can_have_is_not_found_by_either_client(
    db: taskdb.Database, job_id: int
) -> None:
    sync = SyncJobQueueClient(db, "q")
    client = taskdb.JobQueueClient(db, "q")
    for call in (lambda: client.get(job_id), lambda: client.abort(job_id)):
        with pytest.raises(JobNotFound):
            await call()
    for work in (lambda: sync.get(job_id), lambda: sync.abort(job_id)):
        with pytest.raises(JobNotFound):
            await _in_thread(work)
