"""Worker subprocesses for the integration tests: start, observe, pause, kill.

Every process is ``tests/integration/worker_proc.py`` on one database; a
:class:`Procs` (the ``procs`` fixture) kills whatever is still running at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest
from sqlalchemy import make_url

from taskdb.store.schema import jobs as jobs_table

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "mp"


class Worker:
    """One ``worker_proc`` subprocess; stdout and stderr go to files (never a full pipe)."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        self.name = name
        self.proc = proc
        self.stdout_path = out
        self.stderr_path = err
        self.expect_exit = False  # set once the test ends it (or it ends by itself)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def worker_id(self) -> str:
        ready = self.payload("ready")
        assert ready is not None, f"{self.name} is not ready"
        return str(ready["worker_id"])

    def stdout(self) -> str:
        return self.stdout_path.read_text() if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def line(self, kind: str) -> str | None:
        """The rest of the first complete stdout line that starts with ``kind``."""
        for line in self.stdout().splitlines(keepends=True):
            if line.endswith("\n") and (line == f"{kind}\n" or line.startswith(f"{kind} ")):
                return line[len(kind) :].strip()
        return None

    def payload(self, kind: str) -> Any:
        rest = self.line(kind)
        return None if rest is None else json.loads(rest)

    def describe(self) -> str:
        return (
            f"--- {self.name} pid={self.pid} returncode={self.proc.poll()} ---\n"
            f"stdout: {self.stdout()[-1500:]}\nstderr tail:\n{self.stderr()[-3000:]}"
        )


class Procs:
    """Starts worker subprocesses on one database and always kills them at teardown."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.dir = tmp_path
        self.out = tmp_path / "out"
        self.out.mkdir()
        self.workers: list[Worker] = []
        self._files: list[IO[bytes]] = []

    def start(
        self,
        name: str,
        *,
        mode: str = "echo",
        workers: int = 1,
        lease: float = 5.0,
        poll: float = 0.05,
        extra: tuple[str, ...] = (),
    ) -> Worker:
        args = [
            *("--mode", mode, "--workers", str(workers)),
            *("--lease", str(lease), "--poll", str(poll)),
            *extra,
        ]
        return self._spawn(name, args)

    def start_waiter(
        self, name: str, job_id: int, timeout: float = 20.0, poll: float = 0.05
    ) -> Worker:
        worker = self._spawn(
            name, ["--wait-for", str(job_id), "--wait-timeout", str(timeout), "--poll", str(poll)]
        )
        worker.expect_exit = True
        return worker

    def start_follower(self, name: str, *, poll: float = 0.05, after: str | None = None) -> Worker:
        """A subprocess printing every change of the queue (``--follow``)."""
        extra = [] if after is None else ["--after", after]
        return self._spawn(name, ["--follow", "--poll", str(poll), *extra])

    def _spawn(self, name: str, args: list[str]) -> Worker:
        out, err = self.dir / f"{name}.stdout", self.dir / f"{name}.stderr"
        stdout, stderr = out.open("wb"), err.open("wb")
        self._files += [stdout, stderr]
        cmd = [sys.executable, "-m", "tests.integration.worker_proc"]
        cmd += ["--url", self.url, "--queue", QUEUE, "--out", str(self.out), *args]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=stdout, stderr=stderr)
        worker = Worker(name, proc, out, err)
        self.workers.append(worker)
        return worker

    def diagnostics(self) -> str:
        return "\n".join(w.describe() for w in self.workers)

    async def wait_until(
        self,
        check: Callable[[], Any],
        what: str,
        *,
        timeout: float = 15.0,
        interval: float = 0.02,
    ) -> Any:
        """Poll ``check`` (sync or async) until it returns something truthy; fail fast
        if a worker that should be alive died."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            dead = [w.name for w in self.workers if not w.expect_exit and w.proc.poll() is not None]
            if dead:
                raise AssertionError(
                    f"workers {dead} died while waiting for {what}\n{self.diagnostics()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}\n{self.diagnostics()}"
                )
            await asyncio.sleep(interval)

    async def ready(self, *workers: Worker) -> None:
        for w in workers:
            await self.wait_until(partial(w.payload, "ready"), f"{w.name} ready", timeout=30)

    async def exited(self, *workers: Worker, timeout: float = 15.0) -> None:
        for w in workers:
            w.expect_exit = True
        await self.wait_until(
            lambda: all(w.proc.poll() is not None for w in workers),
            f"exit of {[w.name for w in workers]}",
            timeout=timeout,
        )

    async def terminate(self, *workers: Worker) -> list[dict[str, Any]]:
        """SIGTERM, expect a graceful exit 0 and a stats line; returns the stats."""
        for w in workers:
            w.expect_exit = True
            os.kill(w.pid, signal.SIGTERM)
        await self.exited(*workers)
        for w in workers:
            assert w.proc.returncode == 0, f"{w.name} did not exit 0\n{w.describe()}"
        stats = [w.payload("stats") for w in workers]
        assert all(s is not None for s in stats), self.diagnostics()
        return stats

    async def pause_safely(self, worker: Worker, job_id: int) -> None:
        """SIGSTOP ``worker`` at a moment it holds no write lock others would block on.

        A process frozen inside a write transaction (SQLite's write lock, a
        PostgreSQL row lock on the job) would block every other worker: that is
        the nature of SIGSTOP, not something taskdb can avoid, so retry.
        """
        for _ in range(20):
            os.kill(worker.pid, signal.SIGSTOP)
            await self.wait_until(
                lambda: _proc_state(worker.pid) == "T", f"{worker.name} stopped", timeout=5
            )
            if await asyncio.to_thread(_writable, self.url, job_id):
                return
            os.kill(worker.pid, signal.SIGCONT)
            await asyncio.sleep(0.05)
        raise AssertionError(f"could not stop {worker.name} outside a write transaction")

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_all()

    def kill_all(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=10)
        for f in self._files:
            f.close()


def _proc_state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat")
    if not stat.parent.parent.exists():
        pytest.skip("needs /proc to observe SIGSTOP")
    # "pid (comm) S ...": the state follows the last ')'.
    return stat.read_text().rsplit(")", 1)[1].split()[0]


def _writable(url: str, job_id: int) -> bool:
    """Whether another writer could take the locks a worker needs for ``job_id`` now."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(parsed.database), timeout=0.3, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            conn.close()
    with psycopg.connect(url, connect_timeout=5) as pg:
        try:
            pg.execute("SET LOCAL lock_timeout = '300ms'")
            pg.execute(
                f"SELECT id FROM {jobs_table.name} WHERE id = %s FOR UPDATE",
                (job_id,),
            )
            return True
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            pg.rollback()
