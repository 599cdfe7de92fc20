"""The database goes away under a busy dashboard and comes back (issue 19, item 6):
requests during the outage get a 503 (a JSON error, no traceback, no password), a
live change-feed SSE stream stays open and delivers what commits after the outage
without a gap, and the pages answer again. PostgreSQL on the private cluster only
(tests/pgserver.py; never the shared server): SQLite does not go away."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

import taskdb
from taskdb.web import create_app
from tests.pgserver import PrivateCluster
from tests.web.conftest import serving

OUTAGE = 3.0


async def test_the_dashboard_rides_out_an_outage(
    private_pg: PrivateCluster, private_pg_url: str
) -> None:
    db = taskdb.connect(private_pg_url)
    app = create_app(db, poll_interval=0.05)
    client = taskdb.JobQueueClient(db, "q", poll_interval=0.05)
    before = await client.submit({"n": 1})
    try:
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
            assert (await http.get("/api/stats")).status_code == 200
            async with http.stream("GET", "/api/changes", params={"after": "0"}) as changes:
                assert changes.status_code == 200
                lines = changes.aiter_lines()

                async def next_job_ids(count: int) -> list[int]:
                    ids: list[int] = []
                    async for line in lines:
                        if line.startswith("data:"):
                            ids.append(json.loads(line.removeprefix("data:"))["job_id"])
                            if len(ids) == count:
                                return ids
                    raise AssertionError(f"the stream ended after {ids}")

                assert await asyncio.wait_for(next_job_ids(1), 30) == [before.id]
                private_pg.stop("fast")
                try:
                    down = await http.get("/api/stats")
                    assert down.status_code == 503, down.text
                    body = down.text
                    assert "Traceback" not in body and "password" not in body.lower()
                    page = await http.get("/")
                    assert page.status_code == 503 and "Traceback" not in page.text
                    await asyncio.sleep(OUTAGE)
                finally:
                    private_pg.start()
                deadline = time.monotonic() + 30
                while (await http.get("/api/stats")).status_code != 200:  # back by itself
                    assert time.monotonic() < deadline, "the dashboard did not come back"
                    await asyncio.sleep(0.1)
                after = await client.submit({"n": 2})
                # the same SSE connection goes on, with the change committed after
                assert await asyncio.wait_for(next_job_ids(1), 30) == [after.id]
            assert (await http.get("/")).status_code == 200
            assert (await http.get(f"/jobs/{after.id}")).status_code == 200
    finally:
        await db.aclose()
