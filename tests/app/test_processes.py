"""Typed tasks and handlers served by real ``taskdb worker`` processes."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable

import taskdb
from taskdb import JobQueueClient
from tests.app.conftest import WorkerProcess
from tests.app.tasks_app import SHARED, add, digest, shout

FAST = ("--poll", "0.05", "--lease", "5")


async def test_two_worker_processes_share_a_queue_of_three_tasks(
    app: taskdb.App, worker_process: Callable[..., WorkerProcess]
) -> None:
    workers = [
        worker_process("tests.app.tasks_app:app", "-q", SHARED, "-c", "2", *FAST) for _ in range(2)
    ]
    for worker in workers:
        await worker.ready()
    n = 14
    handles = [
        *await add.defer_many_async([{"a": i, "b": 100} for i in range(n)]),
        *await shout.defer_many_async([{"text": f"job {i}"} for i in range(n)]),
        *await digest.defer_many_async([{"data": bytes([i]) * i} for i in range(n)]),
    ]
    expected = [
        *(i + 100 for i in range(n)),
        *(f"JOB {i}" for i in range(n)),
        *(hashlib.sha256(bytes([i]) * i).hexdigest() for i in range(n)),
    ]
    done = await asyncio.gather(*(h.result(timeout=30) for h in handles))
    assert [d.value for d in done] == expected
    assert {d.pid for d in done} == {w.proc.pid for w in workers}  # both took part
    for worker in workers:
        assert await worker.terminate() == 0, worker.stderr
    completed = [re.search(r"stopped: (\d+) completed", w.stderr) for w in workers]
    assert sum(int(m.group(1)) for m in completed if m) == 3 * n


async def test_a_handler_worker_serves_every_queue_named(
    db: taskdb.Database, worker_process: Callable[..., WorkerProcess]
) -> None:
    worker = worker_process("tests.app.tasks_app:which_queue", "-q", "qa", "-q", "qb", *FAST)
    a = await JobQueueClient(db, "qa").submit({"n": 1})
    b = await JobQueueClient(db, "qb").submit({"n": 2})
    assert await a.wait(timeout=30) == {"queue": "qa", "value": {"n": 1}}
    assert await b.wait(timeout=30) == {"queue": "qb", "value": {"n": 2}}
    assert await worker.terminate() == 0, worker.stderr
