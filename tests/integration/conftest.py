"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.procs import Procs


@pytest.fixture
def procs(db_url: str, tmp_path: Path) -> Iterator[Procs]:
    """Worker subprocesses on the test's database, all killed at teardown."""
    with Procs(db_url, tmp_path) as p:
        yield p
