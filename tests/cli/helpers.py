"""Helpers of the CLI tests: invoke a command, run a job to its end, read a child's lines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

import taskdb
from taskdb.cli import cli

ROOT = Path(__file__).resolve().parents[2]
Handler = Callable[[Any, taskdb.JobContext], Awaitable[Any]]


def invoke(*args: str) -> Result:
    """Run ``taskdb ARGS`` in this process (stdout and stderr both in ``output``)."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def invoke_failing(*args: str) -> Result:
    """Like :func:`invoke`, for a command expected to fail (exceptions are caught)."""
    return CliRunner().invoke(cli, list(args))


def run_job(
    db_url: str, handler: Handler, input: Any = None, *, queue: str = "cli", **submit: Any
) -> int:
    """Submit one job, serve it in this process until it ended; returns its id."""

    async def main() -> int:
        db = taskdb.connect(db_url)
        try:
            client = taskdb.JobQueueClient(db, queue, poll_interval=0.02)
            async with taskdb.JobQueueServer(db, queue, handler, poll_interval=0.02):
                handle = await client.submit({} if input is None else input, **submit)
                with contextlib.suppress(taskdb.JobError):  # the caller looks at the row
                    await handle.wait(timeout=60)
            return handle.id
        finally:
            await db.aclose()

    return asyncio.run(main())


def taskdb_process(*args: str, db_url: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    """``taskdb ARGS`` as a child process (the URL in ``TASKDB_URL``), stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "taskdb", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TASKDB_URL": db_url, "PYTHONPATH": str(ROOT)},
    )


def reap(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` if it still runs, wait for it, and close its stderr (its stdout
    belongs to the :class:`Lines` reading it)."""
    proc.kill()
    proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


class Lines:
    """The stdout lines of a child process, read by a thread as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        with stream:  # closed here at EOF: this thread owns it
            for line in stream:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 20.0) -> str:
        """The first line from now on that satisfies ``predicate`` (fails at the deadline)."""
        give_up = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, give_up - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no such line within {timeout}s; saw {self.seen}") from None
            if line is None:
                raise AssertionError(f"the process ended; it printed {self.seen}")
            self.seen.append(line)
            if predicate(line):
                return line
