"""What a worker writes to stderr: its start and stop, and every failed attempt with
its traceback, as text or as one JSON object per line."""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path

import taskdb
from tests.cli.helpers import reap, taskdb_process

HANDLER = """
async def boom(value, ctx):
    raise ValueError("the handler broke")
"""


def _submit_failing(db_url: str) -> int:
    db = taskdb.connect(db_url)
    try:
        return taskdb.SyncJobQueueClient(db, "q").submit({}, max_retries=1).id
    finally:
        db.close()


def _run_worker(db_url: str, tmp_path: Path, *options: str) -> str:
    """Run a worker until its job failed twice (one retry), stop it; its stderr."""
    (tmp_path / "failing.py").write_text(textwrap.dedent(HANDLER))
    _submit_failing(db_url)
    proc = taskdb_process(
        "worker", "failing:boom", "-q", "q", "--poll", "0.05", "--retry-base", "0.01",
        *options, db_url=db_url, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        while not lines or "attempt 2 failed" not in lines[-1]:  # the retry failed too
            line = proc.stderr.readline()
            assert line, f"the worker ended early: {lines}"
            lines.append(line)
        proc.send_signal(signal.SIGTERM)
        _out, rest = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
        return "".join(lines) + rest
    finally:
        reap(proc)


def test_a_failing_job_leaves_its_traceback_in_the_text_log(db_url: str, tmp_path: Path) -> None:
    log = _run_worker(db_url, tmp_path)
    assert "INFO taskdb.server: worker" in log and "serves queue 'q'" in log
    assert "WARNING taskdb.server: job 1 (queue 'q', task -) attempt 1 failed" in log
    assert "ERROR taskdb.server: job 1 (queue 'q', task -) attempt 2 failed" in log
    assert 'raise ValueError("the handler broke")' in log  # the traceback's source line


def test_json_log_lines_carry_the_job_and_the_traceback(db_url: str, tmp_path: Path) -> None:
    log = _run_worker(db_url, tmp_path, "--log-format", "json")
    # every line is JSON, the worker's own start and stop lines too
    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert records and all(set(r) >= {"time", "level", "logger", "message"} for r in records)
    own = [r["message"] for r in records if r["logger"] == "taskdb.cli"]
    assert any(m.startswith("stopped: ") for m in own), own
    failed = [r for r in records if r.get("job_id") == 1]
    assert [(r["level"], r["attempt"], r["queue"]) for r in failed] == [
        ("WARNING", 1, "q"),
        ("ERROR", 2, "q"),
    ]
    assert all("ValueError: the handler broke" in r["traceback"] for r in failed)
