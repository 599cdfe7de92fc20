"""Stopping a worker: the first Ctrl-C lets running jobs finish within --stop-timeout
(the worker lives on until they did); a second one gives them back at once (their
attempt not counted) and the worker exits."""

from __future__ import annotations

import signal
import textwrap
import time
from pathlib import Path

import taskdb
from taskdb import JobStatus
from tests.cli.helpers import reap, taskdb_process

SLOW = """
import asyncio

async def slow(value, ctx):
    await ctx.update_progress(1, "started")
    await asyncio.sleep(60)
    return "finished"
"""


def _job(db_url: str) -> taskdb.SyncJobQueueClient:
    return taskdb.SyncJobQueueClient(taskdb.connect(db_url), "q", poll_interval=0.02)


def _until(predicate: object, timeout: float = 20.0) -> None:
    give_up = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < give_up, "condition not reached in time"
        time.sleep(0.02)


def test_a_second_ctrl_c_gives_running_jobs_back_at_once(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(textwrap.dedent(SLOW))
    client = _job(db_url)
    handle = client.submit({}, max_retries=0)
    proc = taskdb_process(
        "worker", "slow:slow", "-q", "q", "--poll", "0.05", "--stop-timeout", "60",
        db_url=db_url, cwd=tmp_path,
    )  # fmt: skip
    try:
        _until(lambda: handle.get().progress == 1)  # the handler runs
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        line = ""
        while "stopping" not in line:
            line = proc.stderr.readline()
            assert line, "the worker ended before it said it was stopping"
        assert handle.get().status is JobStatus.PROCESSING  # it waits for the job
        time.sleep(0.3)  # a worker giving the job back on the first signal has exited by now
        assert proc.poll() is None, "the first Ctrl-C ended the worker"
        assert handle.get().status is JobStatus.PROCESSING
        hurried = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        assert time.monotonic() - hurried < 2.0
        assert proc.returncode == 0
    finally:
        reap(proc)
    job = handle.get()
    assert (job.status, job.attempts, job.worker_id) == (JobStatus.PENDING, 0, None)
    client.db.close()


GATED = """
import asyncio, pathlib

async def gated(value, ctx):
    await ctx.update_progress(1, "started")
    gate = pathlib.Path(value["gate"])
    while not gate.exists():
        await asyncio.sleep(0.02)
    return "finished"
"""


def test_one_ctrl_c_lets_the_running_job_finish(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "gated.py").write_text(textwrap.dedent(GATED))
    gate = tmp_path / "gate"
    client = _job(db_url)
    handle = client.submit({"gate": str(gate)}, max_retries=0)
    proc = taskdb_process(
        "worker", "gated:gated", "-q", "q", "--poll", "0.05", "--stop-timeout", "60",
        db_url=db_url, cwd=tmp_path,
    )  # fmt: skip
    try:
        _until(lambda: handle.get().progress == 1)  # the handler runs
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        line = ""
        while "stopping" not in line:
            line = proc.stderr.readline()
            assert line, "the worker ended before it said it was stopping"
        assert proc.poll() is None and handle.get().status is JobStatus.PROCESSING
        gate.touch()  # only now may the handler return
        assert proc.wait(timeout=20) == 0
        assert "stopped: 1 completed" in proc.stderr.read()
    finally:
        reap(proc)
    job = handle.get()
    assert (job.status, job.attempts, job.output) == (JobStatus.COMPLETED, 1, "finished")
    client.db.close()


def test_ctrl_c_while_the_handler_module_imports_is_one_line(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "interrupted.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n"
        "async def handler(value, ctx):\n    return value\n"
    )
    proc = taskdb_process("worker", "interrupted:handler", "-q", "q", db_url=db_url, cwd=tmp_path)
    try:
        _out, err = proc.communicate(timeout=20)
    finally:
        reap(proc)
    assert proc.returncode == 1
    assert err.strip() == "Aborted!"
