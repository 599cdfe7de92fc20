"""A Flask service (synchronous views) that defers typed tasks
(``examples/tasks.py``) and reports their results.

Run it from the repository root (``pip install -e '.[dev]'`` brings Flask)::

    export TASKDB_URL=postgresql://postgres@127.0.0.1:5432/app   # or leave the SQLite default
    taskdb migrate
    taskdb worker examples.tasks:app --concurrency 4    # one or more, anywhere
    flask --app examples.flask_app run    # production: gunicorn examples.flask_app:app

then::

    curl -si localhost:5000/thumbnails -H 'content-type: application/json' \\
        -d '{"url": "https://example.com/cat.png", "width": 128}'    # 202 {"id": 1, ...}
    curl -s 'localhost:5000/jobs/1?wait=10'    # {"status": "COMPLETED", "result": {...}}

The same API as ``examples/fastapi_app.py``, from synchronous code: ``task.defer``
enqueues (one short transaction), the task's sync handle reads the job and
``result(timeout=...)`` blocks for the typed return value. ``taskdb.InvalidJobInput``
becomes a 422 naming the bad argument, and no job is stored.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

from flask import Flask, request, url_for
from pydantic_core import to_jsonable_python

import taskdb
from examples import tasks

MAX_WAIT = 30.0
"""The longest ``?wait=`` a status request may hold its worker thread, in seconds."""

Reply = tuple[dict[str, Any], int]


def create_app(url: str | None = None) -> Flask:
    """The service; ``url`` names the database (default: ``TASKDB_URL``, else the
    SQLite default), for the tasks deferred here and the jobs read here."""
    if url is not None:
        tasks.app.bind(taskdb.connect(url))
    web = Flask(__name__)

    @web.errorhandler(taskdb.InvalidJobInput)
    def invalid_input(exc: taskdb.InvalidJobInput) -> Reply:
        return {"detail": str(exc)}, 422

    @web.errorhandler(taskdb.JobNotFound)
    def not_found(exc: taskdb.JobNotFound) -> Reply:
        return {"detail": str(exc)}, 404

    def arguments() -> dict[str, Any]:
        args = request.get_json(silent=True)
        if not isinstance(args, dict):
            raise taskdb.InvalidJobInput("the body must be a JSON object of the task's arguments")
        return args

    def deferred(job_id: int) -> tuple[dict[str, Any], int, dict[str, str]]:
        status_url = url_for("job_status", job_id=job_id)
        return {"id": job_id, "status_url": status_url}, 202, {"Location": status_url}

    @web.post("/thumbnails")
    def create_thumbnail() -> tuple[dict[str, Any], int, dict[str, str]]:
        """Defer ``resize(url, width=256)``."""
        return deferred(tasks.resize.defer(**arguments()).id)

    @web.post("/word-counts")
    def create_word_count() -> tuple[dict[str, Any], int, dict[str, str]]:
        """Defer ``word_count(text, top=3)``."""
        return deferred(tasks.word_count.defer(**arguments()).id)

    @web.get("/jobs/<int:job_id>")
    def job_status(job_id: int) -> Reply:
        """The job's status; its result once completed (``?wait=``: seconds to hold
        the request until the job ends)."""
        try:
            wait = float(request.args.get("wait", "0"))
        except ValueError:
            wait = math.nan
        if not 0 <= wait <= MAX_WAIT:  # NaN is not either
            return {"detail": f"wait must be a number of seconds in 0..{MAX_WAIT:g}"}, 422
        # Any client of the app reads a job by its id; its row names its task.
        job = tasks.app.sync_client(tasks.app.default_queue).get(job_id)  # JobNotFound: 404
        task = tasks.app.tasks.get(job.task or "")
        if task is None:  # a job of this database, but not of this app's tasks
            raise taskdb.JobNotFound(job_id)
        handle = task.sync_handle(job.id)  # the task's typed handle for a job deferred earlier
        if wait > 0 and not job.status.terminal:
            # WaitTimeout: still running; JobError: it failed. The row read next says
            # which (it may have completed just after the wait timed out).
            with contextlib.suppress(taskdb.WaitTimeout, taskdb.JobError):
                handle.result(timeout=wait)  # blocks this worker thread
            job = handle.get()
        completed = job.status is taskdb.JobStatus.COMPLETED
        result: Any = task.result_of(job) if completed else None  # typed, from the row
        return {
            "id": job.id,
            "task": task.name,
            "status": job.status.value,
            "progress": job.progress,
            "progress_message": job.progress_message,
            "result": to_jsonable_python(result) if completed else None,
            "error": job.error,
        }, 200

    return web


app = create_app()
