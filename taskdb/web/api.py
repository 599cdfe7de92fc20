"""The JSON API under ``/api`` (the shapes of the CLI's ``--json``, from
:mod:`taskdb.json_views`), its SSE endpoints, blob downloads and ``/metrics``.

GET  /api/stats · /api/throughput?minutes= · /api/workers · /api/blobs · /api/schedules
GET  /api/jobs?queue=&status=&task=&q=&limit=&before=  (a list; ``Link: rel=next``)
GET  /api/jobs/{id} · /api/blobs/{key} (the bytes, streamed)
GET  /api/changes?queue=&job=   SSE of the change feed, ``id:`` = cursor
GET  /api/jobs/{id}/stream       SSE of the job's durable stream, ``id:`` = offset
POST /api/jobs/{id}/retry · /api/jobs/{id}/abort · /api/jobs/purge
POST /api/queues/{name}/pause · /api/queues/{name}/resume
POST /api/schedules/{name}/pause · .../resume · .../trigger (answers the new job's id)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from taskdb.core.durations import parse_duration
from taskdb.core.jobs import TERMINAL_STATUSES, check_job_id, statuses_of
from taskdb.json_views import (
    blob_json,
    change_json,
    job_json,
    jobs_json,
    schedule_json,
    stats_json,
    stream_item_json,
    throughput_json,
    worker_json,
)
from taskdb.queue import JobQueueClient
from taskdb.web.context import base_of, dashboard_of
from taskdb.web.filters import BadRequest, JobFilter, form_of
from taskdb.web.metrics import CONTENT_TYPE
from taskdb.web.sse import event_stream, frame

WEB_SCHEDULE_ACTIONS = ("pause", "resume", "trigger")
"""The schedule actions the dashboard offers (it never deletes one)."""

_KEY_CHARS = frozenset("0123456789abcdef")


def job_id_of(request: Request) -> int:
    """The ``{id}`` of the path: 404 when no job can have it."""
    text = request.path_params["id"]
    if not text.isascii() or not text.isdigit():
        raise HTTPException(404, f"no job {text!r}")
    return check_job_id(int(text))


async def stats(request: Request) -> Response:
    return JSONResponse(stats_json(await dashboard_of(request).admin.stats()))


async def throughput(request: Request) -> Response:
    text = request.query_params.get("minutes", "60")
    if not text.isdigit():
        raise BadRequest(f"minutes must be an integer, got {text!r}")
    found = await dashboard_of(request).admin.throughput(int(text))
    return JSONResponse(throughput_json(found))


async def workers(request: Request) -> Response:
    return JSONResponse([worker_json(w) for w in await dashboard_of(request).admin.workers()])


async def list_jobs(request: Request) -> Response:
    where = JobFilter.parse(request.query_params)
    found = await where.fetch(dashboard_of(request).admin)
    headers = {}
    if len(found) == where.limit:
        url = f"{base_of(request)}/api/jobs?{where.query(before=found[-1].id)}"
        headers["Link"] = f'<{url}>; rel="next"'
    return JSONResponse(jobs_json(found), headers=headers)


async def get_job(request: Request) -> Response:
    return JSONResponse(job_json(await dashboard_of(request).admin.get_job(job_id_of(request))))


async def retry_job(request: Request) -> Response:
    job_id = job_id_of(request)
    admin = dashboard_of(request).admin
    await admin.get_job(job_id)  # 404 first
    if not await admin.retry_job(job_id):
        return JSONResponse({"error": f"job {job_id} is not FAILED; nothing to retry"}, 409)
    return JSONResponse({"job_id": job_id, "retried": True})


async def abort_job(request: Request) -> Response:
    job_id = job_id_of(request)
    admin = dashboard_of(request).admin
    await admin.get_job(job_id)
    return JSONResponse({"job_id": job_id, "aborted": await admin.abort_job(job_id)})


async def purge_request(request: Request) -> tuple[timedelta, str | None, list[str]]:
    """The purge a form or query asks for: ``older_than`` (required), ``queue``,
    ``status`` (ended ones only; default every ended status)."""
    form = await form_of(request)
    older = str(form.get("older_than") or request.query_params.get("older_than") or "")
    if not older:
        raise BadRequest("older_than is required (e.g. 7d)")
    age = timedelta(seconds=parse_duration(older))
    queue = str(form.get("queue") or request.query_params.get("queue") or "") or None
    wanted = [str(s) for s in form.getlist("status")] or request.query_params.getlist("status")
    status = statuses_of(wanted, ended=True) if wanted else list(TERMINAL_STATUSES)
    return age, queue, status


async def purge_jobs(request: Request) -> Response:
    age, queue, status = await purge_request(request)
    purged = await dashboard_of(request).admin.purge_jobs(age, queue=queue, status=status)
    return JSONResponse({"purged": purged})


async def pause_queue(request: Request) -> Response:
    name = request.path_params["name"]
    await dashboard_of(request).admin.pause_queue(name)
    return JSONResponse({"queue": name, "paused": True})


async def resume_queue(request: Request) -> Response:
    name = request.path_params["name"]
    await dashboard_of(request).admin.resume_queue(name)
    return JSONResponse({"queue": name, "paused": False})


async def schedules(request: Request) -> Response:
    found = await dashboard_of(request).admin.schedules()
    return JSONResponse([schedule_json(s) for s in found])


async def schedule_action(request: Request) -> Response:
    """POST pause, resume or trigger of schedule ``{name}`` (404 for an unknown one)."""
    name, action = request.path_params["name"], request.path_params["action"]
    if action not in WEB_SCHEDULE_ACTIONS:
        raise HTTPException(404, f"no schedule action {action!r}")
    job_id = await dashboard_of(request).admin.act_on_schedule(name, action)
    if action == "trigger":
        return JSONResponse({"schedule": name, "job_id": job_id})
    return JSONResponse({"schedule": name, "paused": action == "pause"})


async def list_blobs(request: Request) -> Response:
    limit = request.query_params.get("limit", "100")
    if not limit.isdigit():
        raise BadRequest(f"limit must be an integer, got {limit!r}")
    found = await dashboard_of(request).admin.list_blobs(limit=int(limit))
    return JSONResponse([blob_json(b) for b in found])


def _filename(text: str | None, key: str) -> str:
    name = "".join(c for c in (text or key) if c.isalnum() or c in "._-")[:100]
    return name or key


async def download_blob(request: Request) -> Response:
    """The committed blob's bytes, streamed chunk by chunk (never whole in memory),
    with its mime type and length; 404 for an unknown key."""
    key = request.path_params["key"]
    admin = dashboard_of(request).admin
    if len(key) > 64 or not set(key) <= _KEY_CHARS:
        raise HTTPException(404, f"no blob {key!r}")
    info = await admin.blob_info(key)
    chunks = await admin.open_blob(key) if info is not None else None
    if info is None or chunks is None:
        raise HTTPException(404, f"no committed blob {key!r}")
    name = _filename(request.query_params.get("name"), key)
    return StreamingResponse(
        chunks,
        media_type=info.mime or "application/octet-stream",
        headers={
            "Content-Length": str(info.size),
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Content-Type-Options": "nosniff",
        },
    )


def _cursor_of(request: Request) -> str | None:
    """Where a change stream resumes: ``Last-Event-ID`` (a reconnecting browser), else
    ``?after=`` (``0``: the whole feed), else from now on."""
    return request.headers.get("last-event-id") or request.query_params.get("after") or None


async def changes(request: Request) -> Response:
    """SSE: the change feed (of ``?queue=``, of ``?job=``), each change with its cursor
    as the event id, so a reconnect resumes without a gap."""
    dashboard = dashboard_of(request)
    queue = request.query_params.get("queue") or None
    job = request.query_params.get("job")
    if job is not None and not (job.isascii() and job.isdigit()):
        raise BadRequest(f"job must be a job id, got {job!r}")
    job_id = None if job is None else check_job_id(int(job))
    after = _cursor_of(request)
    dashboard.broadcaster.check(after)  # a bad cursor: 400 now, not a broken stream
    if after is None:  # "from now on" is now, not whenever the stream starts
        after = await dashboard.admin.feed_head()

    async def frames() -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        async for change in dashboard.broadcaster.changes(after, queue=queue, job_id=job_id):
            yield frame(change_json(change), event_id=change.cursor, event="change")

    return event_stream(frames())


async def job_stream(request: Request) -> Response:
    """SSE: job ``{id}``'s durable stream from ``Last-Event-ID`` + 1 (events as
    ``taskdb watch --follow-stream --json`` prints them, bytes in base64)."""
    job = await dashboard_of(request).admin.get_job(job_id_of(request))
    if not job.durable_stream:
        raise BadRequest(f"job {job.id} was not submitted with a durable stream")
    last = request.headers.get("last-event-id") or request.query_params.get("from")
    start = 0
    if last:
        if not last.isdigit():
            raise BadRequest(f"bad stream offset {last!r}")
        start = int(last) + (1 if "last-event-id" in request.headers else 0)
    client = JobQueueClient(dashboard_of(request).admin.db, job.queue)

    async def frames() -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        async for offset, event in client.follow(job.id, start):
            yield frame(stream_item_json(offset, event), event_id=str(offset), event="stream")
        yield frame({"end": True}, event="end")

    return event_stream(frames())


async def metrics(request: Request) -> Response:
    dashboard = dashboard_of(request)
    dashboard.metrics.follow(dashboard.broadcaster)
    return Response(await dashboard.metrics.render(), media_type=CONTENT_TYPE)


def routes() -> list[Route]:
    return [
        Route("/api/stats", stats),
        Route("/api/throughput", throughput),
        Route("/api/workers", workers),
        Route("/api/jobs", list_jobs),
        Route("/api/jobs/purge", purge_jobs, methods=["POST"]),
        Route("/api/jobs/{id}", get_job),
        Route("/api/jobs/{id}/retry", retry_job, methods=["POST"]),
        Route("/api/jobs/{id}/abort", abort_job, methods=["POST"]),
        Route("/api/jobs/{id}/stream", job_stream),
        Route("/api/changes", changes),
        Route("/api/queues/{name}/pause", pause_queue, methods=["POST"]),
        Route("/api/queues/{name}/resume", resume_queue, methods=["POST"]),
        Route("/api/schedules", schedules),
        Route("/api/schedules/{name}/{action}", schedule_action, methods=["POST"]),
        Route("/api/blobs", list_blobs),
        Route("/api/blobs/{key}", download_blob),
    ]
