"""Fixtures of the typed-task tests: the App of ``tasks_app`` bound to the test's
database, its servers in this process, and ``taskdb worker`` subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import taskdb
from tests.app import tasks_app
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parents[2]
FAST: dict[str, Any] = {
    "poll_interval": 0.02,
    "lease_seconds": 5.0,
    "abort_poll_interval": 0.05,
    "retry": taskdb.RetryPolicy(base_seconds=0.01, jitter=0),
}
"""Server options that keep in-process tests quick."""
THREAD_PREFIX = "task-thread"

Serve = Callable[..., Awaitable[list[taskdb.JobQueueServer]]]


@pytest.fixture
def app(db: taskdb.Database) -> taskdb.App:
    """``tasks_app.app`` on the test's database, with what its tasks saw forgotten."""
    tasks_app.app.bind(db)
    tasks_app.SEEN.clear()
    tasks_app.RAN.clear()
    return tasks_app.app


@pytest.fixture
async def serve(app: taskdb.App) -> AsyncIterator[Serve]:
    """``await serve(*queues, **options)`` starts the app's servers in this process
    (default: every queue of its tasks; ``FAST`` options), stopped at the end."""
    servers: list[taskdb.JobQueueServer] = []
    pool = ThreadPoolExecutor(8, thread_name_prefix=THREAD_PREFIX)

    async def start(*queues: str, **options: Any) -> list[taskdb.JobQueueServer]:
        made = app.servers(queues or None, threads=pool, **{**FAST, **options})
        for server in made:
            await server.start()
            servers.append(server)
        return made

    yield start
    for server in servers:
        await server.stop(timeout=1)
    pool.shutdown(wait=False, cancel_futures=True)


async def stored_jobs(db: taskdb.Database) -> list[taskdb.Job]:
    return await taskdb.Admin(db).list_jobs()


class WorkerProcess:
    """``python -m taskdb worker ARGS`` on the test's database (``TASKDB_URL``), its
    output in files."""

    def __init__(self, args: tuple[str, ...], db_url: str, out: Path) -> None:
        self.stderr_path = out / f"worker-{os.getpid()}-{id(self)}.stderr"
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taskdb", "worker", *args],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, "TASKDB_URL": db_url, "PYTHONPATH": str(ROOT)},
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    async def ready(self) -> None:
        """Wait for the worker's "serving" line (fails at once if it died)."""

        async def look() -> str:
            assert self.proc.poll() is None, f"the worker died:\n{self.stderr}"
            return self.stderr

        await eventually(look, lambda text: " serving " in text, timeout=30)

    async def terminate(self) -> int:
        """SIGTERM; the exit code once it stopped."""
        self.proc.send_signal(signal.SIGTERM)

        async def code() -> int | None:
            return self.proc.poll()

        returncode = await eventually(code, lambda rc: rc is not None, timeout=20)
        assert returncode is not None
        return returncode


@pytest.fixture
def worker_process(db_url: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``worker_process(*args)`` starts ``taskdb worker ARGS``; killed at teardown."""
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        started.append(WorkerProcess(args, db_url, tmp_path))
        return started[-1]

    yield start
    for worker in started:
        with contextlib.suppress(ProcessLookupError):
            worker.proc.kill()
        worker.proc.wait(timeout=10)
