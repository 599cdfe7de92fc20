"""A FastAPI service that defers typed tasks (``examples/tasks.py``) and reports
their results.

Run it from the repository root (``pip install -e '.[dev]' uvicorn``)::

    export TASKDB_URL=postgresql://postgres@127.0.0.1:5432/app   # or leave the SQLite default
    taskdb migrate
    taskdb worker examples.tasks:app --concurrency 4    # one or more, anywhere
    uvicorn examples.fastapi_app:app --reload

then::

    curl -si localhost:8000/thumbnails -H 'content-type: application/json' \\
        -d '{"url": "https://example.com/cat.png", "width": 128}'    # 202 {"id": 1, ...}
    curl -s 'localhost:8000/jobs/1?wait=10'    # {"status": "COMPLETED", "result": {...}}

``POST /thumbnails`` and ``POST /word-counts`` take the task's arguments as a JSON
object: the task's signature checks them (``taskdb.InvalidJobInput`` becomes a
422 naming the bad argument, and no job is stored). ``GET /jobs/{id}`` gives the
job's status and progress, its typed result once completed, its error once
failed; ``?wait=SECONDS`` (up to 30) holds the request until the job ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Annotated, Any

from fastapi import Body, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import taskdb
from examples import tasks
from examples.tasks import Thumbnail, WordCount

MAX_WAIT = 30.0
"""The longest ``?wait=`` a status request may hold its connection, in seconds."""

Arguments = Annotated[dict[str, Any], Body()]
"""A task's keyword arguments: its signature, not a copy of it here, checks them."""


class Deferred(BaseModel):
    """The answer to a POST: the job to poll."""

    id: int
    status_url: str


class JobView(BaseModel):
    """A job of one of the app's tasks, as ``GET /jobs/{id}`` shows it."""

    id: int
    task: str
    status: taskdb.JobStatus
    progress: float
    progress_message: str | None = None
    result: Thumbnail | WordCount | None = None
    """The task's return value, once the job completed (a new task: add its type)."""
    error: str | None = None
    """Why it failed, once it did."""


def create_app(url: str | None = None) -> FastAPI:
    """The service; ``url`` names the database (default: ``TASKDB_URL``, else the
    SQLite default), for the tasks deferred here and the jobs read here."""
    if url is not None:
        tasks.app.bind(taskdb.connect(url))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await tasks.app.db.aclose()  # release pooled connections at shutdown

    api = FastAPI(title="taskdb typed tasks (FastAPI)", lifespan=lifespan)

    @api.exception_handler(taskdb.InvalidJobInput)
    async def invalid_input(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @api.exception_handler(taskdb.JobNotFound)
    async def not_found(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    def deferred(job_id: int, response: Response) -> Deferred:
        status_url = str(api.url_path_for("job_status", job_id=str(job_id)))
        response.headers["Location"] = status_url
        return Deferred(id=job_id, status_url=status_url)

    @api.post("/thumbnails", status_code=202)
    async def create_thumbnail(args: Arguments, response: Response) -> Deferred:
        """Defer ``resize(url, width=256)``."""
        handle = await tasks.resize.defer_async(**args)
        return deferred(handle.id, response)

    @api.post("/word-counts", status_code=202)
    async def create_word_count(args: Arguments, response: Response) -> Deferred:
        """Defer ``word_count(text, top=3)``."""
        handle = await tasks.word_count.defer_async(**args)
        return deferred(handle.id, response)

    @api.get("/jobs/{job_id}")
    async def job_status(
        job_id: int, wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0
    ) -> JobView:
        """The job's status; its result once completed (``wait``: seconds to hold the
        request until the job ends)."""
        job = await taskdb.Admin(tasks.app.db).get_job(job_id)  # JobNotFound: 404
        task = tasks.app.tasks.get(job.task or "")
        if task is None:  # a job of this database, but not of this app's tasks
            raise taskdb.JobNotFound(job_id)
        handle = task.handle(job.id)  # the task's typed handle for a job deferred earlier
        if wait > 0 and not job.status.terminal:
            # WaitTimeout: still running; JobError: it failed. The row read next says
            # which (it may have completed just after the wait timed out).
            with suppress(taskdb.WaitTimeout, taskdb.JobError):
                await handle.result(timeout=wait)
            job = await handle.get()
        result: Any = None
        if job.status is taskdb.JobStatus.COMPLETED:
            result = task.result_of(job)  # typed, from the row read last
        return JobView(
            id=job.id,
            task=task.name,
            status=job.status,
            progress=job.progress,
            progress_message=job.progress_message,
            result=result,
            error=job.error,
        )

    return api


app = create_app()
