"""Periodic jobs from the command line (both dialects): `taskdb scheduler` and
`taskdb worker` enqueue ticks (and the worker runs them), `--no-scheduler` does not,
`taskdb schedules` lists them and `taskdb schedule pause|resume|trigger|delete`
acts on one; bad names and targets get one line and a non-zero exit."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import taskdb
from taskdb import JobStatus
from tests.cli.helpers import invoke, invoke_failing, reap, taskdb_process
from tests.helpers import FakeClock

APP = """
from datetime import datetime, timedelta

import taskdb

app = taskdb.App()


@app.periodic(every=timedelta(seconds=1), name="beat")
@app.task(queue="ticks", name="beat_task")
async def beat(tick: datetime) -> str:
    return tick.isoformat()


plain = taskdb.App()


@plain.task(name="nothing")
async def nothing() -> None: ...
"""


def _jobs(db_url: str) -> list[taskdb.Job]:
    async def read() -> list[taskdb.Job]:
        db = taskdb.connect(db_url)
        try:
            return await taskdb.Admin(db).list_jobs()
        finally:
            await db.aclose()

    return asyncio.run(read())


def _until_jobs(db_url: str, predicate: object, timeout: float = 30) -> list[taskdb.Job]:
    deadline = time.monotonic() + timeout
    while True:
        found = _jobs(db_url)
        if predicate(found):  # type: ignore[operator]
            return found
        assert time.monotonic() < deadline, f"jobs now: {found}"
        time.sleep(0.1)


def _stop(proc: object) -> str:
    proc.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
    assert proc.wait(timeout=20) == 0  # type: ignore[attr-defined]
    return str(proc.stderr.read())  # type: ignore[attr-defined]


def test_taskdb_scheduler_enqueues_ticks_and_stops_cleanly(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "periodic_app.py").write_text(textwrap.dedent(APP))
    proc = taskdb_process("scheduler", "periodic_app:app", db_url=db_url, cwd=tmp_path)
    try:
        found = _until_jobs(db_url, lambda jobs: len(jobs) >= 2)
        assert all(j.task == "beat_task" and j.status is JobStatus.PENDING for j in found)
        err = _stop(proc)
    finally:
        reap(proc)
    assert "scheduler of 1 schedule(s)" in err and "job(s) enqueued" in err
    ticks = sorted(datetime.fromisoformat(j.input["tick"]) for j in _jobs(db_url))
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(ticks))


def test_a_worker_runs_the_scheduler_and_its_jobs(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "periodic_app.py").write_text(textwrap.dedent(APP))
    proc = taskdb_process(
        "worker", "periodic_app:app", "--poll", "0.05", db_url=db_url, cwd=tmp_path
    )
    try:
        done = _until_jobs(db_url, lambda jobs: any(j.status is JobStatus.COMPLETED for j in jobs))
        job = next(j for j in done if j.status is JobStatus.COMPLETED)
        assert job.output == job.input["tick"]
        err = _stop(proc)
    finally:
        reap(proc)
    assert "and 1 schedule(s)" in err


def test_no_scheduler_means_no_tick(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "periodic_app.py").write_text(textwrap.dedent(APP))
    proc = taskdb_process(
        "worker", "periodic_app:app", "--no-scheduler", db_url=db_url, cwd=tmp_path
    )
    try:
        assert proc.stderr is not None
        while "serving" not in (line := proc.stderr.readline()):
            assert line, "the worker ended before serving"
        assert "schedule(s)" not in line
        time.sleep(1.5)  # more than a tick: a scheduler would have registered and enqueued
        out = invoke("schedules", "--json", "--db", db_url).output
        assert json.loads(out) == [] and _jobs(db_url) == []
        _stop(proc)
    finally:
        reap(proc)


def test_schedules_and_schedule_commands(db_url: str) -> None:
    clock = FakeClock(datetime(2026, 6, 1, tzinfo=UTC))

    async def setup() -> int:
        db = taskdb.connect(db_url)
        app = taskdb.App(db=db)

        @app.periodic(cron="*/5 * * * *", timezone="Europe/Paris", name="rollup")
        @app.task(queue="reports", name="rollup_task")
        async def rollup(tick: datetime) -> None: ...

        scheduler = app.scheduler(clock=clock)
        await scheduler.register()
        clock.advance(300)
        (job_id,) = await scheduler.run_once()
        await db.aclose()
        return job_id

    job_id = asyncio.run(setup())
    listed = json.loads(invoke("schedules", "--json", "--db", db_url).output)
    assert len(listed) == 1
    row = listed[0]
    assert {k: row[k] for k in ("name", "task", "queue", "cron", "timezone", "paused")} == {
        "name": "rollup",
        "task": "rollup_task",
        "queue": "reports",
        "cron": "*/5 * * * *",
        "timezone": "Europe/Paris",
        "paused": False,
    }
    assert (row["last_job_id"], row["last_job_status"], row["every"]) == (job_id, "PENDING", None)
    assert datetime.fromisoformat(row["last_tick"]) == datetime(2026, 6, 1, 0, 5, tzinfo=UTC)
    table = invoke("schedules", "--db", db_url).output
    # registered on a fake clock months ago, and no scheduler runs now: orphaned
    assert "rollup" in table and "PENDING" in table and "orphaned" in table
    assert (
        "schedule 'rollup' paused" in invoke("schedule", "pause", "rollup", "--db", db_url).output
    )
    assert "paused" in invoke("schedules", "--db", db_url).output
    assert json.loads(invoke("schedules", "--json", "--db", db_url).output)[0]["paused"] is True
    assert "resumed" in invoke("schedule", "resume", "rollup", "--db", db_url).output
    triggered = int(invoke("schedule", "trigger", "rollup", "--db", db_url).output)
    assert triggered != job_id and any(j.id == triggered for j in _jobs(db_url))
    assert "deleted" in invoke("schedule", "delete", "rollup", "--db", db_url).output
    assert "no schedules" in invoke("schedules", "--db", db_url).output


def test_bad_names_and_targets_get_one_line(db_url: str, tmp_path: Path) -> None:
    for action in ("pause", "resume", "trigger", "delete"):
        result = invoke_failing("schedule", action, "nope", "--db", db_url)
        assert result.exit_code == 1
        assert result.output.strip() == "Error: schedule 'nope' not found"
    result = invoke_failing("schedule", "pause", "no pe", "--db", db_url)
    assert result.exit_code == 1 and "schedule name" in result.output
    assert "Traceback" not in result.output
    (tmp_path / "periodic_app.py").write_text(textwrap.dedent(APP))
    for target, message in (
        ("periodic_app:plain", "has no schedule"),
        ("periodic_app:beat", "is not an App"),
    ):
        proc = taskdb_process("scheduler", target, db_url=db_url, cwd=tmp_path)
        try:
            _out, err = proc.communicate(timeout=30)
        finally:
            reap(proc)
        assert proc.returncode == 1 and message in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
