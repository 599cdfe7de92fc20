"""The CLI through click's CliRunner, on both dialects; the worker as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import taskdb
from taskdb.cli import cli

ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_every_command_has_help() -> None:
    def walk(group: object, prefix: list[str]) -> list[list[str]]:
        import click

        assert isinstance(group, click.Group)
        found = []
        for name, command in group.commands.items():
            assert command.help, f"{' '.join([*prefix, name])} has no help text"
            found.append([*prefix, name])
            if isinstance(command, click.Group):
                found += walk(command, [*prefix, name])
        return found

    for path in walk(cli, []):
        result = invoke(*path, "--help")
        assert result.exit_code == 0, path
        assert "Usage:" in result.output


def test_migrate_and_check(empty_db_url: str) -> None:
    behind = invoke("migrate", "--check", "--db", empty_db_url)
    assert behind.exit_code == 1 and "run `taskdb migrate`" in behind.output
    assert invoke("migrate", "--db", empty_db_url).exit_code == 0
    ok = invoke("migrate", "--check", "--db", empty_db_url)
    assert ok.exit_code == 0 and "up to date" in ok.output


def test_submit_list_show_abort_retry_purge(db_url: str) -> None:
    result = invoke("submit", "mail", '{"to": "a@example.com"}', "--db", db_url, "--priority", "3")
    assert result.exit_code == 0, result.output
    job_id = result.output.strip()
    listed = json.loads(invoke("jobs", "--db", db_url, "--json").output)
    assert [(str(j["id"]), j["queue"], j["status"], j["priority"]) for j in listed] == [
        (job_id, "mail", "PENDING", 3)
    ]
    shown = json.loads(invoke("job", "show", job_id, "--db", db_url, "--json").output)
    assert shown["input"] == {"to": "a@example.com"}
    assert "PENDING" in invoke("job", "show", job_id, "--db", db_url).output
    assert "aborted" in invoke("job", "abort", job_id, "--db", db_url).output
    assert "already ended" in invoke("job", "abort", job_id, "--db", db_url).output
    assert "PENDING again" in invoke("job", "retry", job_id, "--db", db_url).output
    counts = json.loads(invoke("stats", "--db", db_url, "--json").output)
    assert counts == [{"queue": "mail", "status": "PENDING", "count": 1}]
    invoke("job", "abort", job_id, "--db", db_url)
    purged = invoke("job", "purge", "--older-than", "0s", "--db", db_url)
    assert purged.output.strip() == "purged 1 job(s)"
    assert json.loads(invoke("jobs", "--db", db_url, "--json").output) == []


def test_submit_dedupes_by_fingerprint(db_url: str) -> None:
    first = invoke("submit", "q", "{}", "--fingerprint", "k", "--db", db_url).output
    second = invoke("submit", "q", '{"x": 1}', "--fingerprint", "k", "--db", db_url).output
    assert first == second


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "q", "{not json"], "payload is not valid JSON"),
        (["submit", "q", "{}", "--run-after", "tomorrow"], "bad time"),
        (["submit", "q", "{}", "--run-after", "2026-01-01T00:00:00"], "no timezone"),
        (["job", "show", "424242"], "job 424242 not found"),
        (["job", "abort", "424242"], "job 424242 not found"),
        (["job", "retry", "424242"], "job 424242 not found"),
        (["job", "purge", "--older-than", "soon"], "bad duration"),
        (["job", "purge", "--older-than", "1d", "-s", "pending"], "only ended jobs"),
        (["worker", "nodots", "-q", "x"], "module:function"),
        (["worker", "no_such_module_xyz:f", "-q", "x"], "cannot import"),
    ],
)
def test_bad_input_is_one_clear_line(db_url: str, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, [*args, "--db", db_url])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0, result.output


def test_database_errors_are_one_line_and_hide_passwords(tmp_path: Path) -> None:
    cases = [
        ("postgresql://admin:s3cret@127.0.0.1:1/nope", "unavailable"),
        ("mysql://u:s3cret@localhost/x", "unsupported database"),
        ("not a url", "invalid database URL"),
        (f"sqlite:///{tmp_path / 'empty.sqlite3'}", "run `taskdb migrate`"),
    ]
    for url, message in cases:
        result = CliRunner().invoke(cli, ["jobs", "--db", url])
        assert result.exit_code == 1, (url, result.output)
        assert message in result.output, (url, result.output)
        assert "s3cret" not in result.output
        assert "Traceback" not in result.output


def test_worker_process_serves_jobs_and_stops_gracefully(db_url: str, tmp_path: Path) -> None:
    handler_module = tmp_path / "handlers_for_cli_test.py"
    handler_module.write_text("async def shout(value, ctx):\n    return value['text'].upper()\n")
    job_id = invoke("submit", "cli", '{"text": "hello"}', "--db", db_url).output.strip()
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskdb", "worker", "handlers_for_cli_test:shout",
         "--queue", "cli", "--db", db_url, "--poll", "0.05"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            shown = json.loads(invoke("job", "show", job_id, "--db", db_url, "--json").output)
            if shown["status"] == "COMPLETED":
                break
            time.sleep(0.05)
        assert shown["output"] == "HELLO"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 0, stderr
        assert "stopped: 1 completed" in stderr
    finally:
        proc.kill()


def test_version() -> None:
    assert taskdb.__name__ in invoke("--version").output
