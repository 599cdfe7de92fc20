"""Pausing a queue: every worker process stops claiming from it, submissions are still
taken, and resuming lets them run; `taskdb stats` says which queues are paused."""

from __future__ import annotations

import json
import signal
import textwrap
import time
from pathlib import Path

import taskdb
from taskdb import JobStatus
from tests.cli.helpers import invoke, reap, taskdb_process

HANDLER = """
async def echo(value, ctx):
    return value
"""


def test_a_paused_queue_is_claimed_by_no_worker_until_resumed(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "echoing.py").write_text(textwrap.dedent(HANDLER))
    workers = [
        taskdb_process("worker", "echoing:echo", "-q", "q", "-q", "other", "--poll", "0.05",
                       db_url=db_url, cwd=tmp_path)
        for _ in range(2)
    ]  # fmt: skip
    db = taskdb.connect(db_url)
    client = taskdb.SyncJobQueueClient(db, "q", poll_interval=0.02)
    try:
        for proc in workers:  # both serve before the queue is paused
            assert proc.stderr is not None
            while "serving" not in (line := proc.stderr.readline()):
                assert line, "the worker ended before serving"
        assert "paused" in invoke("queue", "pause", "q", "--db", db_url).output
        handles = client.submit_batch(list(range(10)))
        other = taskdb.SyncJobQueueClient(db, "other", poll_interval=0.02).submit("runs")
        assert other.wait(timeout=20) == "runs"  # the other queue is served meanwhile
        time.sleep(0.5)  # ten polls of each worker
        assert {h.get().status for h in handles} == {JobStatus.PENDING}
        stats = json.loads(invoke("stats", "--json", "--db", db_url).output)
        assert {q["queue"]: q["paused"] for q in stats["queues"]} == {"q": True, "other": False}
        invoke("queue", "resume", "q", "--db", db_url)
        assert [h.wait(timeout=20) for h in handles] == list(range(10))
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
    finally:
        for proc in workers:
            reap(proc)
        db.close()
