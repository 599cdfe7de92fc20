"""The job store: every queue statement, shared by both dialects.

Methods are domain verbs (submit, claim, heartbeat, finish, reap, ...). Each
runs in one transaction and records the transitions it makes in the change
feed (``taskdb_job_changes``) in that same transaction. Every method that
depends on time takes ``now`` so tests never sleep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import (
    Row,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from taskdb.errors import JobNotFound, LeaseLost, StorageError
from taskdb.queue.models import (
    TERMINAL_STATUSES,
    ChangeKind,
    Job,
    JobChange,
    JobStatus,
)
from taskdb.queue.retry import Complete, Fail, Outcome, Retry
from taskdb.store import postgres, sqlite
from taskdb.store.database import Database
from taskdb.store.schema import ACTIVE_STATUSES, UtcDateTime, job_changes, jobs, rate_limit_hits

M = TypeVar("M", bound=BaseModel)
_RUNNING = ("PROCESSING", "ABORTING")
_ABORTED = "AbortedJobError"
_SUBMIT_COLUMNS = (
    "ord",
    "input",
    "input_digest",
    "max_retries",
    "priority",
    "run_after",
    "deadline",
    "job_run_id",
)
_FINISH_COLUMNS = (
    "id",
    "attempts",
    "status",
    "output",
    "error",
    "error_code",
    "run_after",
    "completed_at",
)


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to insert (validated by the client)."""

    input: Any
    input_digest: str
    run_after: datetime
    max_retries: int
    priority: int = 0
    deadline: datetime | None = None
    fingerprint: str | None = None
    job_run_id: str | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """What fences a worker's writes to a job: the job id and the attempt it claimed."""

    job_id: int
    attempts: int


def _ts(value: datetime) -> Any:
    return literal(value, UtcDateTime)


def _model(model: type[M], row: Row[Any]) -> M:
    """Validate a row into a model; a malformed row is a StorageError, not a crash."""
    try:
        return model.model_validate(row._mapping)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise StorageError(f"malformed {model.__name__} row: {where}: {first['msg']}") from exc


# The change kind of a transition, derived from the row it left (for writes whose
# rows end in different states, such as a batch of outcomes).
_DERIVED_KIND = case(
    (jobs.c.status == JobStatus.COMPLETED.value, ChangeKind.COMPLETED.value),
    (
        and_(jobs.c.status == JobStatus.FAILED.value, jobs.c.error_code == _ABORTED),
        ChangeKind.ABORTED.value,
    ),
    (jobs.c.status == JobStatus.FAILED.value, ChangeKind.FAILED.value),
    (jobs.c.status == JobStatus.ABORTING.value, ChangeKind.ABORTING.value),
    else_=ChangeKind.RETRIED.value,
)
_CHANGE_FIELDS = ("job_id", "queue", "kind", "status", "attempts", "progress", "at")


class JobStore:
    """Queue statements over one :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._dialect = postgres if db.dialect == "postgresql" else sqlite

    # -- change feed ---------------------------------------------------------------

    async def _record(
        self,
        conn: AsyncConnection,
        ids: Sequence[int],
        now: datetime,
        kind: ChangeKind | None = None,
    ) -> None:
        """Append one change per job in ``ids``, read from the rows as they are now
        (``kind`` None: derive it from the status). One statement, no per-row Python."""
        if not ids:
            return
        source = select(
            jobs.c.id,
            jobs.c.queue,
            _DERIVED_KIND if kind is None else literal(kind.value),
            jobs.c.status,
            jobs.c.attempts,
            jobs.c.progress,
            _ts(now),
        ).where(self._dialect.id_in(jobs.c.id, ids))
        await conn.execute(
            insert(job_changes).from_select(_CHANGE_FIELDS, source.order_by(jobs.c.id))
        )

    async def _lock(self, conn: AsyncConnection, ids: Sequence[int]) -> None:
        """Lock rows in id order before a multi-row write, so that two writers of
        overlapping rows (a heartbeat and a batch of outcomes) cannot deadlock."""
        if self.db.dialect == "postgresql" and len(ids) > 1:
            await conn.execute(
                select(jobs.c.id)
                .where(self._dialect.id_in(jobs.c.id, ids))
                .order_by(jobs.c.id)
                .with_for_update()
            )

    _CHANGE_COLS = (jobs.c.id, jobs.c.queue, jobs.c.status, jobs.c.attempts, jobs.c.error_code)

    # -- submit --------------------------------------------------------------------

    async def submit(self, queue: str, new: Sequence[NewJob], now: datetime) -> list[int]:
        """Insert jobs; one id per item, in order. A fingerprint matching an active job
        of the queue returns that job's id and inserts nothing."""
        ids: list[int] = [0] * len(new)
        plain = [i for i, n in enumerate(new) if n.fingerprint is None]
        keyed = [i for i, n in enumerate(new) if n.fingerprint is not None]
        async with self.db.transaction() as conn:
            inserted: list[int] = []
            if plain:
                got = await self._insert_many(conn, queue, [new[i] for i in plain], now)
                inserted += got
                for i, job_id in zip(plain, got, strict=True):
                    ids[i] = job_id
            for i in keyed:
                fresh = await self._insert_deduped(conn, queue, new[i], now)
                if fresh is None:
                    ids[i] = await self._active_by_fingerprint(conn, queue, new[i].fingerprint)
                else:
                    ids[i] = fresh
                    inserted.append(fresh)
            await self._record(conn, inserted, now, ChangeKind.SUBMITTED)
        return ids

    async def _insert_many(
        self, conn: AsyncConnection, queue: str, new: Sequence[NewJob], now: datetime
    ) -> list[int]:
        """One INSERT ... SELECT over the batch as a JSON row source; ids in input order."""
        rows = [
            {
                "ord": i,
                "input": n.input,
                "input_digest": n.input_digest,
                "max_retries": n.max_retries,
                "priority": n.priority,
                "run_after": n.run_after,
                "deadline": n.deadline,
                "job_run_id": n.job_run_id,
            }
            for i, n in enumerate(new)
        ]
        v = self._dialect.batch_source(rows, _SUBMIT_COLUMNS)
        source = select(
            literal(queue),
            literal(JobStatus.PENDING.value),
            *(v.c[name] for name in _SUBMIT_COLUMNS[1:]),
            _ts(now),
            _ts(now),
        ).order_by(v.c.ord)
        stmt = (
            insert(jobs)
            .from_select(
                ["queue", "status", *_SUBMIT_COLUMNS[1:], "created_at", "updated_at"], source
            )
            .returning(jobs.c.id)
        )
        # ids come from the sequence in the order rows are inserted: the ORDER BY's.
        return sorted(int(i) for i in (await conn.scalars(stmt)).all())

    async def _insert_deduped(
        self, conn: AsyncConnection, queue: str, new: NewJob, now: datetime
    ) -> int | None:
        stmt = (
            self._dialect.insert(jobs)
            .values(
                queue=queue,
                status=JobStatus.PENDING.value,
                input=new.input,
                input_digest=new.input_digest,
                max_retries=new.max_retries,
                priority=new.priority,
                run_after=new.run_after,
                deadline=new.deadline,
                fingerprint=new.fingerprint,
                job_run_id=new.job_run_id,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(
                index_elements=[jobs.c.queue, jobs.c.fingerprint],
                index_where=and_(
                    jobs.c.status.in_(ACTIVE_STATUSES), jobs.c.fingerprint.is_not(None)
                ),
            )
            .returning(jobs.c.id)
        )
        found = await conn.scalar(stmt)
        return None if found is None else int(found)

    async def _active_by_fingerprint(
        self, conn: AsyncConnection, queue: str, fingerprint: str | None
    ) -> int:
        found = await conn.scalar(
            select(jobs.c.id).where(
                jobs.c.queue == queue,
                jobs.c.fingerprint == fingerprint,
                jobs.c.status.in_(ACTIVE_STATUSES),
            )
        )
        if found is None:  # the active twin ended between our INSERT and SELECT
            raise LeaseLost(f"fingerprint {fingerprint!r} changed state during submit; retry")
        return int(found)

    # -- reads -----------------------------------------------------------------------

    async def get(self, job_id: int) -> Job:
        async with self.db.transaction(write=False) as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        if row is None:
            raise JobNotFound(job_id)
        return _model(Job, row)

    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        status: Sequence[str] | None = None,
        limit: int = 100,
        newest_first: bool = True,
    ) -> list[Job]:
        stmt = select(jobs)
        if queue is not None:
            stmt = stmt.where(jobs.c.queue == queue)
        if status:
            stmt = stmt.where(jobs.c.status.in_(status))
        stmt = stmt.order_by(jobs.c.id.desc() if newest_first else jobs.c.id).limit(limit)
        async with self.db.transaction(write=False) as conn:
            rows = (await conn.execute(stmt)).all()
        return [_model(Job, r) for r in rows]

    async def output_for_input(self, queue: str, digest: str) -> tuple[bool, Any]:
        """``(found, output)`` of the newest completed job of ``queue`` with this input."""
        stmt = (
            select(jobs.c.output)
            .where(
                jobs.c.queue == queue,
                jobs.c.input_digest == digest,
                jobs.c.status == JobStatus.COMPLETED.value,
            )
            .order_by(jobs.c.id.desc())
            .limit(1)
        )
        async with self.db.transaction(write=False) as conn:
            row = (await conn.execute(stmt)).first()
        return (False, None) if row is None else (True, row.output)

    async def counts(self) -> list[tuple[str, str, int]]:
        """``(queue, status, count)`` for every queue and status present."""
        stmt = select(jobs.c.queue, jobs.c.status, func.count()).group_by(
            jobs.c.queue, jobs.c.status
        )
        async with self.db.transaction(write=False) as conn:
            return [(r[0], r[1], int(r[2])) for r in (await conn.execute(stmt)).all()]

    async def changes_head(self) -> int:
        """The newest change-feed cursor (0 when empty)."""
        async with self.db.transaction(write=False) as conn:
            return int(
                await conn.scalar(select(func.coalesce(func.max(job_changes.c.seq), 0))) or 0
            )

    async def changes(
        self,
        after_seq: int = 0,
        *,
        queue: str | None = None,
        job_id: int | None = None,
        limit: int = 1000,
    ) -> list[JobChange]:
        stmt = select(job_changes).where(job_changes.c.seq > after_seq)
        if queue is not None:
            stmt = stmt.where(job_changes.c.queue == queue)
        if job_id is not None:
            stmt = stmt.where(job_changes.c.job_id == job_id)
        stmt = stmt.order_by(job_changes.c.seq).limit(limit)
        async with self.db.transaction(write=False) as conn:
            rows = (await conn.execute(stmt)).all()
        return [_model(JobChange, r) for r in rows]

    # -- worker side -----------------------------------------------------------------

    async def claim(
        self, queue: str, worker_id: str, limit: int, now: datetime, lease_seconds: float
    ) -> list[Job]:
        """Atomically take up to ``limit`` runnable jobs: highest priority, then
        ``run_after``, then submission order. No job is ever handed to two claims."""
        runnable = (
            select(jobs.c.id)
            .where(
                jobs.c.queue == queue,
                jobs.c.status == JobStatus.PENDING.value,
                jobs.c.run_after <= now,
                or_(jobs.c.deadline.is_(None), jobs.c.deadline > now),
            )
            .order_by(jobs.c.priority.desc(), jobs.c.run_after, jobs.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(jobs)
            .where(jobs.c.id.in_(runnable.scalar_subquery()))
            .values(
                status=JobStatus.PROCESSING.value,
                worker_id=worker_id,
                attempts=jobs.c.attempts + 1,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                updated_at=now,
            )
            .returning(*jobs.c)
        )
        async with self.db.transaction() as conn:
            rows = (await conn.execute(stmt)).all()
            await self._record(conn, [r.id for r in rows], now, ChangeKind.CLAIMED)
        claimed = [_model(Job, r) for r in rows]
        claimed.sort(key=lambda j: (-j.priority, j.run_after, j.id))
        return claimed

    async def heartbeat(
        self, worker_id: str, claims: Sequence[Claim], now: datetime, lease_seconds: float
    ) -> dict[int, JobStatus]:
        """Extend the leases of ``claims``; returns the status of each claim still held."""
        if not claims:
            return {}
        stmt = (
            update(jobs)
            .where(
                jobs.c.id.in_([c.job_id for c in claims]),
                jobs.c.worker_id == worker_id,
                jobs.c.status.in_(_RUNNING),
            )
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
            .returning(jobs.c.id, jobs.c.attempts, jobs.c.status)
        )
        async with self.db.transaction() as conn:
            await self._lock(conn, [c.job_id for c in claims])
            rows = (await conn.execute(stmt)).all()
        held = {(c.job_id, c.attempts) for c in claims}
        return {r.id: JobStatus(r.status) for r in rows if (r.id, r.attempts) in held}

    async def aborting(self, claims: Sequence[Claim]) -> set[int]:
        """Which of ``claims`` were asked to abort (a read: cheap to poll)."""
        if not claims:
            return set()
        stmt = select(jobs.c.id).where(
            jobs.c.id.in_([c.job_id for c in claims]),
            jobs.c.status == JobStatus.ABORTING.value,
        )
        async with self.db.transaction(write=False) as conn:
            found: list[int] = list((await conn.scalars(stmt)).all())
        return set(found)

    async def update_progress(
        self,
        worker_id: str,
        claim: Claim,
        progress: float,
        message: str | None,
        details: Any,
        now: datetime,
    ) -> JobStatus:
        """Store progress; raises :class:`LeaseLost` when the claim is no longer held."""
        stmt = (
            update(jobs)
            .where(
                jobs.c.id == claim.job_id,
                jobs.c.worker_id == worker_id,
                jobs.c.attempts == claim.attempts,
                jobs.c.status.in_(_RUNNING),
            )
            .values(
                progress=progress,
                progress_message=message,
                progress_details=details,
                updated_at=now,
            )
            .returning(*self._CHANGE_COLS, jobs.c.progress)
        )
        async with self.db.transaction() as conn:
            row = (await conn.execute(stmt)).first()
            if row is None:
                raise LeaseLost(f"job {claim.job_id}: this worker no longer holds it")
            await self._record(conn, [row.id], now, ChangeKind.PROGRESS)
        return JobStatus(row.status)

    async def finish(
        self, worker_id: str, items: Sequence[tuple[Claim, Outcome]], now: datetime
    ) -> dict[int, JobStatus]:
        """Record the outcomes of claims in one statement.

        Fenced: only claims this worker still holds at that attempt are written;
        the result maps each written job id to its new status. A job being
        aborted ends FAILED with ``AbortedJobError`` whatever its outcome.
        """
        if not items:
            return {}
        rows = [self._finish_row(claim, outcome, now) for claim, outcome in items]
        v = self._dialect.batch_source(rows, _FINISH_COLUMNS)
        aborting = jobs.c.status == JobStatus.ABORTING.value
        stmt = (
            update(jobs)
            .where(
                jobs.c.id == v.c.id,
                jobs.c.attempts == v.c.attempts,
                jobs.c.worker_id == worker_id,
                jobs.c.status.in_(_RUNNING),
            )
            .values(
                status=case((aborting, JobStatus.FAILED.value), else_=v.c.status),
                output=case((aborting, null()), else_=v.c.output),
                error=case((aborting, "aborted"), else_=v.c.error),
                error_code=case((aborting, _ABORTED), else_=v.c.error_code),
                run_after=func.coalesce(v.c.run_after, jobs.c.run_after),
                completed_at=case((aborting, _ts(now)), else_=v.c.completed_at),
                worker_id=None,
                lease_expires_at=None,
                updated_at=now,
            )
            .returning(*self._CHANGE_COLS)
        )
        async with self.db.transaction() as conn:
            await self._lock(conn, [claim.job_id for claim, _ in items])
            done = (await conn.execute(stmt)).all()
            await self._record(conn, [r.id for r in done], now)
        return {r.id: JobStatus(r.status) for r in done}

    @staticmethod
    def _finish_row(claim: Claim, outcome: Outcome, now: datetime) -> dict[str, Any]:
        row: dict[str, Any] = {"id": claim.job_id, "attempts": claim.attempts}
        if isinstance(outcome, Complete):
            row.update(status="COMPLETED", output=outcome.output, completed_at=now)
        elif isinstance(outcome, Retry):
            row.update(
                status="PENDING",
                error=outcome.error,
                error_code=outcome.error_code,
                run_after=outcome.run_after,
            )
        elif isinstance(outcome, Fail):
            row.update(
                status="FAILED",
                error=outcome.error,
                error_code=outcome.error_code,
                completed_at=now,
            )
        for name in _FINISH_COLUMNS:
            row.setdefault(name, None)
        return row

    async def release(self, worker_id: str, claims: Sequence[Claim], now: datetime) -> int:
        """Give claims back untouched (graceful stop): PENDING, the attempt not counted."""
        if not claims:
            return 0
        stmt = (
            update(jobs)
            .where(
                jobs.c.id.in_([c.job_id for c in claims]),
                jobs.c.worker_id == worker_id,
                jobs.c.status == JobStatus.PROCESSING.value,
            )
            .values(
                status=JobStatus.PENDING.value,
                attempts=jobs.c.attempts - 1,
                worker_id=None,
                lease_expires_at=None,
                run_after=now,
                updated_at=now,
            )
            .returning(*self._CHANGE_COLS)
        )
        async with self.db.transaction() as conn:
            rows = (await conn.execute(stmt)).all()
            await self._record(conn, [r.id for r in rows], now, ChangeKind.RELEASED)
        return len(rows)

    async def reap(self, queue: str, now: datetime) -> int:
        """Recover jobs whose worker died and fail jobs whose deadline passed.

        A running job whose lease expired goes back to PENDING (FAILED with
        ``LeaseExpired`` once its retries are used up, or ``AbortedJobError``
        if it was being aborted); a pending job past its deadline fails.
        """
        expired_abort = jobs.c.status == JobStatus.ABORTING.value
        out_of_retries = jobs.c.attempts > jobs.c.max_retries
        ends = or_(expired_abort, out_of_retries)
        lease_stmt = (
            update(jobs)
            .where(
                jobs.c.queue == queue,
                jobs.c.status.in_(_RUNNING),
                jobs.c.lease_expires_at < now,
            )
            .values(
                status=case((ends, JobStatus.FAILED.value), else_=JobStatus.PENDING.value),
                error=case(
                    (expired_abort, "aborted (its worker stopped)"),
                    else_="lease expired: the worker stopped renewing it",
                ),
                error_code=case((expired_abort, _ABORTED), else_="LeaseExpired"),
                completed_at=case((ends, _ts(now)), else_=null()),
                worker_id=None,
                lease_expires_at=None,
                run_after=now,
                updated_at=now,
            )
            .returning(*self._CHANGE_COLS)
        )
        deadline_stmt = (
            update(jobs)
            .where(
                jobs.c.queue == queue,
                jobs.c.status == JobStatus.PENDING.value,
                jobs.c.deadline <= now,
            )
            .values(
                status=JobStatus.FAILED.value,
                error="deadline passed before the job could run",
                error_code="DeadlineExceeded",
                completed_at=now,
                updated_at=now,
            )
            .returning(*self._CHANGE_COLS)
        )
        async with self.db.transaction() as conn:
            leased = (await conn.execute(lease_stmt)).all()
            requeued = [r.id for r in leased if r.status == JobStatus.PENDING.value]
            await self._record(conn, requeued, now, ChangeKind.REQUEUED)
            await self._record(conn, [r.id for r in leased if r.id not in requeued], now)
            late = (await conn.execute(deadline_stmt)).all()
            await self._record(conn, [r.id for r in late], now)
        return len(leased) + len(late)

    @staticmethod
    async def _require_job(conn: AsyncConnection, job_id: int) -> None:
        if await conn.scalar(select(jobs.c.id).where(jobs.c.id == job_id)) is None:
            raise JobNotFound(job_id)

    # -- client side -----------------------------------------------------------------

    async def abort(
        self, now: datetime, *, job_id: int | None = None, job_run_id: str | None = None
    ) -> int:
        """Abort one job or a whole run: PENDING ends FAILED at once, running jobs
        become ABORTING (their worker cancels them). Returns how many changed."""
        pending = jobs.c.status == JobStatus.PENDING.value
        stmt = (
            update(jobs)
            .where(jobs.c.status.in_(ACTIVE_STATUSES), jobs.c.status != "ABORTING")
            .values(
                status=case((pending, JobStatus.FAILED.value), else_=JobStatus.ABORTING.value),
                error=case((pending, "aborted"), else_=jobs.c.error),
                error_code=case((pending, _ABORTED), else_=jobs.c.error_code),
                completed_at=case((pending, _ts(now)), else_=jobs.c.completed_at),
                updated_at=now,
            )
            .returning(*self._CHANGE_COLS)
        )
        if job_id is not None:
            stmt = stmt.where(jobs.c.id == job_id)
        if job_run_id is not None:
            stmt = stmt.where(jobs.c.job_run_id == job_run_id)
        async with self.db.transaction() as conn:
            rows = (await conn.execute(stmt)).all()
            if not rows and job_id is not None:
                await self._require_job(conn, job_id)
            await self._record(conn, [r.id for r in rows], now)
        return len(rows)

    async def retry_now(self, job_id: int, now: datetime) -> bool:
        """Put a FAILED job back to PENDING for one more run (admin action)."""
        stmt = (
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == JobStatus.FAILED.value)
            .values(
                status=JobStatus.PENDING.value,
                max_retries=func.max(jobs.c.max_retries, jobs.c.attempts)
                if self.db.dialect == "sqlite"
                else func.greatest(jobs.c.max_retries, jobs.c.attempts),
                run_after=now,
                completed_at=None,
                updated_at=now,
            )
            .returning(*self._CHANGE_COLS)
        )
        async with self.db.transaction() as conn:
            rows = (await conn.execute(stmt)).all()
            if not rows:
                await self._require_job(conn, job_id)
            await self._record(conn, [r.id for r in rows], now, ChangeKind.RETRIED)
        return bool(rows)

    async def purge(
        self,
        older_than: datetime,
        now: datetime,
        *,
        queue: str | None = None,
        statuses: Sequence[str] = TERMINAL_STATUSES,
    ) -> int:
        """Delete terminal jobs that ended before ``older_than``."""
        ended = [s for s in statuses if s in TERMINAL_STATUSES]
        doomed = select(jobs.c.id).where(
            jobs.c.status.in_(ended),
            func.coalesce(jobs.c.completed_at, jobs.c.updated_at) < older_than,
        )
        if queue is not None:
            doomed = doomed.where(jobs.c.queue == queue)
        async with self.db.transaction() as conn:
            ids: list[int] = list((await conn.scalars(doomed.with_for_update())).all())
            await self._record(conn, ids, now, ChangeKind.PURGED)
            if ids:
                await conn.execute(delete(jobs).where(self._dialect.id_in(jobs.c.id, ids)))
        return len(ids)

    # -- rate limits -------------------------------------------------------------------

    async def take_rate_slots(
        self, queue: str, want: int, limit: int, window_seconds: float, now: datetime
    ) -> tuple[list[int], datetime | None]:
        """Reserve up to ``want`` executions in the sliding window, across processes.

        Returns the reserved hit ids and, when fewer than ``want`` were free,
        when the next slot frees up.
        """
        start = now - timedelta(seconds=window_seconds)
        hits = rate_limit_hits
        async with self.db.transaction() as conn:
            lock = self._dialect.advisory_lock_sql()
            if lock is not None:
                await conn.execute(text(lock), {"key": f"taskdb-rate:{queue}"})
            await conn.execute(delete(hits).where(hits.c.queue == queue, hits.c.at <= start))
            query = select(hits.c.at).where(hits.c.queue == queue).order_by(hits.c.at)
            in_window: list[datetime] = list((await conn.scalars(query)).all())
            grant = max(0, min(want, limit - len(in_window)))
            ids: list[int] = []
            if grant:
                result = await conn.execute(
                    insert(hits).returning(hits.c.id, sort_by_parameter_order=True),
                    [{"queue": queue, "at": now}] * grant,
                )
                ids = [int(i) for i in result.scalars().all()]
        # The window is full: the next slot frees when its oldest hit ages out.
        oldest = in_window[0] if in_window else now
        next_free = oldest + timedelta(seconds=window_seconds) if grant < want else None
        return ids, next_free

    async def return_rate_slots(self, ids: Sequence[int]) -> None:
        if ids:
            async with self.db.transaction() as conn:
                await conn.execute(delete(rate_limit_hits).where(rate_limit_hits.c.id.in_(ids)))
