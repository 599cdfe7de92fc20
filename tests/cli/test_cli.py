"""The CLI through click's CliRunner, on both dialects; the worker as a real process."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import sqlalchemy

import taskdb
from taskdb.cli import cli
from taskdb.cli.app import COMMANDS
from tests.cli.helpers import invoke, invoke_failing, run_job, taskdb_process

PG_DOWN = "postgresql://admin:s3cret@127.0.0.1:1/nope"


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and subcommand of ``group``, as argument paths."""
    found = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found += command_paths(command, (*prefix, name))
    return found


def command_at(path: tuple[str, ...]) -> click.Command:
    """The command at ``path`` (loaded, as running it would)."""
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        found = command.get_command(click.Context(command), name)
        assert found is not None, path
        command = found
    return command


def test_every_command_and_option_has_help() -> None:
    for path in command_paths(cli):
        command = command_at(path)
        assert command.help, f"taskdb {' '.join(path)} has no help text"
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"taskdb {' '.join(path)} {param.opts[0]} has no help"
        result = invoke(*path, "--help")
        assert result.exit_code == 0, path
        assert result.output.startswith(f"Usage: cli {' '.join(path)}"), result.output


def test_the_command_list_imports_no_command() -> None:
    """`taskdb --help` lists every command from the table alone: no command module,
    nor the library beneath them, is imported."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from taskdb.cli import cli\n"
        "result = CliRunner().invoke(cli, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "heavy = ('sqlalchemy', 'pydantic', 'psycopg', 'starlette', 'taskdb.store')\n"
        "print(result.output)\n"
        "print('imported:', sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.rstrip().endswith("imported: []"), done.stdout
    for name, entry in COMMANDS.items():
        assert f"  {name} " in done.stdout and entry.summary in done.stdout
        assert command_at((name,)).name == name


def test_migrate_and_check(empty_db_url: str) -> None:
    behind = invoke("migrate", "--check", "--db", empty_db_url)
    assert behind.exit_code == 1 and "run `taskdb migrate`" in behind.output
    assert invoke("migrate", "--db", empty_db_url).exit_code == 0
    ok = invoke("migrate", "--check", "--db", empty_db_url)
    assert ok.exit_code == 0 and "up to date" in ok.output


def test_migrate_refuses_a_database_a_newer_taskdb_migrated(empty_db_url: str) -> None:
    assert invoke("migrate", "--db", empty_db_url).exit_code == 0
    engine = sqlalchemy.create_engine(
        empty_db_url.replace("postgresql://", "postgresql+psycopg://")
    )
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE taskdb_alembic_version SET version_num = '9999'")
    engine.dispose()
    result = invoke_failing("migrate", "--db", empty_db_url)
    assert result.exit_code == 1 and "which this taskdb does not know" in result.output
    assert result.output.strip().count("\n") == 0, result.output


def test_submit_list_show_abort_retry_purge(db_url: str) -> None:
    result = invoke("submit", "mail", '{"to": "a@example.com"}', "--db", db_url, "--priority", "3")
    assert result.exit_code == 0, result.output
    job_id = result.output.strip()
    listed = json.loads(invoke("jobs", "--db", db_url, "--json").output)
    assert [(str(j["id"]), j["queue"], j["status"], j["priority"]) for j in listed] == [
        (job_id, "mail", "PENDING", 3)
    ]
    assert "mail" in invoke("jobs", "--db", db_url, "--queue", "mail").output
    shown = json.loads(invoke("job", "show", job_id, "--db", db_url, "--json").output)
    assert shown["input"] == {"to": "a@example.com"}
    assert "PENDING" in invoke("job", "show", job_id, "--db", db_url).output
    assert "aborted" in invoke("job", "abort", job_id, "--db", db_url).output
    assert "already ended" in invoke("job", "abort", job_id, "--db", db_url).output
    assert "PENDING again" in invoke("job", "retry", job_id, "--db", db_url).output
    not_failed = invoke_failing("job", "retry", job_id, "--db", db_url)
    assert not_failed.exit_code == 1 and "not FAILED" in not_failed.output
    invoke("job", "abort", job_id, "--db", db_url)
    purged = invoke("job", "purge", "--older-than", "0s", "--db", db_url)
    assert purged.output.strip() == "purged 1 job(s)"
    assert json.loads(invoke("jobs", "--db", db_url, "--json").output) == []


def test_jobs_show_and_filter_by_task_and_text(db_url: str) -> None:
    typed = invoke("submit", "q", "{}", "--task", "resize_image", "--db", db_url).output.strip()
    plain = invoke("submit", "q", "{}", "--fingerprint", "nightly-42", "--db", db_url).output
    by_task = json.loads(invoke("jobs", "--task", "resize_image", "--db", db_url, "--json").output)
    assert [str(j["id"]) for j in by_task] == [typed]
    by_text = json.loads(invoke("jobs", "--text", "NIGHTLY", "--db", db_url, "--json").output)
    assert [str(j["id"]) for j in by_text] == [plain.strip()]
    table = invoke("jobs", "--db", db_url).output
    assert "task" in table.splitlines()[1] and "resize_image" in table
    assert "resize_image" in invoke("job", "show", typed, "--db", db_url).output


def test_submit_options(db_url: str) -> None:
    first = invoke("submit", "q", "{}", "--fingerprint", "k", "--db", db_url).output
    second = invoke("submit", "q", '{"x": 1}', "--fingerprint", "k", "--db", db_url).output
    assert first == second  # deduped
    args = ["--run-after", "1h", "--deadline", "2099-01-01T00:00:00+00:00", "--max-retries", "7"]
    job_id = invoke("submit", "q", "[1]", "--durable-stream", *args, "--db", db_url).output
    row = json.loads(invoke("job", "show", job_id.strip(), "--db", db_url, "--json").output)
    assert (row["max_retries"], row["durable_stream"], row["deadline"][:4]) == (7, True, "2099")
    assert row["run_after"] > row["created_at"]


def test_stats(db_url: str) -> None:
    async def handler(value: Any, ctx: taskdb.JobContext) -> Any:
        return {"blob": b"\x01" * 100_000}

    run_job(db_url, handler, queue="done")
    invoke("submit", "waiting", "{}", "--db", db_url)
    invoke("submit", "later", "{}", "--run-after", "1h", "--db", db_url)
    stats = json.loads(invoke("stats", "--db", db_url, "--json").output)
    queues = {q["queue"]: q for q in stats["queues"]}
    assert queues["done"]["counts"] == {"COMPLETED": 1}
    assert queues["done"]["completed_last_minute"] == 1
    assert queues["done"]["oldest_pending_seconds"] is None
    assert queues["waiting"]["counts"] == {"PENDING": 1}
    assert 0 <= queues["waiting"]["oldest_pending_seconds"] < 60
    assert queues["later"]["oldest_pending_seconds"] is None  # not ready yet
    assert stats["blobs"] == {"count": 1, "bytes": 100_000, "writing": 0}
    table = invoke("stats", "--db", db_url).output
    assert "waiting" in table and "blobs: 1 holding 97.7 KiB" in table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "q", "{not json"], "payload is not valid JSON"),
        (["submit", "q", "{}", "--run-after", "tomorrow"], "bad time"),
        (["submit", "q", "{}", "--deadline", "2026-01-01T00:00:00"], "no timezone"),
        (["job", "show", "424242"], "job 424242 not found"),
        (["job", "show", "abc"], "'abc' is not a valid integer"),
        (["job", "abort", "424242"], "job 424242 not found"),
        (["job", "retry", "424242"], "job 424242 not found"),
        (["job", "purge", "--older-than", "soon"], "bad duration"),
        (["job", "purge", "--older-than", "1d", "-s", "pending"], "only ended jobs"),
        (["jobs", "--status", "sleeping"], "'sleeping' is not one of"),
        (["jobs", "-q", "a", "-q", "b"], "give --queue at most once"),
        (["worker", "nodots", "-q", "x"], "module:attr"),
        (["worker", "taskdb:JobQueueClient", "-q", "x"], "cannot be made with the database"),
        (["worker", "json:dumps", "-q", "x", "--lease", "nan"], "lease_seconds must be a finite"),
        (["worker", "json:dumps", "-q", "x", "--poll", "inf"], "poll_interval must be a finite"),
        (["worker", "json:dumps", "-q", "x", "--stop-timeout", "-1"], "stop_timeout must be"),
        (["worker", "json:dumps", "-q", "x", "--concurrency", "0"], "0 is not in the range x>=1"),
        (["worker", "json:dumps", "-q", "x", "--rate", "5"], "bad rate"),
        (["worker", "json:dumps", "-q", "x", "--rate", "0/s"], "bad rate"),
        (["worker", "json:dumps", "-q", "x", "--retry-base", "soon"], "bad duration"),
        (["worker", "json:dumps", "-q", "x", "--scope", "planet"], "'planet' is not one of"),
        (["worker", "json:dumps"], "a handler serves the queues named with --queue"),
        (["wait", "424242"], "job 424242 not found"),
        (["wait", "1", "--timeout", "soon"], "bad duration"),
        (["submit", "q", "@/no/such/file.json"], "cannot read the payload file"),
        (["worker", "no_such_module_xyz:f", "-q", "x"], "cannot import"),
        (["worker", "json:nothing_here", "-q", "x"], "is neither an App nor a callable"),
        (["worker", "json:dumps", "-q", "x", "--import", "no_such_xyz"], "cannot import"),
        (["gc", "--grace", "soon"], "bad duration"),
        (["blob", "cat", "0123456789abcdef0123456789abcdef"], "no committed blob"),
        (["blob", "cat", '{"$ref": "x"}'], "not a CacheRef"),
        (["blob", "cat", "{oops"], "not a CacheRef: invalid JSON"),
        (["blob", "cat", "424242"], "job 424242 not found"),
        (["watch", "--job", "424242"], "job 424242 not found"),
        (["watch", "--follow-stream"], "--follow-stream needs --job"),
        (["watch", "--timeout", "soon"], "bad duration"),
        (["watch", "--after", "nonsense"], "not a change-feed cursor"),
        (["watch", "--poll", "-1"], "poll_interval must be"),
        (["jobs", "--limit", "-1"], "limit must be an int >= 1"),
        (["job", "show", "99999999999999999999"], "not found"),
        (["job", "purge", "--older-than", "99999999999999999d"], "at most 100 years"),
        (["gc", "--grace", "9999999999999999999999d"], "at most 100 years"),
        (["submit", "q", "{}", "--run-after", "99999999999999d"], "at most 100 years"),
        (["submit", "q", "[" * 5000 + "]" * 5000], "nested too deeply"),
        (["submit", "q", '{"a": "\\u0000"}'], "\\u0000"),
        (["demo", "--jobs", "-1"], "-1 is not in the range"),
        (["demo", "--workers", "0"], "0 is not in the range"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_bad_input_is_one_clear_line(db_url: str, args: list[str], message: str) -> None:
    result = invoke_failing(*args, "--db", db_url)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    "args",
    [
        ["jobs"],
        ["job", "show", "1"],
        ["submit", "q", "{}"],
        ["stats"],
        ["blob", "ls"],
        ["blob", "cat", "1"],
        ["gc"],
        ["watch"],
        ["migrate"],
        ["migrate", "--check"],
    ],
)
def test_an_unreachable_database_is_one_line_without_the_password(args: list[str]) -> None:
    result = invoke_failing(*args, "--db", PG_DOWN)
    assert result.exit_code == 1, result.output
    assert "unavailable" in result.output and "***" in result.output
    assert "s3cret" not in result.output and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0, result.output


def test_bad_urls_and_old_schemas_are_one_line(tmp_path: Path) -> None:
    cases = [
        ("mysql://u:s3cret@localhost/x", "unsupported database"),
        ("not a url", "invalid database URL"),
        (f"sqlite:///{tmp_path / 'empty.sqlite3'}", "run `taskdb migrate`"),
    ]
    for url, message in cases:
        for args in (["jobs"], ["stats"], ["blob", "ls"]):
            result = invoke_failing(*args, "--db", url)
            assert result.exit_code == 1, (url, result.output)
            assert message in result.output, (url, result.output)
            assert "s3cret" not in result.output
            assert result.output.strip().count("\n") == 0, result.output


def test_worker_process_serves_jobs_and_stops_gracefully(db_url: str, tmp_path: Path) -> None:
    handler_module = tmp_path / "handlers_for_cli_test.py"
    handler_module.write_text(
        "import gc\n"
        "async def shout(value, ctx):\n"
        "    return [value['text'].upper(), gc.get_freeze_count() > 0]\n"
    )
    job_id = invoke("submit", "cli", '{"text": "hello"}', "--db", db_url).output.strip()
    proc = taskdb_process(
        "worker", "handlers_for_cli_test:shout", "--queue", "cli", "--poll", "0.05",
        db_url=db_url, cwd=tmp_path,
    )  # fmt: skip
    try:
        wait = invoke("watch", "--job", job_id, "--timeout", "30s", "--db", db_url)
        assert wait.exit_code == 0, wait.output
        shown = json.loads(invoke("job", "show", job_id, "--db", db_url, "--json").output)
        # ... and the worker had frozen its start-up heap out of the collector's reach
        assert shown["output"] == ["HELLO", True]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 0, stderr
        assert "stopped: 1 completed" in stderr
    finally:
        proc.kill()


def test_graph_worker_process_streams_a_binary_that_blob_cat_returns(db_url: str) -> None:
    """`taskdb worker taskdb:GraphJobHandler --import MODULE` runs submitted graphs."""
    from taskdb.cli.demo import RenderVideo  # registers demo.RenderVideo here too

    proc = taskdb_process(
        "worker", "taskdb:GraphJobHandler", "--import", "taskdb.cli.demo", "--queue", "graphs",
        "--poll", "0.05", db_url=db_url,
    )  # fmt: skip
    try:
        graph = taskdb.TaskGraph()
        graph.add(RenderVideo("render", mib=3, seed=7))

        async def submit() -> int:
            async with taskdb.connect(db_url) as db:
                client = taskdb.JobQueueClient(db, "graphs", poll_interval=0.05)
                handle = await taskdb.submit_graph(client, graph)
                await handle.wait(timeout=60)
                return handle.id

        job_id = str(asyncio.run(submit()))
        shown = invoke("job", "show", job_id, "--db", db_url).output
        assert "<ref 3.0 MiB video/mp4>" in shown
        output = json.loads(invoke("job", "show", job_id, "--db", db_url, "--json").output)
        produced = output["output"]["outputs"]["render"]["sha256"]
        streamed = invoke("blob", "cat", job_id, "--db", db_url)
        assert streamed.exit_code == 0
        assert hashlib.sha256(streamed.stdout_bytes).hexdigest() == produced
        assert len(streamed.stdout_bytes) == 3 * 2**20
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


def test_demo_tells_the_whole_story(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    proc = taskdb_process("demo", "--jobs", "2", "--mib", "8", db_url=url, cwd=tmp_path)
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 0, stdout + stderr
    for expected in (
        "flaky-upload.bin failed on attempt 1 and completed on attempt 2",
        "streamed 8.0 MiB into the database",
        "the checksums match",
        "exited 0",
    ):
        assert expected in " ".join(stdout.split()), stdout
    assert "completed" in stdout and "AbortedJobError" in stdout


def test_version() -> None:
    assert taskdb.__name__ in invoke("--version").output


def test_a_worker_fails_fast_on_a_database_it_cannot_use(empty_db_url: str) -> None:
    """Behind head (never migrated) or unreachable: one line, before claiming anything."""
    behind = invoke_failing("worker", "json:dumps", "-q", "x", "--db", empty_db_url)
    assert behind.exit_code == 1 and "run `taskdb migrate`" in behind.output
    assert behind.output.strip().count("\n") == 0, behind.output
    away = invoke_failing("worker", "json:dumps", "-q", "x", "--db", "postgresql://u@127.0.0.1:1/x")
    assert away.exit_code == 1 and "unavailable" in away.output and "Traceback" not in away.output
