"""A queue-wide concurrency limit holds across worker processes: three workers with
four slots each and `--concurrency-limit 2 --scope queue` never run more than two
jobs of the queue at once (sampled from the database), and every job runs."""

from __future__ import annotations

import signal
import textwrap
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine, text

import taskdb
from tests.cli.helpers import reap, taskdb_process

HANDLER = """
import asyncio

async def work(value, ctx):
    await asyncio.sleep(0.1)
    return value
"""


def _sampler(db_url: str, stop: threading.Event, seen: list[int]) -> None:
    """Count the queue's running jobs every few milliseconds until ``stop``."""
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    query = text("SELECT count(*) FROM taskdb_jobs WHERE status IN ('PROCESSING', 'ABORTING')")
    try:
        with engine.connect() as conn:
            while not stop.is_set():
                seen.append(int(conn.execute(query).scalar_one()))
                conn.commit()  # a fresh snapshot for the next sample
                time.sleep(0.005)
    finally:
        engine.dispose()


def test_three_workers_never_run_more_than_the_queue_limit(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "limited.py").write_text(textwrap.dedent(HANDLER))
    db = taskdb.connect(db_url)
    client = taskdb.SyncJobQueueClient(db, "q", poll_interval=0.02)
    handles = client.submit_batch(list(range(12)))
    seen: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sampler, args=(db_url, stop, seen))
    sampler.start()
    workers = [
        taskdb_process(
            "worker", "limited:work", "-q", "q", "-c", "4", "--poll", "0.02",
            "--concurrency-limit", "2", "--scope", "queue", db_url=db_url, cwd=tmp_path,
        )
        for _ in range(3)
    ]  # fmt: skip
    try:
        assert [h.wait(timeout=60) for h in handles] == list(range(12))  # none starved
        stop.set()
        sampler.join()
        assert max(seen) == 2, f"running jobs sampled: {sorted(set(seen))}"
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
    finally:
        stop.set()
        for proc in workers:
            reap(proc)
        db.close()
