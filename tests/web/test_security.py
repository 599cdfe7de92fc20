"""Security of the dashboard: the token (bearer or login cookie), Origin checks on
POSTs, escaping of every stored value, no password anywhere, and the CLI's bind rule."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import taskdb
from taskdb.web import create_app, is_loopback
from tests.cli.helpers import invoke_failing
from tests.web.conftest import client_of
from tests.web.test_api import run_to_end

TOKEN = "s3cret-token"
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(2)>'


async def test_with_a_token_every_request_needs_it(db: taskdb.Database) -> None:
    async with client_of(create_app(db, token=TOKEN)) as client:
        assert (await client.get("/api/stats")).status_code == 401
        assert (await client.get("/metrics")).status_code == 401
        page = await client.get("/jobs?queue=x")
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=/jobs"
        wrong = {"Authorization": "Bearer nope"}
        assert (await client.get("/api/stats", headers=wrong)).status_code == 401
        right = {"Authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/api/stats", headers=right)).status_code == 200
        assert (await client.get("/static/dashboard.css")).status_code == 200  # open


async def test_the_login_form_sets_a_strict_httponly_cookie(db: taskdb.Database) -> None:
    async with client_of(create_app(db, token=TOKEN)) as client:
        failed = await client.post("/login", data={"token": "guess", "next": "/jobs"})
        assert failed.status_code == 401
        assert "set-cookie" not in failed.headers
        ok = await client.post("/login", data={"token": TOKEN, "next": "/jobs"})
        assert ok.status_code == 303
        assert ok.headers["location"] == "/jobs"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        assert TOKEN not in cookie  # an HMAC of it, never the token
        assert (await client.get("/api/stats")).status_code == 200  # the cookie is kept
        away = await client.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
        assert away.headers["location"] == "/"  # never an open redirect


async def test_posts_from_another_origin_are_refused(db: taskdb.Database) -> None:
    job = await taskdb.JobQueueClient(db, "csrf").submit({})
    async with client_of(create_app(db)) as client:
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
        ):
            for path in (f"/jobs/{job.id}/abort", f"/api/jobs/{job.id}/abort"):
                assert (await client.post(path, headers=headers)).status_code == 403
        assert (await taskdb.Admin(db).get_job(job.id)).status is taskdb.JobStatus.PENDING
        same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
        response = await client.post(f"/jobs/{job.id}/abort", headers=same)
        assert response.status_code == 303
    assert (await taskdb.Admin(db).get_job(job.id)).status is taskdb.JobStatus.FAILED


async def _evil(value: Any, ctx: taskdb.JobContext) -> Any:
    raise ValueError(f"bad {SCRIPT} {IMG}")


async def test_every_stored_value_renders_as_text(
    db: taskdb.Database, client: httpx.AsyncClient
) -> None:
    job_id = await run_to_end(db, "xss", _evil, {"name": SCRIPT, "alt": IMG})
    await taskdb.JobQueueClient(db, SCRIPT).submit({"q": IMG}, task=IMG, fingerprint=SCRIPT)
    pages = [
        await client.get(f"/jobs/{job_id}"),
        await client.get("/jobs"),
        await client.get("/"),
        await client.get("/jobs", params={"queue": SCRIPT, "q": IMG}),
        await client.get("/jobs", params={"status": SCRIPT}),  # an error echoing the input
    ]
    for page in pages:
        assert "<script>alert" not in page.text
        assert "<img src=x" not in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
    assert pages[-1].status_code == 400
    assert "&lt;script&gt;" in pages[0].text  # shown, as text


@pytest.mark.parametrize("password", ["hunter2-pw"])
async def test_no_page_or_response_shows_the_database_password(
    fresh_pg_url: str, password: str
) -> None:
    url = fresh_pg_url.replace("postgres@", f"postgres:{password}@")  # trust auth ignores it
    db = taskdb.connect(url)
    try:
        await taskdb.JobQueueClient(db, "pw").submit({})
        async with client_of(create_app(db)) as client:
            for path in ("/", "/jobs", "/jobs/1", "/workers", "/api/stats", "/metrics", "/x"):
                response = await client.get(path)
                assert password not in response.text, path
            assert "***" in (await client.get("/")).text  # the URL shown, masked
    finally:
        await db.aclose()


def test_a_non_loopback_bind_without_a_token_is_refused_in_one_line() -> None:
    result = invoke_failing("dashboard", "--host", "0.0.0.0", "--db", "sqlite:///unused.db")
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        "Error: --host 0.0.0.0 is reachable from other machines: give --token (or bind 127.0.0.1)"
    ]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.4", False),
        ("example.com", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
