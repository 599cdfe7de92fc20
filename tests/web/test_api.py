"""The JSON API: the CLI's ``--json`` shapes, filters, keyset pagination, actions and
errors, on both dialects (httpx on the ASGI app, in process)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import pytest

import taskdb
from taskdb.web import create_app
from tests.cli.helpers import invoke
from tests.web.conftest import client_of


async def _fail(value: Any, ctx: taskdb.JobContext) -> Any:
    raise ValueError("broken <b>input</b>")


async def _blob(value: Any, ctx: taskdb.JobContext) -> Any:
    return {"image": b"\x89PNG" + b"x" * (2 << 20)}


async def run_to_end(db: taskdb.Database, queue: str, handler: Any, value: Any = None) -> int:
    client = taskdb.JobQueueClient(db, queue, poll_interval=0.02)
    async with taskdb.JobQueueServer(db, queue, handler, poll_interval=0.02, max_retries=0):
        handle = await client.submit({} if value is None else value, max_retries=0)
        with contextlib.suppress(taskdb.JobError):  # the test looks at the row
            await handle.wait(timeout=60)
    return handle.id


async def test_the_api_answers_what_the_cli_prints_as_json(
    db: taskdb.Database, db_url: str, client: httpx.AsyncClient
) -> None:
    q = taskdb.JobQueueClient(db, "mail")
    for n in range(3):
        await q.submit({"n": n}, task="send")
    failed = await run_to_end(db, "work", _fail)
    await run_to_end(db, "work", _blob)

    async def cli(*args: str) -> Any:
        result = await asyncio.to_thread(invoke, *args, "--json", "--db", db_url)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    assert (await client.get("/api/jobs?limit=50")).json() == await cli("jobs")
    assert (await client.get(f"/api/jobs/{failed}")).json() == await cli("job", "show", str(failed))
    assert (await client.get("/api/blobs")).json() == await cli("blob", "ls")
    assert (await client.get("/api/workers")).json() == await cli("workers") == []
    api_stats, cli_stats = (await client.get("/api/stats")).json(), await cli("stats")
    for stats in (api_stats, cli_stats):  # the time of the read and the lag differ
        stats.pop("at")
        for queue in stats["queues"]:
            queue.pop("oldest_pending_seconds")
    assert api_stats == cli_stats
    assert {q["queue"]: q["counts"] for q in api_stats["queues"]} == {
        "mail": {"PENDING": 3},
        "work": {"COMPLETED": 1, "FAILED": 1},
    }
    chart = (await client.get("/api/throughput?minutes=5")).json()
    assert len(chart["minutes"]) == 5
    assert (sum(chart["completed"]), sum(chart["failed"])) == (1, 1)


async def test_job_list_filters_by_queue_status_task_and_text(
    db: taskdb.Database, client: httpx.AsyncClient
) -> None:
    a = await taskdb.JobQueueClient(db, "a").submit({}, task="resize", fingerprint="img-42")
    b = await taskdb.JobQueueClient(db, "b").submit({}, task="send")
    failed = await run_to_end(db, "c", _fail)

    async def ids(query: str) -> list[int]:
        response = await client.get("/api/jobs?" + query)
        assert response.status_code == 200, response.text
        return [j["id"] for j in response.json()]

    assert await ids("queue=a") == [a.id]
    assert await ids("queue=b&status=PENDING") == [b.id]
    assert await ids("status=failed") == [failed]
    assert await ids("status=FAILED&status=PENDING") == [failed, b.id, a.id]
    assert await ids("task=send") == [b.id]
    assert await ids("q=IMG-4") == [a.id]  # fingerprint, any case
    assert await ids("q=broken") == [failed]  # error text
    assert await ids("q=100%25") == []  # LIKE wildcards are plain characters


async def test_keyset_pages_stay_correct_while_jobs_arrive(
    db: taskdb.Database, client: httpx.AsyncClient
) -> None:
    q = taskdb.JobQueueClient(db, "pages")
    first = [(await q.submit({"n": n})).id for n in range(25)]
    seen: list[int] = []
    response = await client.get("/api/jobs?queue=pages&limit=10")
    seen += [j["id"] for j in response.json()]
    arrived = [(await q.submit({"late": n})).id for n in range(5)]  # between two pages
    while "next" in response.links:
        response = await client.get(response.links["next"]["url"])
        assert response.status_code == 200
        seen += [j["id"] for j in response.json()]
    assert seen == sorted(first, reverse=True)  # every job once, none of the newcomers
    fresh = await client.get("/api/jobs?queue=pages&limit=5")
    assert [j["id"] for j in fresh.json()] == sorted(arrived, reverse=True)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/jobs/999999", 404),
        ("/api/jobs/abc", 404),
        ("/api/jobs/99999999999999999999999", 404),
        ("/api/jobs?status=NOPE", 400),
        ("/api/jobs?limit=0", 400),
        ("/api/jobs?limit=x", 400),
        ("/api/jobs?before=-1", 400),
        ("/api/blobs/0123456789abcdef0123456789abcdef", 404),
        ("/api/blobs/..%2F..%2Fetc", 404),
        ("/api/throughput?minutes=0", 400),
        ("/api/changes?after=not-a-cursor", 400),
        ("/api/jobs/1/stream", 404),
        ("/api/nothing", 404),
    ],
)
async def test_unknown_ids_are_404_and_bad_parameters_400(
    client: httpx.AsyncClient, path: str, status: int
) -> None:
    response = await client.get(path)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    assert "Traceback" not in response.text


async def test_pages_answer_404_and_400_with_a_page_not_a_traceback(
    client: httpx.AsyncClient,
) -> None:
    for path, status in (("/jobs/424242", 404), ("/jobs?status=NOPE", 400), ("/nope", 404)):
        response = await client.get(path)
        assert response.status_code == status
        assert response.headers["content-type"].startswith("text/html")
        assert "Traceback" not in response.text


async def test_an_internal_error_answers_500_without_its_details(
    db: taskdb.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(db)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.state.dashboard.admin, "stats", broken)
    async with client_of(app) as client:
        for path in ("/api/stats", "/"):
            response = await client.get(path)
            assert response.status_code == 500
            assert "secret internals" not in response.text
            assert "Traceback" not in response.text


async def test_retry_abort_purge_and_queue_pause_act_through_the_api(
    db: taskdb.Database, client: httpx.AsyncClient
) -> None:
    failed = await run_to_end(db, "acts", _fail)
    pending = (await taskdb.JobQueueClient(db, "acts").submit({})).id
    admin = taskdb.Admin(db)

    assert (await client.post(f"/api/jobs/{pending}/retry")).status_code == 409
    response = await client.post(f"/api/jobs/{failed}/retry")
    assert response.json() == {"job_id": failed, "retried": True}
    assert (await admin.get_job(failed)).status is taskdb.JobStatus.PENDING

    assert (await client.post(f"/api/jobs/{pending}/abort")).json()["aborted"] is True
    row = await admin.get_job(pending)
    assert (row.status, row.error_code) == (taskdb.JobStatus.FAILED, "AbortedJobError")
    assert (await client.post(f"/api/jobs/{pending}/abort")).json()["aborted"] is False
    assert (await client.post("/api/jobs/424242/abort")).status_code == 404

    assert (await client.post("/api/jobs/purge")).status_code == 400  # older_than needed
    bad = await client.post("/api/jobs/purge", data={"older_than": "0s", "status": "PENDING"})
    assert bad.status_code == 400  # only ended jobs can go
    purged = await client.post("/api/jobs/purge", data={"older_than": "0s", "queue": "acts"})
    assert purged.json() == {"purged": 1}
    with pytest.raises(taskdb.JobNotFound):
        await admin.get_job(pending)

    assert (await client.post("/api/queues/acts/pause")).json()["paused"] is True
    assert await admin.paused_queues() == {"acts"}
    await client.post("/api/queues/acts/resume")
    assert await admin.paused_queues() == set()


async def test_read_only_refuses_every_action_and_hides_the_buttons(db: taskdb.Database) -> None:
    failed = await run_to_end(db, "ro", _fail)
    async with client_of(create_app(db, read_only=True)) as client:
        for path in (f"/api/jobs/{failed}/retry", f"/jobs/{failed}/retry", "/api/queues/ro/pause"):
            assert (await client.post(path)).status_code == 403
        page = await client.get(f"/jobs/{failed}")
        assert page.status_code == 200
        assert 'id="retry"' not in page.text
        assert "read-only" in page.text
    assert (await taskdb.Admin(db).get_job(failed)).status is taskdb.JobStatus.FAILED


async def test_blob_download_has_the_type_length_and_bytes_of_the_blob(
    db: taskdb.Database, client: httpx.AsyncClient
) -> None:
    job_id = await run_to_end(db, "blobs", _blob)
    ref = (await taskdb.Admin(db).get_job(job_id)).output["image"]
    page = await client.get(f"/jobs/{job_id}")
    assert f"/api/blobs/{ref['$ref']}?name=image" in page.text  # a download link
    response = await client.get(f"/api/blobs/{ref['$ref']}?name=image")
    assert response.status_code == 200
    assert response.content == b"\x89PNG" + b"x" * (2 << 20)
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["content-type"] == "application/octet-stream"
    assert 'filename="image"' in response.headers["content-disposition"]


async def test_the_job_page_shows_each_attempt_from_the_feed(
    db: taskdb.Database, client: httpx.AsyncClient
) -> None:
    failed = await run_to_end(db, "history", _fail)
    await taskdb.Admin(db).retry_job(failed)
    page = (await client.get(f"/jobs/{failed}")).text
    rows = page[page.index('id="history"') : page.index("<h2>Input</h2>")]
    kinds = [k for k in ("submitted", "claimed", "failed", "retried") if f"<td>{k}</td>" in rows]
    assert kinds == ["submitted", "claimed", "failed", "retried"]
    assert (await client.get("/jobs/424242")).status_code == 404


async def test_purge_from_the_page_asks_for_confirmation_first(
    db: taskdb.Database, client: httpx.AsyncClient
) -> None:
    done = await run_to_end(db, "old", _fail)
    asked = await client.post("/purge", data={"older_than": "0s", "queue": "old"})
    assert asked.status_code == 200
    assert 'id="confirm-purge"' in asked.text and "cannot be undone" in asked.text
    assert (await taskdb.Admin(db).get_job(done)).id == done  # nothing deleted yet
    confirmed = await client.post(
        "/purge", data={"older_than": "0s", "queue": "old", "status": "FAILED", "confirm": "yes"}
    )
    assert confirmed.status_code == 303
    assert "purged%201%20job" in confirmed.headers["location"]
    with pytest.raises(taskdb.JobNotFound):
        await taskdb.Admin(db).get_job(done)
    assert (await client.post("/purge", data={"older_than": "soon"})).status_code == 400


async def test_mounted_in_fastapi_every_link_and_redirect_keeps_the_prefix(
    db: taskdb.Database,
) -> None:
    from fastapi import FastAPI

    service = FastAPI()
    service.mount("/ops/taskdb", create_app(db, token="t0ken"))
    job = await taskdb.JobQueueClient(db, "mounted").submit({})
    async with client_of(service) as client:
        login = await client.get("/ops/taskdb/jobs")
        assert login.headers["location"] == "/ops/taskdb/login?next=/ops/taskdb/jobs"
        signed = await client.post("/ops/taskdb/login", data={"token": "t0ken", "next": "/x"})
        assert "Path=/ops/taskdb/" in signed.headers["set-cookie"]
        page = await client.get(f"/ops/taskdb/jobs/{job.id}")
        assert page.status_code == 200
        assert 'href="/ops/taskdb/static/dashboard.css"' in page.text
        assert 'data-base="/ops/taskdb"' in page.text
        abort = await client.post(f"/ops/taskdb/jobs/{job.id}/abort")
        assert abort.headers["location"] == f"/ops/taskdb/jobs/{job.id}"
        listed = await client.get("/ops/taskdb/api/jobs?limit=1")
        assert [j["id"] for j in listed.json()] == [job.id]
        assert (await client.get("/ops/taskdb/static/dashboard.js")).status_code == 200
