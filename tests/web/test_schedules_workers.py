"""The schedules and workers pages and their API, on both dialects: schedules as
``taskdb schedules --json`` prints them, pause/resume/trigger; workers from the
registry their heartbeats keep, gone on a clean stop, stale when they die."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta

import httpx

import taskdb
from tests.cli.helpers import invoke
from tests.helpers import eventually


async def test_schedules_page_and_api_pause_resume_and_trigger(
    db: taskdb.Database, db_url: str, client: httpx.AsyncClient
) -> None:
    app = taskdb.App(db=db)

    @app.periodic(every=timedelta(seconds=30), name="rollup")
    @app.task(queue="reports", name="rollup_task")
    async def rollup(tick: datetime) -> None: ...

    await app.scheduler().register()
    listed = (await client.get("/api/schedules")).json()
    cli = await asyncio.to_thread(invoke, "schedules", "--json", "--db", db_url)
    assert listed == json.loads(cli.output)
    assert [(s["name"], s["every"], s["paused"]) for s in listed] == [("rollup", 30.0, False)]

    page = await client.get("/schedules")
    assert 'data-schedule="rollup"' in page.text and "/schedules/rollup/pause" in page.text
    assert (await client.post("/schedules/rollup/pause")).status_code == 303
    assert (await client.get("/api/schedules")).json()[0]["paused"] is True
    assert (await client.post("/api/schedules/rollup/resume")).json()["paused"] is False
    triggered = (await client.post("/api/schedules/rollup/trigger")).json()["job_id"]
    assert (await taskdb.Admin(db).get_job(triggered)).task == "rollup_task"
    from_page = await client.post("/schedules/rollup/trigger")
    assert from_page.headers["location"].startswith("/jobs/")

    assert (await client.post("/api/schedules/nope/pause")).status_code == 404
    assert (await client.post("/api/schedules/bad%20name/trigger")).status_code == 400
    assert (await client.post("/schedules/nope/trigger")).status_code == 404
    # the dashboard offers no delete, nor any other word (the Admin has delete)
    for path in ("/api/schedules/rollup/delete", "/schedules/rollup/delete", "/schedules/rollup/x"):
        assert (await client.post(path)).status_code == 404, path
    assert [s["name"] for s in (await client.get("/api/schedules")).json()] == ["rollup"]


async def _slow(value: object, ctx: taskdb.JobContext) -> None:
    await asyncio.sleep(60)


async def test_workers_show_while_they_run_and_go_when_they_stop(
    db: taskdb.Database, db_url: str, client: httpx.AsyncClient
) -> None:
    admin = taskdb.Admin(db)
    server = taskdb.JobQueueServer(db, "busy", _slow, workers=3, poll_interval=0.02)
    await server.start()
    try:
        await taskdb.JobQueueClient(db, "busy").submit({})
        found = await eventually(
            lambda: client.get("/api/workers"), lambda r: r.json() and r.json()[0]["running"] == 1
        )
        (row,) = found.json()
        assert (row["worker_id"], row["queue"], row["slots"]) == (server.worker_id, "busy", 3)
        assert row["stale"] is False
        cli = await asyncio.to_thread(invoke, "workers", "--json", "--db", db_url)
        assert [w["worker_id"] for w in json.loads(cli.output)] == [server.worker_id]
        assert server.worker_id in (await client.get("/workers")).text
    finally:
        await server.stop(timeout=0)
    assert await admin.workers() == []  # a clean stop removes its row


async def test_a_worker_that_stopped_beating_shows_as_stale(db: taskdb.Database) -> None:
    from taskdb.store.workers import WorkerStore  # the registry a killed worker leaves

    long_ago = datetime.now().astimezone() - timedelta(minutes=5)
    await WorkerStore(db).beat("dead:1", "q", 2, 30.0, long_ago)
    await WorkerStore(db).beat("alive:1", "q", 2, 30.0, datetime.now().astimezone())
    found = {w.worker_id: w.stale for w in await taskdb.Admin(db).workers()}
    assert found == {"dead:1": True, "alive:1": False}
