"""The chaos checker: what a run left in the database, judged against the workload.

Read after every worker stopped and ``gc`` ran. Each finding is a list of job
ids (or blob keys) so the report can name them:

- lost: a submitted job that is not terminal (or has no row at all);
- failed: a job that failed (none may: every job has retries to spare);
- completed twice: more than one ``completed`` change of a job in the change
  feed, or a stored output whose run token is that of an earlier attempt than
  the job's last claim (a stale worker's completion won);
- wrong output: the stored output (refs resolved) differs from what the handler
  returns for that input, or carries a run token no handler run recorded;
- orphans: blob rows no job or cache row refers to, chunk rows of no blob,
  PostgreSQL large objects no blob row holds;
- stream: offsets from ``follow`` not 0, 1, 2, ... or a last attempt whose
  events differ from what the handler emitted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, select, text

import taskdb
from taskdb.store.schema import jobs as jobs_table
from taskdb.store.schema import task_outputs
from taskdb.streams import Finish, Phase, TextDelta
from tests.chaos.workload import QUEUE, RUNS_TABLE, expected, stream_texts


@dataclass
class Findings:
    jobs: int = 0
    completed: int = 0
    runs: int = 0  # handler runs that returned (re-runs after a kill included)
    lost: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    completed_twice: list[int] = field(default_factory=list)
    wrong_output: list[int] = field(default_factory=list)
    orphan_blobs: list[str] = field(default_factory=list)
    orphan_large_objects: list[int] = field(default_factory=list)
    orphan_chunks: int = 0
    orphans_linked: int = 0  # of orphan_blobs: still linked to a row that does not refer to it
    stream_errors: list[str] = field(default_factory=list)
    streams_checked: int = 0
    blobs_checked: int = 0

    def problems(self) -> list[str]:
        """One line per kind of violation (empty: the run kept every promise)."""
        found = [
            ("lost (not terminal)", self.lost),
            ("failed", self.failed),
            ("completed twice", self.completed_twice),
            ("wrong output", self.wrong_output),
            (
                f"orphan blobs after gc ({self.orphans_linked} linked to a row not "
                "referring to them)",
                self.orphan_blobs,
            ),
            ("orphan large objects after gc", self.orphan_large_objects),
            ("stream offsets/content", self.stream_errors),
        ]
        lines = [f"{name}: {len(items)} {items[:10]}" for name, items in found if items]
        if self.orphan_chunks:
            lines.append(f"orphan blob chunk rows after gc: {self.orphan_chunks}")
        return lines


def cache_refs(value: Any) -> Iterator[str]:
    """Keys of every CacheRef inside a stored JSON value."""
    if isinstance(value, dict):
        if taskdb.is_cache_ref(value):
            yield value["$ref"]
        for item in value.values():
            yield from cache_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from cache_refs(item)


async def _rows(db: taskdb.Database, query: str | Select[Any]) -> list[Any]:
    async with db.transaction(write=False) as conn:
        stmt = text(query) if isinstance(query, str) else query
        return list((await conn.execute(stmt)).all())


async def check(db: taskdb.Database, submitted: list[int]) -> Findings:
    """Judge the run whose jobs are ``submitted`` (ids) on queue ``chaos``."""
    found = Findings(jobs=len(submitted))
    client = taskdb.JobQueueClient(db, QUEUE)
    repo = taskdb.SqlTaskOutputRepository(db)
    jobs = {r.id: r for r in await _rows(db, select(jobs_table).where(jobs_table.c.queue == QUEUE))}
    runs = {r.token: r for r in await _rows(db, f"SELECT * FROM {RUNS_TABLE}")}
    found.runs = len(runs)
    completions: dict[int, int] = {
        r.job_id: r.n
        for r in await _rows(
            db,
            "SELECT job_id, count(*) AS n FROM taskdb_job_changes "
            f"WHERE kind = 'completed' AND queue = '{QUEUE}' GROUP BY job_id",
        )
    }
    for job_id in submitted:
        job = jobs.get(job_id)
        if job is None or job.status not in ("COMPLETED", "FAILED"):
            found.lost.append(job_id)
            continue
        if job.status == "FAILED":
            found.failed.append((job_id, str(job.error)[:200]))
            if completions.get(job_id):
                found.completed_twice.append(job_id)
            continue
        found.completed += 1
        run = runs.get((job.output or {}).get("run"))
        if completions.get(job_id, 0) != 1 or (run is not None and run.attempt != job.attempts):
            found.completed_twice.append(job_id)
        if run is None or run.job_id != job_id or not await _output_ok(job, repo, found):
            found.wrong_output.append(job_id)
        if job.durable_stream:
            await _check_stream(client, job, found)
    await _check_orphans(db, found)
    return found


async def _output_ok(job: Any, repo: taskdb.SqlTaskOutputRepository, found: Findings) -> bool:
    output = {k: v for k, v in job.output.items() if k != "run"}
    want = expected(job.input)
    if "data" in want:
        ref = output.get("data")
        if not taskdb.is_cache_ref(ref):
            return False
        blob = await repo.get_output_by_ref(ref)
        found.blobs_checked += 1
        if blob is None or blob.read() != want.pop("data"):
            return False
        output.pop("data")
    return bool(output == want)


async def _check_stream(client: taskdb.JobQueueClient, job: Any, found: Findings) -> None:
    found.streams_checked += 1
    offsets: list[int] = []
    last_attempt: list[Any] = []
    async for offset, event in client.follow(job.id, poll_interval=0.05):
        offsets.append(offset)
        if isinstance(event, Phase) and event.message.startswith("attempt "):
            last_attempt = []
        else:
            last_attempt.append(event)
    if offsets != list(range(len(offsets))):
        found.stream_errors.append(f"job {job.id}: offsets {offsets}")
        return
    texts = [e.text for e in last_attempt if isinstance(e, TextDelta)]
    final = last_attempt[-1] if last_attempt else None
    if (
        texts != stream_texts(job.input["n"])
        or not isinstance(final, Finish)
        or final.data.get("output") != job.output
    ):
        found.stream_errors.append(f"job {job.id}: last attempt {last_attempt!r:.300}")


async def _check_orphans(db: taskdb.Database, found: Findings) -> None:
    referenced: set[str] = set()
    for query in (select(jobs_table.c.output), select(task_outputs.c.output)):
        for (output,) in await _rows(db, query):
            referenced.update(cache_refs(output))
    blobs = await _rows(db, "SELECT key FROM taskdb_blobs")
    found.orphan_blobs = sorted(r.key for r in blobs if r.key not in referenced)
    linked = {r.blob_key for r in await _rows(db, "SELECT blob_key FROM taskdb_blob_links")}
    found.orphans_linked = len(linked.intersection(found.orphan_blobs))
    if db.dialect == "postgresql":
        found.orphan_large_objects = [
            r.oid
            for r in await _rows(
                db,
                "SELECT oid::bigint AS oid FROM pg_largeobject_metadata WHERE oid::bigint "
                "NOT IN (SELECT oid FROM taskdb_blobs WHERE oid IS NOT NULL)",
            )
        ]
    ((found.orphan_chunks,),) = await _rows(
        db,
        "SELECT count(*) FROM taskdb_blob_chunks "
        "WHERE blob_id NOT IN (SELECT id FROM taskdb_blobs)",
    )
