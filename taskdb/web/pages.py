"""The server-rendered pages (Jinja2, every value autoescaped) and their form actions.

Forms post to the page routes, which act through :class:`taskdb.Admin` and
redirect back (POST, redirect, GET); ``dashboard.js`` keeps pages live from
the SSE endpoints, writing values only as text.
"""

from __future__ import annotations

import asyncio
import hmac
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from jinja2 import Environment
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from taskdb.core import ChangeKind, JobStatus
from taskdb.core.format import binary_values, human_age, human_seconds, human_size, render
from taskdb.errors import AbortedJobError
from taskdb.web.api import WEB_SCHEDULE_ACTIONS, job_id_of, purge_request
from taskdb.web.context import base_of, dashboard_of
from taskdb.web.filters import JobFilter, form_of
from taskdb.web.security import COOKIE, session_value

_STATUSES = [s.value for s in JobStatus]


def register_filters(env: Environment) -> None:
    env.filters["size"] = human_size
    env.filters["age"] = human_age
    env.filters["seconds"] = human_seconds
    env.filters["summary"] = render
    env.filters["iso"] = lambda d: "-" if d is None else d.isoformat(timespec="seconds")


def _page(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    dashboard = dashboard_of(request)
    html = dashboard.templates.get_template(template).render(
        base=base_of(request),
        read_only=dashboard.read_only,
        with_token=dashboard.token is not None,
        db_url=dashboard.admin.db.safe_url,
        statuses=_STATUSES,
        path=request.url.path,
        **values,
    )
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            # no inline script or style anywhere: an escaping slip still runs nothing
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
            "frame-ancestors 'none'; form-action 'self'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        },
    )


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return _page(request, "error.html", status, title=f"Error {status}", message=message)


def _back(request: Request, path: str) -> RedirectResponse:
    return RedirectResponse(f"{base_of(request)}{path}", status_code=303)


async def overview(request: Request) -> Response:
    admin = dashboard_of(request).admin
    # two reads on two connections at once: the counts and the chart cost the slower one
    stats, throughput = await asyncio.gather(admin.stats(), admin.throughput())
    statuses = [s for s in _STATUSES if any(s in q.counts for q in stats.queues)]
    for always in ("PENDING", "PROCESSING", "COMPLETED", "FAILED"):
        if always not in statuses:
            statuses.append(always)
    statuses.sort(key=_STATUSES.index)
    return _page(
        request,
        "overview.html",
        title="Queues",
        stats=stats,
        columns=statuses,
        throughput=throughput,
    )


async def jobs(request: Request) -> Response:
    where = JobFilter.parse(request.query_params)
    found = await where.fetch(dashboard_of(request).admin)
    following = where.query(before=found[-1].id) if len(found) == where.limit else None
    return _page(
        request,
        "jobs.html",
        title="Jobs",
        jobs=found,
        where=where,
        next_query=following,
        first_page=where.before is None,
        message=request.query_params.get("message"),
    )


async def job(request: Request) -> Response:
    admin = dashboard_of(request).admin
    row = await admin.get_job(job_id_of(request))
    history = [c for c in await admin.job_history(row.id) if c.kind is not ChangeKind.PROGRESS]
    refs = [(path or "output", v) for path, v in binary_values(row.output) if "$ref" in v]
    return _page(
        request,
        "job.html",
        title=f"Job {row.id}",
        job=row,
        refs=refs,
        history=history,
        aborted=row.status is JobStatus.FAILED and row.error_code == AbortedJobError.__name__,
        message=request.query_params.get("message"),
    )


async def retry(request: Request) -> Response:
    job_id = job_id_of(request)
    admin = dashboard_of(request).admin
    await admin.get_job(job_id)
    done = await admin.retry_job(job_id)
    note = "" if done else "?message=" + quote(f"job {job_id} is not FAILED; nothing to retry")
    return _back(request, f"/jobs/{job_id}{note}")


async def abort(request: Request) -> Response:
    job_id = job_id_of(request)
    admin = dashboard_of(request).admin
    await admin.get_job(job_id)
    done = await admin.abort_job(job_id)
    note = "" if done else "?message=" + quote(f"job {job_id} had already ended")
    return _back(request, f"/jobs/{job_id}{note}")


async def purge(request: Request) -> Response:
    """GET: the form. POST: the confirmation page, then (``confirm=yes``) the purge."""
    if request.method == "GET":
        return _page(request, "purge.html", title="Purge jobs", asked=None, errors=None)
    age, queue, status = await purge_request(request)
    form = await form_of(request)
    if form.get("confirm") != "yes":
        asked = {"older_than": str(form.get("older_than")), "queue": queue, "status": status}
        cutoff = datetime.now(UTC) - age
        return _page(request, "purge.html", title="Purge jobs", asked=asked, cutoff=cutoff)
    purged = await dashboard_of(request).admin.purge_jobs(age, queue=queue, status=status)
    return _back(request, "/jobs?message=" + quote(f"purged {purged} job(s)"))


async def queue_action(request: Request) -> Response:
    name, action = request.path_params["name"], request.path_params["action"]
    admin = dashboard_of(request).admin
    if action == "pause":
        await admin.pause_queue(name)
    elif action == "resume":
        await admin.resume_queue(name)
    else:
        return error_page(request, 404, f"no action {action!r}")
    return _back(request, "/")


async def schedules(request: Request) -> Response:
    found = await dashboard_of(request).admin.schedules()
    return _page(
        request,
        "schedules.html",
        title="Schedules",
        schedules=found,
        now=datetime.now(UTC),
        message=request.query_params.get("message"),
    )


async def schedule_action(request: Request) -> Response:
    name, action = request.path_params["name"], request.path_params["action"]
    if action not in WEB_SCHEDULE_ACTIONS:
        return error_page(request, 404, f"no schedule action {action!r}")
    job_id = await dashboard_of(request).admin.act_on_schedule(name, action)
    return _back(request, "/schedules" if job_id is None else f"/jobs/{job_id}")


async def workers(request: Request) -> Response:
    found = await dashboard_of(request).admin.workers()
    return _page(request, "workers.html", title="Workers", workers=found, now=datetime.now(UTC))


def _next_path(request: Request, text: str | None) -> str:
    base = base_of(request)
    if not text or not text.startswith("/") or text.startswith("//") or "\\" in text:
        return base + "/"
    return text


async def login(request: Request) -> Response:
    dashboard = dashboard_of(request)
    target = _next_path(request, request.query_params.get("next"))
    if dashboard.token is None:
        return RedirectResponse(target, status_code=303)
    if request.method == "GET":
        return _page(request, "login.html", title="Sign in", target=target, failed=False)
    form = await form_of(request)
    given = str(form.get("token", ""))
    target = _next_path(request, str(form.get("next", "")))
    if not hmac.compare_digest(given.encode(), dashboard.token.encode()):
        return _page(request, "login.html", 401, title="Sign in", target=target, failed=True)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        session_value(dashboard.token),
        max_age=int(timedelta(days=7).total_seconds()),
        path=base_of(request) + "/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    response = _back(request, "/login")
    response.delete_cookie(COOKIE, path=base_of(request) + "/")
    return response


def routes() -> list[Route]:
    return [
        Route("/", overview),
        Route("/jobs", jobs),
        Route("/jobs/{id}", job),
        Route("/jobs/{id}/retry", retry, methods=["POST"]),
        Route("/jobs/{id}/abort", abort, methods=["POST"]),
        Route("/purge", purge, methods=["GET", "POST"]),
        Route("/queues/{name}/{action}", queue_action, methods=["POST"]),
        Route("/schedules", schedules),
        Route("/schedules/{name}/{action}", schedule_action, methods=["POST"]),
        Route("/workers", workers),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
