"""The chaos harness, small: 300 jobs, 3 real worker processes, two kill -9s and (on
PostgreSQL) one restart of the private cluster; nothing lost, doubled or wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import Plan, run
from tests.conftest import DIALECTS
from tests.pgserver import PrivateCluster


@pytest.fixture(params=DIALECTS)
def target(request: pytest.FixtureRequest) -> tuple[str, PrivateCluster | None]:
    """A migrated database, and on PostgreSQL the private cluster serving it."""
    if request.param == "sqlite":
        return request.getfixturevalue("fresh_sqlite_url"), None
    return request.getfixturevalue("private_pg_url"), request.getfixturevalue("private_pg")


async def test_300_jobs_survive_kills_and_a_restart(
    target: tuple[str, PrivateCluster | None], tmp_path: Path
) -> None:
    url, cluster = target
    # kills by progress, not by the clock: a quiet machine runs the 300 jobs in ~3 s
    plan = Plan(300, 3, kill_at=(0.2, 0.7), max_kills=2, restart_at=0.5, timeout=120)
    result = await run(url, plan, tmp_path, cluster, restart_note="skipped: SQLite has no server")
    report = result.report()
    print(report)
    assert result.kills == 2, report
    if cluster is not None:
        assert result.recovery_seconds is not None, report
    assert result.findings.completed == 300, report
    assert result.problems() == [], report
