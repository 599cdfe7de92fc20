"""``python -m tests.chaos``: the full-size chaos runs of ``make chaos``.

PostgreSQL runs on a private cluster (:mod:`tests.pgserver`) restarted mid-run;
where none can be made, on a scratch database of ``TASKDB_TEST_PG_URL`` with
the restart skipped and the reason printed (under ``TASKDB_REQUIRE_PG=1``:
an error). Exits 1 when any run lost, duplicated or corrupted anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from pathlib import Path

import taskdb
from tests.chaos.harness import Plan, Result, run
from tests.pgserver import ClusterUnavailable, private_cluster


def _migrated(url: str) -> str:
    taskdb.connect(url).migrate()  # (opens no pool: nothing to close)
    return url


async def _postgres(plan: Plan, logs: Path) -> Result:
    try:
        with private_cluster() as cluster:
            return await run(_migrated(cluster.create_database()), plan, logs, cluster)
    except ClusterUnavailable as exc:
        if os.environ.get("TASKDB_REQUIRE_PG") == "1":
            raise
        reason = f"skipped: no private cluster ({str(exc).splitlines()[0]})"
        print(f"PostgreSQL restart {reason}", file=sys.stderr)
        from tests.conftest import scratch_pg_database

        with scratch_pg_database() as url:
            return await run(_migrated(url), plan, logs, None, restart_note=reason)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--dialect", choices=["postgresql", "sqlite", "both"], default="both")
    parser.add_argument("--pg-jobs", type=int, default=5000)
    parser.add_argument("--pg-workers", type=int, default=4)
    parser.add_argument("--sqlite-jobs", type=int, default=2000)
    parser.add_argument("--sqlite-workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    failed = False
    with tempfile.TemporaryDirectory(prefix="taskdb-chaos-") as tmp:
        logs = Path(tmp)
        results: list[Result] = []
        if args.dialect in ("postgresql", "both"):
            plan = Plan(args.pg_jobs, args.pg_workers, seed=args.seed)
            results.append(asyncio.run(_postgres(plan, logs)))
            print(results[-1].report(), flush=True)
        if args.dialect in ("sqlite", "both"):
            plan = Plan(args.sqlite_jobs, args.sqlite_workers, restart_at=None, seed=args.seed)
            url = _migrated(f"sqlite:///{logs / 'chaos.sqlite3'}")
            note = "skipped: SQLite has no server to restart"
            results.append(asyncio.run(run(url, plan, logs, None, restart_note=note)))
            print(results[-1].report(), flush=True)
        failed = any(r.problems() for r in results)
        if failed:
            with contextlib.suppress(OSError):
                for log in sorted(logs.glob("worker*.log")):
                    tail = log.read_text(errors="replace")[-1500:]
                    if "Traceback" in tail or "ERROR" in tail:
                        print(f"--- {log.name} ---\n{tail}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
