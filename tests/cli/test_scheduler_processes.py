"""Exactly one job per tick across processes (both dialects): three scheduler
processes over 120 one-second ticks (on a clock running 20x, shared by all three),
and a scheduler killed -9 inside a tick's transaction, then restarted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, text

import taskdb
from tests.cli.helpers import reap

SPEED = 20.0
BASE = datetime(2026, 6, 1, tzinfo=UTC)  # the fake clock's time when the run starts
SCRIPT = """
import asyncio, os, time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import taskdb

BASE = datetime.fromisoformat(os.environ["BASE"])
START = float(os.environ["START"])  # the real time at which the fake clock reads BASE
SPEED = float(os.environ["SPEED"])
END = BASE + timedelta(seconds=float(os.environ["UNTIL"]))


def clock():
    return BASE + timedelta(seconds=(time.time() - START) * SPEED)


async def sleep(seconds):
    await asyncio.sleep(seconds / SPEED)


app = taskdb.App(os.environ["TASKDB_URL"])


@app.periodic(every=timedelta(seconds=1), name="second")
@app.task(queue="ticks", name="second_task")
async def second(tick: datetime) -> None: ...


if os.environ.get("HANG"):  # hang inside the first tick's transaction, job inserted
    from taskdb.store.jobs import JobPlans

    submit_plan = JobPlans.submit_plan

    def hanging(self, *args, **kwargs):
        ids = yield from submit_plan(self, *args, **kwargs)
        Path(os.environ["HANG"]).write_text(str(ids))
        time.sleep(600)
        return ids

    JobPlans.submit_plan = hanging


async def main():
    # a generous grace: this test is about processes agreeing, not about lateness
    scheduler = app.scheduler(clock=clock, sleep=sleep, grace=timedelta(hours=1))
    while time.time() < START:
        await asyncio.sleep(0.005)
    run = asyncio.ensure_future(scheduler.run())
    while clock() < END and not run.done():
        await asyncio.sleep(0.005)
    scheduler.stop()
    await run
    # a last pass at END: on a loaded machine a pass may lag the fast clock (20x) by
    # more than the half tick before END, and the three stopped before the last ticks
    await scheduler.run_once(END)
    print(scheduler.enqueued)
    await app.aclose()


asyncio.run(main())
"""


def _register(db_url: str) -> None:
    """Store the schedule as the processes define it, created half a tick before BASE
    (so the first tick is BASE whichever process starts first)."""
    app = taskdb.App(db_url)
    app.periodic(every=timedelta(seconds=1), name="second")(
        app.task(queue="ticks", name="second_task")(_second)
    )

    async def register() -> None:
        await app.scheduler(clock=lambda: BASE - timedelta(seconds=0.5)).register()
        await app.aclose()

    import asyncio

    asyncio.run(register())


async def _second(tick: datetime) -> None: ...


def _start(
    script: Path, db_url: str, start: float, until: float, **env: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(script)],
        env={
            **os.environ,
            "TASKDB_URL": db_url,
            "PYTHONFAULTHANDLER": "1",
            "BASE": BASE.isoformat(),
            "START": repr(start),
            "SPEED": repr(SPEED),
            "UNTIL": repr(until),
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ticks(db_url: str) -> list[int]:
    """The tick of every job, as seconds after BASE."""
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT input FROM taskdb_jobs ORDER BY id")).scalars()
            inputs = [r if isinstance(r, dict) else json.loads(r) for r in rows]
    finally:
        engine.dispose()
    return [int((datetime.fromisoformat(i["tick"]) - BASE).total_seconds()) for i in inputs]


def _finish(proc: subprocess.Popen[str]) -> int:
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints where each thread is
        raise AssertionError(f"a scheduler hung:\n{proc.communicate()[1]}") from None
    assert proc.returncode == 0, err
    return int(out.strip().splitlines()[-1])


def test_three_schedulers_120_ticks_exactly_one_job_each(db_url: str, tmp_path: Path) -> None:
    script = tmp_path / "scheduler.py"
    script.write_text(textwrap.dedent(SCRIPT))
    _register(db_url)
    start = time.time() + 2.0  # every process imported and waiting by then
    procs = [_start(script, db_url, start, 119.5) for _ in range(3)]  # ticks 0..119
    try:
        counts = [_finish(p) for p in procs]
    finally:
        for p in procs:
            reap(p)
    ticks = _ticks(db_url)
    assert [t for t, n in Counter(ticks).items() if n > 1] == []  # no tick twice
    assert sorted(t for t in ticks if t < 120) == list(range(120))  # no gap
    assert len(ticks) == sum(counts) and max(ticks) <= 120
    assert sum(1 for c in counts if c) >= 2, counts  # the work really was shared


def test_a_scheduler_killed_mid_tick_leaves_nothing_and_the_tick_runs_once(
    db_url: str, tmp_path: Path
) -> None:
    script = tmp_path / "scheduler.py"
    script.write_text(textwrap.dedent(SCRIPT))
    _register(db_url)
    sentinel = tmp_path / "in-transaction"
    start = time.time() + 1.0
    victim = _start(script, db_url, start, 3600, HANG=str(sentinel))
    try:
        deadline = time.monotonic() + 60
        while not sentinel.exists():
            assert victim.poll() is None, victim.communicate()[1]
            assert time.monotonic() < deadline, "the victim never reached its first tick"
            time.sleep(0.01)
        victim.send_signal(signal.SIGKILL)  # inside the transaction: job row written
        assert victim.wait(timeout=10) == -signal.SIGKILL
    finally:
        reap(victim)
    assert _ticks(db_url) == []  # its transaction never committed
    # a restarted scheduler enqueues that tick (and the next ones) once each
    restarted = _start(script, db_url, start, (time.time() - start) * SPEED + 40)
    assert _finish(restarted) >= 5
    first = _ticks(db_url)
    assert first == list(range(len(first)))
    # and a scheduler restarted over the same ticks adds none of them again
    again = _start(script, db_url, start, first[-1] + 0.5)
    assert _finish(again) == 0
    assert _ticks(db_url) == first
