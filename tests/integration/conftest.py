"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import taskdb
from taskdb import JobQueueClient, JobQueueServer
from tests.integration.procs import Procs

FAST = {"poll_interval": 0.02, "lease_seconds": 5.0, "abort_poll_interval": 0.05}
"""Server options that keep in-process tests quick (short polls, leases, abort checks)."""


@pytest.fixture
def procs(db_url: str, tmp_path: Path) -> Iterator[Procs]:
    """Worker subprocesses on the test's database, all killed at teardown."""
    with Procs(db_url, tmp_path) as p:
        yield p


@pytest.fixture
def client(db: taskdb.Database) -> JobQueueClient:
    return JobQueueClient(db, "q", poll_interval=0.02)


@pytest.fixture
async def serve(db: taskdb.Database) -> AsyncIterator[Callable[..., Any]]:
    """Start servers of queue ``q`` (``FAST`` unless overridden); stopped at the end."""
    servers: list[JobQueueServer] = []

    async def start(handler: Any, **options: Any) -> JobQueueServer:
        for key, value in FAST.items():
            options.setdefault(key, value)
        server = JobQueueServer(
            options.pop("db", db), options.pop("queue", "q"), handler, **options
        )
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(timeout=1)
