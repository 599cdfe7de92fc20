"""``taskdb submit --task`` and ``taskdb wait`` with typed tasks (click's CliRunner,
run in a thread: the commands run their own event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import taskdb
from taskdb.cli import cli
from tests.app.conftest import Serve
from tests.app.tasks_app import add, fail, greet, report, resize


async def taskdb_cli(db_url: str, *args: str, stdin: str | None = None) -> Result:
    """``taskdb ARGS --db DB_URL`` (stdout and stderr apart)."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, cli, [*args, "--db", db_url], input=stdin)


async def test_wait_prints_the_output_and_exits_by_how_the_job_ended(
    db_url: str, app: taskdb.App, serve: Serve
) -> None:
    await serve("app")
    done = await resize.defer_async(name="cat", width=100, scale=0.5)
    failed = await fail.configure(max_retries=0).defer_async(message="boom")
    assert await done.result(timeout=10) == "cat@50"
    with contextlib.suppress(taskdb.JobError):
        await failed.result(timeout=10)
    not_yet = greet.configure(run_after=datetime.now(UTC) + timedelta(hours=1))
    aborted, pending = await not_yet.defer_async(name="a"), await not_yet.defer_async(name="p")
    await aborted.abort()

    ok = await taskdb_cli(db_url, "wait", str(done.id))
    assert (ok.exit_code, json.loads(ok.stdout)) == (0, "cat@50")
    bad = await taskdb_cli(db_url, "wait", str(failed.id))
    assert bad.exit_code == 1 and "RuntimeError: boom" in bad.stderr
    assert (await taskdb_cli(db_url, "wait", str(aborted.id))).exit_code == 2
    late = await taskdb_cli(db_url, "wait", str(pending.id), "--timeout", "0.2s")
    assert late.exit_code == 3 and "still PENDING" in late.stderr


async def test_submit_a_task_from_stdin_or_a_file(
    db_url: str, app: taskdb.App, serve: Serve, tmp_path: Path
) -> None:
    piped = await taskdb_cli(
        db_url, "submit", "app", "-", "--task", greet.name, stdin='{"name": "ada", "excited": true}'
    )
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"name": "bob"}))
    filed = await taskdb_cli(db_url, "submit", "app", f"@{payload}", "--task", greet.name)
    misspelt = await taskdb_cli(db_url, "submit", "app", '{"nom": "cy"}', "--task", greet.name)
    assert [r.exit_code for r in (piped, filed, misspelt)] == [0, 0, 0]
    await serve("app")
    assert await greet.handle(int(piped.stdout)).result(timeout=10) == "hello ada!"
    assert await greet.handle(int(filed.stdout)).result(timeout=10) == "hello bob"
    refused = await taskdb_cli(db_url, "wait", misspelt.stdout.strip())
    assert refused.exit_code == 1 and "InvalidJobInput" in refused.stderr
    assert "name: Field required" in refused.stderr


async def test_defer_checks_the_arguments_and_applies_the_tasks_options(
    db_url: str, db: taskdb.Database, app: taskdb.App, serve: Serve
) -> None:
    target = "tests.app.tasks_app:app"

    async def defer(*args: str) -> Result:
        result = await taskdb_cli(db_url, "defer", target, *args)
        app.bind(db)  # the command bound the module's app to a database of its own
        return result

    async def job(result: Result) -> taskdb.Job:
        assert result.exit_code == 0, result.output
        return await taskdb.Admin(db).get_job(int(result.stdout))

    greeted = await job(await defer("greet", '{"name": "ada", "excited": true}'))
    assert (greeted.queue, greeted.task, greeted.max_retries, greeted.priority) == (
        "app",
        greet.name,
        2,
        0,
    )
    reported = await job(await defer(report.name, '{"size": 3}', "--priority", "5"))
    assert (reported.queue, reported.max_retries, reported.priority) == ("reports", 2, 5)
    moved = await job(
        await defer(greet.name, '{"name": "cy"}', "-q", "elsewhere", "--max-retries", "0")
    )
    assert (moved.queue, moved.task, moved.max_retries) == ("elsewhere", greet.name, 0)
    await serve("app")
    assert await greet.handle(greeted.id).result(timeout=10) == "hello ada!"

    before = len(await taskdb.Admin(db).list_jobs())
    for args, message in [
        ((greet.name, '{"nom": "cy"}'), "name: Field required"),
        ((greet.name, "[1]"), "ARGUMENTS must be a JSON object"),
        (("nope", "{}"), f"has no task 'nope' (its tasks: {add.name}, "),
    ]:
        refused = await defer(*args)
        assert refused.exit_code == 1 and message in refused.stderr, refused.output
        assert refused.stderr.strip().count("\n") == 0 and "Traceback" not in refused.output
    not_an_app = await taskdb_cli(db_url, "defer", "tests.app.tasks_app:greet", "greet")
    assert not_an_app.exit_code == 1 and "is not an App" in not_an_app.stderr
    assert len(await taskdb.Admin(db).list_jobs()) == before


async def test_defer_without_db_uses_the_apps_own_database_and_names_ambiguous_tasks(
    db_url: str, db: taskdb.Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``--db`` on the command line the App keeps its own database (as
    ``taskdb worker`` does); a function name two tasks share is refused."""
    module = f"twin_tasks_{uuid.uuid4().hex[:8]}"  # (imported modules are cached)
    (tmp_path / f"{module}.py").write_text(
        "import taskdb\n"
        f"app = taskdb.App({db_url!r}, queue='twins')\n"
        "@app.task(name='one.greet')\n"
        "def greet_one(name: str) -> str:\n    return name\n"
        "@app.task(name='two.greet')\n"
        "def greet_two(name: str) -> str:\n    return name\n"
    )
    monkeypatch.chdir(tmp_path)  # MODULE:APP imports from the current directory
    monkeypatch.delenv("TASKDB_URL", raising=False)
    runner = CliRunner()

    def defer(*args: str) -> Result:
        return runner.invoke(cli, ["defer", f"{module}:app", *args])

    ambiguous = await asyncio.to_thread(defer, "greet", '{"name": "x"}')
    assert ambiguous.exit_code == 1, ambiguous.output
    assert "several tasks named 'greet' (its tasks: one.greet, two.greet)" in ambiguous.stderr
    done = await asyncio.to_thread(defer, "two.greet", '{"name": "x"}')
    assert done.exit_code == 0, done.output
    job = await taskdb.Admin(db).get_job(int(done.stdout))  # in the App's database
    assert (job.queue, job.task, job.input) == ("twins", "two.greet", {"name": "x"})
