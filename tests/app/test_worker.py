"""How the worker side runs typed tasks (servers of the App in this process):
threads and contexts, unknown task names, and the per-call options of ``configure``."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest

import taskdb
from taskdb import AbortedJobError, JobError, JobQueueClient, JobStatus, TaskNotFound
from taskdb.streams import Finish, TextDelta
from tests.app import tasks_app
from tests.app.conftest import THREAD_PREFIX, Serve
from tests.app.tasks_app import (
    fail,
    greet,
    narrate,
    record,
    thread_of_async,
    thread_of_def,
    until_aborted,
)
from tests.helpers import eventually


async def test_def_tasks_run_in_the_thread_pool_async_ones_on_the_loop(
    app: taskdb.App, serve: Serve
) -> None:
    await serve()
    loop_thread = threading.current_thread().name
    in_def = await (await thread_of_def.defer_async()).result(timeout=10)
    in_async = await (await thread_of_async.defer_async()).result(timeout=10)
    assert in_def[0].startswith(THREAD_PREFIX) and in_def[0] != loop_thread
    assert in_def[1] == "SyncJobContext"
    assert in_async == [loop_thread, "JobContext"]


async def test_a_def_task_reports_progress_and_sees_an_abort_from_its_thread(
    app: taskdb.App, serve: Serve
) -> None:
    await serve()
    handle = await until_aborted.defer_async()
    job = await eventually(handle.get, lambda job: job.progress == 40)
    assert (job.progress_message, job.progress_details) == ("halfway", {"step": 2})
    assert tasks_app.SEEN["thread"].startswith(THREAD_PREFIX)
    await handle.abort()
    with pytest.raises(AbortedJobError):
        await handle.result(timeout=10)
    assert tasks_app.SEEN["aborting"] is True


async def test_an_unknown_task_fails_at_once_and_is_logged(
    db: taskdb.Database, app: taskdb.App, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="taskdb")
    await serve("app")
    handle = await JobQueueClient(db, "app").submit({"x": 1}, task="tests.app.gone")
    with pytest.raises(TaskNotFound, match=r"'tests\.app\.gone'"):
        await handle.wait(timeout=10)
    job = await handle.get()
    assert (job.error_code, job.attempts) == ("TaskNotFound", 1)
    assert job.attempts < job.max_retries
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    # one line, the worker's, saying which task and which ones it has
    assert len(logged) == 1 and "'tests.app.gone'" in logged[0].getMessage(), caplog.text
    assert "it has: " in (job.error or "")
    nameless = await JobQueueClient(db, "app").submit(
        {"x": 1}
    )  # e.g. `taskdb submit` without --task
    with pytest.raises(TaskNotFound, match="no task name"):
        await nameless.wait(timeout=10)


async def test_configure_queue_runs_the_task_on_that_queue(app: taskdb.App, serve: Serve) -> None:
    await serve("other")  # not the task's own queue
    handle = await greet.configure(queue="other").defer_async(name="otto")
    assert await handle.result(timeout=10) == "hello otto"
    job = await handle.get()
    assert (job.queue, job.task) == ("other", greet.name)


async def test_configure_priority_and_run_after(app: taskdb.App, serve: Serve) -> None:
    in_an_hour = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    later = await record.configure(run_after=in_an_hour).defer_async(tag="later")
    low = await record.defer_async(tag="low")
    high = await record.configure(priority=5).defer_async(tag="high")
    await serve("app", workers=1)
    assert [await low.result(10), await high.result(10)] == ["low", "high"]
    assert tasks_app.RAN == ["high", "low"]
    job = await later.get()
    assert (job.status, job.attempts, job.run_after) == (JobStatus.PENDING, 0, in_an_hour)


async def test_configure_fingerprint_dedupes_while_the_job_is_active(
    app: taskdb.App, serve: Serve
) -> None:
    once = greet.configure(fingerprint="greet-ada")
    first = await once.defer_async(name="ada")
    assert (await once.defer_async(name="bob")).id == first.id
    assert (await asyncio.to_thread(once.defer, name="cy")).id == first.id
    await serve()
    assert await first.result(timeout=10) == "hello ada"
    after = await once.defer_async(name="dee")  # the first one ended: a new job
    assert after.id != first.id and await after.result(timeout=10) == "hello dee"


async def test_configure_max_retries(app: taskdb.App, serve: Serve) -> None:
    await serve()
    once_more = await fail.configure(max_retries=1).defer_async(message="boom")
    default = await fail.defer_async(message="bang")  # the App's max_retries=2
    with pytest.raises(JobError, match="boom") as failed:
        await once_more.result(timeout=10)
    assert failed.value.error_code == "RuntimeError"
    with pytest.raises(JobError, match="bang"):
        await default.result(timeout=10)
    assert [((j := await h.get()).attempts, j.max_retries) for h in (once_more, default)] == [
        (2, 1),
        (3, 2),
    ]


async def test_configure_durable_stream_can_be_followed(app: taskdb.App, serve: Serve) -> None:
    await serve()
    handle = await narrate.configure(durable_stream=True).defer_async(words=["one ", "two"])
    events = [event async for _, event in app.client("app").follow(handle.id)]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "one two"
    assert events[-1] == Finish({"output": 2})
    assert await handle.result(timeout=10) == 2


async def test_the_app_finds_a_jobs_typed_handle_by_its_id(
    db: taskdb.Database, app: taskdb.App, serve: Serve
) -> None:
    await serve()
    deferred = await tasks_app.report.defer_async(size=3)
    handle = await app.handle(deferred.id)  # a status endpoint knows only the id
    assert handle.task is tasks_app.report
    assert await handle.result(timeout=10) == tasks_app.Report(title="r", data=b"rrr")
    job = await handle.get()
    assert tasks_app.report.result_of(job) == tasks_app.Report(title="r", data=b"rrr")
    sync = await asyncio.to_thread(app.sync_handle, deferred.id)
    assert sync.task is tasks_app.report
    assert await asyncio.to_thread(sync.result, 0) == tasks_app.Report(title="r", data=b"rrr")
    with pytest.raises(taskdb.JobNotFound):
        await app.handle(2**63)

    raw = await JobQueueClient(db, "app").submit({"x": 1})
    with pytest.raises(taskdb.ConfigurationError, match="its queue's handler"):
        await app.handle(raw.id)
    foreign = await JobQueueClient(db, "app").submit({"x": 1}, task="elsewhere.task")
    with pytest.raises(taskdb.ConfigurationError, match=r"'elsewhere\.task'"):
        await asyncio.to_thread(app.sync_handle, foreign.id)


async def test_a_handle_of_the_wrong_task_refuses_to_type_its_result(
    app: taskdb.App, serve: Serve
) -> None:
    await serve()
    greeting = await greet.defer_async(name="ada")
    assert await greeting.result(timeout=10) == "hello ada"
    wrong = tasks_app.report.handle(greeting.id)  # a str would be read as a Report
    with pytest.raises(taskdb.ConfigurationError, match=r"runs task '.*greet', not task"):
        await wrong.result(timeout=10)
    running = await until_aborted.defer_async()
    with pytest.raises(taskdb.WaitTimeout):  # timeout=0: no waiting
        await running.result(timeout=0)
    await running.abort()
