"""Run the chaos workload: real ``taskdb worker`` processes, kill -9s, a PostgreSQL
restart, then ``gc`` and the checker (:mod:`tests.chaos.checker`).

Every ``kill_interval`` seconds from the first job done, or at each fraction
``kill_at`` of the jobs done (at most ``max_kills`` times), a random worker is
killed -9 and a new one started in its place. A
worker that exits by itself is a finding, unless it refused to start while the
database was down (fail-fast, as specified): that one is simply started again,
as a supervisor would. Once ``restart_at`` of the
jobs are terminal, the private PostgreSQL cluster is restarted (``pg_ctl
restart -m fast``, or stopped for ``outage`` seconds and started). The run
ends when every job is terminal (or at ``timeout``); the workers are then
stopped with SIGTERM, ``gc`` runs with no grace, and the checker reads what is left.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from sqlalchemy import select, text

import taskdb
from taskdb.store.schema import jobs as jobs_table
from tests.chaos.checker import Findings, check
from tests.chaos.workload import QUEUE, RUNS_DDL, inputs
from tests.pgserver import PrivateCluster

ROOT = Path(__file__).resolve().parents[2]
HANDLER = "tests.chaos.handler:handle"


@dataclass
class Plan:
    jobs: int
    workers: int
    concurrency: int = 8
    max_sleep: float = 0.1  # each job sleeps uniformly up to this
    kill_interval: float = 1.0
    max_kills: int | None = None  # None: until the run ends
    # fractions of jobs terminal at which to kill one worker each (instead of the
    # interval): a fast machine finishes a small run before an interval passes
    kill_at: tuple[float, ...] = ()
    restart_at: float | None = 0.5  # fraction of jobs terminal; None: no restart
    restart_mode: str = "fast"
    outage: float = 0.0  # > 0: stop, wait this long, start (else pg_ctl restart)
    lease: float = 3.0
    poll: float = 0.1
    timeout: float = 600.0
    seed: int = 1


@dataclass
class Result:
    dialect: str
    plan: Plan
    findings: Findings
    seconds: float = 0.0
    kills: int = 0
    died_alone: list[str] = field(default_factory=list)  # workers that exited unasked
    refused_to_start: int = 0  # workers started while the database was away
    restart_note: str = ""
    outage_seconds: float | None = None
    recovery_seconds: float | None = None
    gc_removed: int = 0

    def problems(self) -> list[str]:
        lines = self.findings.problems()
        if self.died_alone:
            lines.append(f"workers exited by themselves: {self.died_alone}")
        return lines

    def report(self) -> str:
        f, p = self.findings, self.plan
        rate = f.jobs / self.seconds if self.seconds else 0.0
        recovery = "n/a" if self.recovery_seconds is None else f"{self.recovery_seconds:.2f} s"
        outage = "n/a" if self.outage_seconds is None else f"{self.outage_seconds:.2f} s"
        lines = [
            f"chaos {self.dialect}: {f.jobs} jobs, {p.workers} workers x {p.concurrency} slots, "
            f"lease {p.lease:g} s, jobs sleep 0-{p.max_sleep * 1000:.0f} ms",
            f"  ran {self.seconds:.1f} s ({rate:.0f} jobs/s); kill -9s: {self.kills}; "
            f"restart: {self.restart_note or 'none'}; workers that refused to start while "
            f"the database was down (restarted): {self.refused_to_start}",
            f"  database down {outage}; first completion after it came back: {recovery}",
            f"  completed {f.completed}, failed {len(f.failed)}, lost {len(f.lost)}; "
            f"handler runs {f.runs} ({f.runs - f.completed} re-runs after kills)",
            f"  completed twice {len(f.completed_twice)}, wrong outputs {len(f.wrong_output)} "
            f"({f.blobs_checked} blobs read back), streams checked {f.streams_checked} "
            f"with {len(f.stream_errors)} offset/content errors",
            f"  gc removed {self.gc_removed}; orphans after gc: {len(f.orphan_blobs)} blobs, "
            f"({f.orphans_linked} still linked to a job not referring to them), "
            f"{len(f.orphan_large_objects)} large objects, {f.orphan_chunks} chunk rows",
        ]
        problems = self.problems()
        lines.append("  RESULT: " + ("OK" if not problems else "FAILED"))
        lines += [f"  - {line}" for line in problems]
        return "\n".join(lines)


class _Workers:
    """The worker processes of a run; logs go to files in ``logs``."""

    def __init__(self, url: str, plan: Plan, logs: Path) -> None:
        self.url, self.plan, self.logs = url, plan, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []
        self._count = 0

    def spawn(self) -> None:
        self._count += 1
        name = f"worker{self._count}"
        log = (self.logs / f"{name}.log").open("wb")
        self._files.append(log)
        cmd = [
            sys.executable, "-m", "taskdb", "worker", HANDLER, "-q", QUEUE,
            "--concurrency", str(self.plan.concurrency), "--lease", str(self.plan.lease),
            "--poll", str(self.plan.poll), "--stop-timeout", "10",
        ]  # fmt: skip
        env = {**os.environ, "TASKDB_URL": self.url, "PYTHONPATH": str(ROOT)}
        self.procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)

    def kill_one(self, rng: random.Random) -> None:
        name = rng.choice(sorted(self.procs))
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.spawn()

    def reap(self) -> tuple[list[str], int]:
        """Workers that exited although nobody asked them to, and how many refused
        to start because the database was away (fail-fast, as specified); each is
        replaced, as a supervisor (systemd ``Restart=always``) would."""
        died, refused = [], 0
        for name, proc in list(self.procs.items()):
            if proc.poll() is None:
                continue
            del self.procs[name]
            self.spawn()
            log = (self.logs / f"{name}.log").read_text(errors="replace")
            if proc.returncode == 1 and log.startswith("Error: database ") and "unavailable" in log:
                refused += 1
            else:
                died.append(f"{name} (exit {proc.returncode})")
        return died, refused

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._files:
            log.close()


async def _terminal(db: taskdb.Database) -> int | None:
    try:
        async with db.transaction(write=False) as conn:
            found = await conn.scalar(
                text(
                    "SELECT count(*) FROM taskdb_jobs WHERE queue = :q "
                    "AND status IN ('COMPLETED', 'FAILED')"
                ),
                {"q": QUEUE},
            )
    except taskdb.StorageError:
        return None  # the database is away (restarting)
    return int(found or 0)


async def run(
    url: str, plan: Plan, logs: Path, cluster: PrivateCluster | None = None, restart_note: str = ""
) -> Result:
    """Run ``plan`` against the migrated database at ``url`` (``cluster``: the private
    server behind it, restarted mid-run; ``None``: no restart, ``restart_note`` says why)."""
    db = taskdb.connect(url, listen=False)
    result = Result(db.dialect, plan, Findings(), restart_note=restart_note)
    async with db.transaction() as conn:
        await conn.execute(text(RUNS_DDL))
    client = taskdb.JobQueueClient(db, QUEUE)
    work = inputs(plan.jobs, plan.seed, plan.max_sleep)
    ids: list[int] = []
    for durable in (False, True):
        batch = [v for v in work if (v["kind"] == "stream") == durable]
        for i in range(0, len(batch), 1000):
            handles = await client.submit_batch(
                batch[i : i + 1000], max_retries=100, durable_stream=durable
            )
            ids += [h.id for h in handles]
    rng = random.Random(plan.seed)
    workers = _Workers(url, plan, logs)
    for _ in range(plan.workers):
        workers.spawn()
    began = time.monotonic()
    next_kill: float | None = None  # kills start once the workers are at work
    down_at: datetime | None = None
    up_at: datetime | None = None
    restart_pending = cluster is not None and plan.restart_at is not None
    try:
        while time.monotonic() - began < plan.timeout:
            done = await _terminal(db)
            if done == len(ids):
                break
            died, refused = workers.reap()
            result.died_alone += died
            result.refused_to_start += refused
            if (
                restart_pending
                and cluster is not None
                and plan.restart_at is not None
                and done is not None
                and done >= plan.restart_at * len(ids)
            ):
                restart_pending = False
                down_at = datetime.now(UTC)
                if plan.outage > 0:
                    await asyncio.to_thread(cluster.stop, plan.restart_mode)
                    await asyncio.sleep(plan.outage)
                    await asyncio.to_thread(cluster.start)
                else:
                    await asyncio.to_thread(cluster.restart, plan.restart_mode)
                up_at = datetime.now(UTC)
                result.restart_note = f"pg_ctl -m {plan.restart_mode} at {done} jobs done"
            max_kills = plan.max_kills if plan.max_kills is not None else 1 << 30
            if plan.kill_at:
                due = sum(1 for f in plan.kill_at if done is not None and done >= f * len(ids))
                if result.kills < min(due, max_kills):
                    workers.kill_one(rng)
                    result.kills += 1
            else:
                if next_kill is None and done:
                    next_kill = time.monotonic() + plan.kill_interval
                if (
                    next_kill is not None
                    and result.kills < max_kills
                    and time.monotonic() >= next_kill
                ):
                    workers.kill_one(rng)
                    result.kills += 1
                    next_kill += plan.kill_interval
            await asyncio.sleep(0.01 if plan.kill_at else 0.05)
        result.seconds = time.monotonic() - began
    finally:
        workers.stop()
    if down_at is not None and up_at is not None:
        result.outage_seconds = (up_at - down_at).total_seconds()
        async with db.transaction(write=False) as conn:
            stamps = (await conn.execute(select(jobs_table.c.completed_at))).scalars().all()
        after = [t for t in stamps if t is not None and t >= up_at]
        if after:
            result.recovery_seconds = (min(after) - up_at).total_seconds()
    report = await taskdb.Admin(db).gc(grace_seconds=0, stale_seconds=0)
    result.gc_removed = report.blobs_removed + report.stale_writers_removed
    result.findings = await check(db, ids)
    await db.aclose()
    return result
