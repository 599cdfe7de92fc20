"""The web examples (``examples/fastapi_app.py``, ``examples/flask_app.py``) driven
in-process by their frameworks' test clients, their tasks run by a real ``taskdb
worker examples.tasks:app`` process, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from flask import Flask

import taskdb
from examples import fastapi_app, flask_app, tasks

ROOT = Path(__file__).resolve().parents[1]

Call = Callable[..., tuple[int, Any, Mapping[str, str]]]
"""``call(method, path, json=None)``: the status, JSON body and headers of a response."""


def lowered(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Response headers by their lower-case names."""
    return {name.lower(): value for name, value in headers}


class Worker:
    """A ``taskdb worker examples.tasks:app`` subprocess, its stderr in a file."""

    def __init__(self, proc: subprocess.Popen[bytes], stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def check_alive(self) -> None:
        code = self.proc.poll()
        assert code is None, f"the worker exited ({code}):\n{self.stderr}"


@contextmanager
def worker_process(db_url: str, tmp_path: Path) -> Iterator[Worker]:
    """A worker on the test's database (``TASKDB_URL``); stopped with SIGTERM after
    the block, which it must survive with exit code 0 (killed if the block failed)."""
    stderr_path = tmp_path / "worker.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskdb", "worker", "examples.tasks:app",
             "--concurrency", "2", "--poll", "0.05"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
            env={**os.environ, "TASKDB_URL": db_url, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    worker = Worker(proc, stderr_path)
    try:
        yield worker
    except BaseException:
        proc.kill()
        proc.wait(timeout=10)
        raise
    proc.send_signal(signal.SIGTERM)
    try:
        returncode = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError(f"the worker ignored SIGTERM for 30s:\n{worker.stderr}") from None
    assert returncode == 0, worker.stderr


@contextmanager
def fastapi_client(api: FastAPI) -> Iterator[Call]:
    with TestClient(api) as client:  # runs the lifespan

        def call(method: str, path: str, json: Any = None) -> tuple[int, Any, Mapping[str, str]]:
            response = client.request(method, path, json=json)
            return response.status_code, response.json(), lowered(response.headers.items())

        yield call


@contextmanager
def flask_client(web: Flask) -> Iterator[Call]:
    client = web.test_client()

    def call(method: str, path: str, json: Any = None) -> tuple[int, Any, Mapping[str, str]]:
        response = client.open(path, method=method, json=json)
        return response.status_code, response.get_json(), lowered(response.headers.items())

    try:
        yield call
    finally:
        tasks.app.db.close()


def web_client(framework: str, url: str | None = None) -> AbstractContextManager[Call]:
    """The example of ``framework`` on the database at ``url`` (default: the module's
    ``app``, configured by ``TASKDB_URL``), driven by its framework's test client."""
    if framework == "fastapi":
        return fastapi_client(fastapi_app.app if url is None else fastapi_app.create_app(url))
    return flask_client(flask_app.app if url is None else flask_app.create_app(url))


FRAMEWORKS = ["fastapi", "flask"]


def stored_job_ids(url: str) -> list[int]:
    """The ids of every job in the database, read by a connection of its own."""

    async def read() -> list[int]:
        async with taskdb.connect(url) as db:
            return sorted(job.id for job in await taskdb.Admin(db).list_jobs())

    return asyncio.run(read())


def defer(call: Call, path: str, args: dict[str, Any]) -> int:
    status, reply, headers = call("POST", path, args)
    assert status == 202, reply
    assert reply["status_url"] == headers["location"] == f"/jobs/{reply['id']}"
    job_id: int = reply["id"]
    return job_id


def until_ended(call: Call, job_id: int, worker: Worker, timeout: float = 30.0) -> Any:
    """The status of ``job_id`` once it completed or failed: long-polls (``?wait=1``
    holds each request until the job ends, for at most a second) until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        status, reply, _ = call("GET", f"/jobs/{job_id}?wait=1")
        assert status == 200, reply
        if reply["status"] in ("COMPLETED", "FAILED"):
            return reply
        worker.check_alive()
        assert time.monotonic() < deadline, f"job {job_id} still {reply} after {timeout}s"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_web_example_defers_typed_tasks_and_reads_their_results(
    framework: str, db_url: str, tmp_path: Path
) -> None:
    with worker_process(db_url, tmp_path) as worker, web_client(framework, db_url) as call:
        # Bad arguments: a 422 naming the argument, from taskdb's InvalidJobInput.
        cat = "https://example.com/cat.png"
        refused = [
            ("/thumbnails", {"url": cat, "width": 5}, "width"),
            ("/thumbnails", {"url": "cat.png"}, "url"),
            ("/thumbnails", {"width": 64}, "url"),
            ("/thumbnails", {"url": cat, "height": 9}, "height"),
            ("/thumbnails", {"url": cat, "ctx": {}}, "ctx"),
            ("/word-counts", {"text": ""}, "text"),
            ("/word-counts", {"text": "a b", "top": 0}, "top"),
        ]
        for path, args, named in refused:
            status, reply, _ = call("POST", path, args)
            assert status == 422, (args, reply)
            detail = reply["detail"]  # taskdb's InvalidJobInput, naming the task
            assert detail.startswith("task 'examples.tasks.") and named in detail, (args, reply)
        status, reply, _ = call("POST", "/thumbnails", [cat, 64])  # not an object
        assert status == 422, reply
        status, reply, _ = call("GET", "/jobs/1?wait=31")  # holds at most 30s
        assert status == 422, reply
        assert stored_job_ids(db_url) == []  # nothing refused was stored

        thumb = defer(call, "/thumbnails", {"url": cat, "width": 128})
        count = defer(call, "/word-counts", {"text": "The cat and the hat and the bat", "top": 2})
        broken = defer(call, "/thumbnails", {"url": "https://example.com/notes.txt"})

        status, reply, _ = call("GET", f"/jobs/{thumb}")  # no wait: as it is now
        assert status == 200
        assert reply["status"] in ("PENDING", "PROCESSING", "COMPLETED"), reply
        assert reply["task"] == "examples.tasks.resize"

        done = until_ended(call, thumb, worker)
        assert done["status"] == "COMPLETED", done
        assert done["error"] is None
        assert done["progress_message"] == "resizing"  # the last one the task reported
        result = done["result"]
        assert result == {"source": cat, "width": 128, "height": 96, "path": result["path"]}
        assert re.fullmatch(r"thumbs/[0-9a-f]{16}\.webp", result["path"])
        # The same job through the task's own handle: the declared return type.
        assert tasks.resize.sync_handle(thumb).result(timeout=0) == tasks.Thumbnail(**result)

        done = until_ended(call, count, worker)
        assert done["task"] == "examples.tasks.word_count"
        assert done["status"] == "COMPLETED", done
        assert done["result"] == {"words": 8, "distinct": 5, "most_common": ["the", "and"]}

        done = until_ended(call, broken, worker)
        assert done["status"] == "FAILED" and done["result"] is None, done
        assert "notes.txt is not an image" in done["error"]

        # Ids of no job, and a job of the database that is none of the app's tasks: 404.
        other = taskdb.SyncJobQueueClient(tasks.app.db, "elsewhere").submit({"n": 1}).id
        for job_id in (other, 10**6, 10**30):
            status, reply, _ = call("GET", f"/jobs/{job_id}")
            assert status == 404, reply
            assert f"job {job_id} not found" in reply["detail"]
        assert stored_job_ids(db_url) == sorted([thumb, count, broken, other])

    assert "stopped: 2 completed, 1 failed, 0 retried" in worker.stderr, worker.stderr


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_web_example_is_configured_by_taskdb_url_alone(framework: str, db_url: str) -> None:
    """As deployed: ``module:app`` in a fresh process, the database named only by
    ``TASKDB_URL``, the first use of the tasks' App a request (no worker: the job
    stays pending)."""
    try:
        probe = subprocess.run(
            [sys.executable, "-m", "tests.test_web_examples", framework],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={**os.environ, "TASKDB_URL": db_url, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the {framework} example hung for 60s:\n{exc.stderr!r}") from None
    assert probe.returncode == 0, probe.stderr
    assert stored_job_ids(db_url) == [json.loads(probe.stdout)["id"]]


def probe(framework: str) -> None:
    """The subprocess of the test above: defer a job through the module's ``app``."""
    with web_client(framework) as call:
        job_id = defer(call, "/word-counts", {"text": "to be or not to be"})
        status, reply, _ = call("GET", f"/jobs/{job_id}")
        assert (status, reply["status"], reply["result"]) == (200, "PENDING", None), reply
    print(json.dumps({"id": job_id}))


if __name__ == "__main__":
    probe(sys.argv[1])
