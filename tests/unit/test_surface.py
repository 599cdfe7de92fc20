"""Public API, error tree, URL handling and small pure helpers."""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
from typing import Any

import pytest

import taskdb
from taskdb.core.durations import parse_duration
from taskdb.core.jobs import JobStatus, canonical_json, input_digest
from taskdb.errors import (
    AbortedJobError,
    JobError,
    RetryableJobError,
    TaskdbError,
    job_error_from_row,
)
from taskdb.queue.batcher import Batcher

SUBPACKAGES = [
    "taskdb.admin",
    "taskdb.app",
    "taskdb.cache",
    "taskdb.core",
    "taskdb.graph",
    "taskdb.queue",
    "taskdb.store",
    "taskdb.streams",
]


def isort_order(names: list[str]) -> list[str]:
    """Sorted as ruff's RUF022 sorts ``__all__``: constants, then classes, then the rest."""
    return sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n))


def test_all_is_sorted_and_importable() -> None:
    assert taskdb.__all__ == isort_order(taskdb.__all__)
    for name in taskdb.__all__:
        assert getattr(taskdb, name) is not None
    assert set(taskdb.__all__) <= set(dir(taskdb))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        taskdb.nothing  # noqa: B018


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_each_subpackage_exports_a_sorted_all(name: str) -> None:
    package = importlib.import_module(name)
    assert package.__all__ == isort_order(package.__all__)
    for attr in package.__all__:
        assert getattr(package, attr) is not None, attr


def test_every_public_name_comes_from_the_subpackage_that_owns_it() -> None:
    exported = {
        attr: getattr(importlib.import_module(name), attr)
        for name in SUBPACKAGES
        for attr in importlib.import_module(name).__all__
    }
    for name in taskdb.__all__:
        if name in taskdb.errors.__dict__:
            continue  # the error tree lives in taskdb.errors
        assert name in exported, f"taskdb.{name} is not exported by any subpackage"
        assert getattr(taskdb, name) is exported[name]


def test_import_taskdb_loads_no_heavy_module() -> None:
    code = "import sys, taskdb; print(sorted(m for m in sys.modules if m.split('.')[0] in "
    code += "('sqlalchemy', 'pydantic', 'psycopg', 'alembic', 'jsonschema', 'aiosqlite')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert loaded.stdout.strip() == "[]", loaded.stderr


def test_every_error_has_the_one_root() -> None:
    for name in taskdb.__all__:
        obj = getattr(taskdb, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, TaskdbError), name


def test_error_class_survives_its_code() -> None:
    err = job_error_from_row("AbortedJobError", "stop")
    assert type(err) is AbortedJobError and str(err) == "stop"
    retry = job_error_from_row("RetryableJobError", "again")
    assert type(retry) is RetryableJobError and retry.retry_at is None
    user = job_error_from_row("ZeroDivisionError", "division by zero")
    assert type(user) is JobError and user.error_code == "ZeroDivisionError"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://x/y", "unsupported database"),
        ("::::", "invalid database URL"),
        ("sqlite://", "SQLite file"),
        ("sqlite:///:memory:", "SQLite file"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(taskdb.ConfigurationError, match=message):
        taskdb.connect(url)


def test_urls_are_mapped_to_drivers_and_masked() -> None:
    db = taskdb.connect("postgresql://user:secret@db.example/app")
    assert db.dialect == "postgresql" and "secret" not in repr(db) and "***" in db.safe_url
    assert taskdb.connect("sqlite:///x.sqlite3").dialect == "sqlite"


def test_default_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKDB_URL", "sqlite:///from-env.sqlite3")
    assert taskdb.connect().safe_url == "sqlite+aiosqlite:///from-env.sqlite3"
    monkeypatch.delenv("TASKDB_URL")
    assert taskdb.connect().safe_url.endswith("taskdb.sqlite3")


async def test_close_inside_a_loop_points_to_aclose() -> None:
    db = taskdb.connect("sqlite:///unused.sqlite3")
    with pytest.raises(TaskdbError, match="aclose"):
        db.close()


async def test_a_plain_with_inside_a_loop_is_refused_before_its_body_runs() -> None:
    body_ran = False
    with (
        pytest.raises(TaskdbError, match="use `async with`"),
        taskdb.connect("sqlite:///unused.sqlite3"),
    ):
        body_ran = True
    assert not body_ran


def test_canonical_json_and_digest() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert input_digest({"b": 1, "a": 2}) == input_digest({"a": 2, "b": 1})
    with pytest.raises(taskdb.InvalidJobInput):
        canonical_json({"x": float("inf")})


def test_terminal_statuses() -> None:
    assert {s for s in JobStatus if s.terminal} == {
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.DISABLED,
    }


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


async def test_batcher_groups_concurrent_submissions() -> None:
    flushed: list[list[int]] = []
    gate = asyncio.Event()

    async def flush(items: Any) -> str:
        flushed.append(list(items))
        await gate.wait()
        return f"batch{len(flushed)}"

    batcher: Batcher[int, str] = Batcher(flush)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 5)]
    await asyncio.sleep(0)
    gate.set()
    assert await first == "batch1"
    assert [await r for r in rest] == ["batch2"] * 4
    assert flushed == [[0], [1, 2, 3, 4]]


async def test_batcher_passes_errors_to_every_submitter() -> None:
    async def flush(items: Any) -> None:
        raise taskdb.StorageError("down")

    batcher: Batcher[int, None] = Batcher(flush)
    results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert all(isinstance(r, taskdb.StorageError) for r in results)
