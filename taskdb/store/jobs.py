"""The job store: the queue's lifecycle as domain verbs over one database.

Submit, claim, heartbeat, finish, release, reap, abort, retry, purge, and the
reads. Each runs in one transaction (a single statement where the dialect
records changes in one) and records the transitions it makes in the change
feed in that same transaction; each takes ``now`` so tests never sleep, and
each runs once more if its connection died before COMMIT
(:func:`~taskdb.store.errors.reconnecting`); the worker's claims and outcomes,
which may have committed when their connection died, first look for what they
wrote. The statements are built once per dialect
(:mod:`taskdb.store.statements`); a call only binds values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from taskdb.core.jobs import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    ChangeKind,
    Claim,
    Job,
    JobOptions,
    JobStatus,
    NewJob,
    check_job_id,
)
from taskdb.core.retry import Complete, Outcome, Retry
from taskdb.errors import InvalidJobInput, JobNotFound, LeaseLost, StorageError
from taskdb.store.blobs import BlobStore
from taskdb.store.database import Database
from taskdb.store.dialect import Dialect, Recorded
from taskdb.store.errors import ended_by_server, reconnecting
from taskdb.store.params import params
from taskdb.store.plans import Plan, PlanCall, Step
from taskdb.store.rows import model
from taskdb.store.schema import job_holder, job_streams, jobs
from taskdb.store.statements import job_statements

Statuses = dict[int, JobStatus]


def _refs(items: Sequence[tuple[Claim, Outcome]]) -> dict[int, tuple[str, ...]]:
    """The blob keys each completed output of ``items`` refers to (none: empty)."""
    return {c.job_id: o.refs for c, o in items if isinstance(o, Complete) and o.refs}


def _ids(items: Sequence[tuple[Claim, Outcome]]) -> dict[str, Any]:
    return params(ids=[claim.job_id for claim, _ in items])


def _statuses(found: Sequence[Sequence[Any]], items: Sequence[tuple[Claim, Outcome]]) -> Statuses:
    """The statuses of ``items`` among rows read by ``finished_by`` (the attempts match)."""
    attempts = {claim.job_id: claim.attempts for claim, _ in items}
    return {
        r.id: JobStatus(r.status)
        for rows in found
        for r in rows
        if attempts.get(r.id) == r.attempts
    }


def _claim_order(row: Any) -> tuple[int, datetime, int]:
    """The order claimed jobs start in: highest priority, then ``run_after``, then id."""
    return (-row.priority, row.run_after, row.id)


class JobPlans:
    """The job logic both clients run, as plans (:mod:`taskdb.store.plans`):
    :class:`JobStore` runs them on the async engine, :class:`SyncJobStore` on the
    sync one."""

    def __init__(self, d: Dialect) -> None:
        self._d = d
        self._s = job_statements(d)
        # Where a write records its changes in the same statement, each statement
        # stands alone and needs no transaction.
        self._atomic = not d.records_in_one_statement

    def submit(
        self, queue: str, options: JobOptions, new: Sequence[NewJob], now: datetime
    ) -> PlanCall[list[int]]:
        """Insert jobs sharing ``options``; one id per item, in order. A fingerprint
        matching an active job of the queue returns that job's id and inserts nothing."""
        keyed = any(n.fingerprint is not None for n in new)
        # Plain jobs are one statement where the dialect records in one (changes too).
        return PlanCall(
            lambda: self.submit_plan(queue, options, new, now),
            atomic=self._atomic or keyed,
            repeatable=False,
        )

    def submit_plan(
        self, queue: str, options: JobOptions, new: Sequence[NewJob], now: datetime
    ) -> Plan[list[int]]:
        """The plan of :meth:`submit`, for a plan that submits in its own transaction."""
        ids: list[int] = [0] * len(new)
        plain = [i for i, n in enumerate(new) if n.fingerprint is None]
        keyed = [i for i, n in enumerate(new) if n.fingerprint is not None]
        if plain:
            items = [new[i] for i in plain] if keyed else new
            values = params(batch=self._submit_batch(items), **self._shared(queue, options, now))
            written = yield Step(self._s.insert_many, values, "recorded")
            # ids come from the sequence in insertion order: the ORDER BY's.
            for i, job_id in zip(plain, sorted(r.id for r in written), strict=True):
                ids[i] = job_id
        inserted: list[int] = []
        for i in keyed:
            item = new[i]
            stmt = self._insert_deduped(queue, options, item, now)
            fresh = yield Step(stmt, params(input_json=item.input_json), "scalar")
            if fresh is None:
                ids[i] = yield from self._active_by_fingerprint(queue, item.fingerprint)
            else:
                ids[i] = int(fresh)
                inserted.append(int(fresh))
        if inserted:
            record = self._s.record_ids[ChangeKind.SUBMITTED]
            yield Step(record, params(now=now, ids=inserted), "none")
        return ids

    @staticmethod
    def _shared(queue: str, options: JobOptions, now: datetime) -> dict[str, Any]:
        """What every job of one submit shares."""
        return {
            "queue": queue,
            "now": now,
            "max_retries": options.max_retries,
            "priority": options.priority,
            "run_after": options.run_after,
            "deadline": options.deadline,
            "job_run_id": options.job_run_id,
            "durable_stream": options.durable_stream,
            "task": options.task,
            "trace_context": options.trace_context,
        }

    def _submit_batch(self, items: Sequence[NewJob]) -> str:
        """The batch of :attr:`JobStatements.insert_many` as JSON text, built around each
        input's JSON text (no input is encoded twice)."""
        embed = self._d.embed_json
        return (
            "["
            + ",".join(
                f'{{"ord":{o},"input":{embed(n.input_json)},"input_digest":"{n.input_digest}"}}'
                for o, n in enumerate(items)
            )
            + "]"
        )

    def _insert_deduped(self, queue: str, options: JobOptions, new: NewJob, now: datetime) -> Any:
        return (
            self._d.insert(jobs)
            .values(
                queue=queue,
                status=JobStatus.PENDING.value,
                input=self._d.json_param("input_json"),
                input_digest=new.input_digest,
                max_retries=options.max_retries,
                priority=options.priority,
                run_after=options.run_after,
                deadline=options.deadline,
                fingerprint=new.fingerprint,
                job_run_id=options.job_run_id,
                durable_stream=options.durable_stream,
                task=options.task,
                trace_context=options.trace_context,
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

    @staticmethod
    def _active_by_fingerprint(queue: str, fingerprint: str | None) -> Plan[int]:
        active = select(jobs.c.id).where(
            jobs.c.queue == queue,
            jobs.c.fingerprint == fingerprint,
            jobs.c.status.in_(ACTIVE_STATUSES),
        )
        found = yield Step(active, None, "scalar")
        if found is None:
            # The active twin ended between our INSERT and this SELECT: the
            # transaction rolls back and the reconnect policy runs the submit again.
            err = StorageError(f"fingerprint {fingerprint!r} changed state during submit")
            err.retryable = True
            raise err
        return int(found)

    def get(self, job_id: int) -> PlanCall[Job]:
        """The job row; :class:`JobNotFound` for an unknown id."""
        check_job_id(job_id)
        return PlanCall(lambda: self._get(job_id), write=False, atomic=False)

    @staticmethod
    def _get(job_id: int) -> Plan[Job]:
        row = yield Step(select(jobs).where(jobs.c.id == job_id), None, "first")
        if row is None:
            raise JobNotFound(job_id)
        return model(Job, row)

    def list_jobs(
        self,
        queue: str | None = None,
        status: Sequence[str] | None = None,
        limit: int = 100,
        before: int | None = None,
        task: str | None = None,
        text: str | None = None,
    ) -> PlanCall[list[Job]]:
        """Jobs newest first (of ``queue``, in ``status``, running ``task``, holding
        ``text`` in their task name, error or fingerprint, with ids below ``before``)."""
        stmt = select(jobs)
        if queue is not None:
            stmt = stmt.where(jobs.c.queue == queue)
        if status:
            stmt = stmt.where(jobs.c.status.in_(status))
        if task is not None:
            stmt = stmt.where(jobs.c.task == task)
        if text:
            needle = text.lower()
            stmt = stmt.where(
                or_(
                    *(
                        func.lower(column).contains(needle, autoescape=True)
                        for column in (jobs.c.task, jobs.c.error, jobs.c.fingerprint)
                    )
                )
            )
        if before is not None:
            stmt = stmt.where(jobs.c.id < before)
        stmt = stmt.order_by(jobs.c.id.desc()).limit(limit)
        return PlanCall(lambda: _models(stmt), write=False, atomic=False)

    def output_for_input(self, queue: str, digest: str) -> PlanCall[tuple[bool, Any]]:
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
        return PlanCall(lambda: _output_of(stmt), write=False, atomic=False)

    def abort(
        self, now: datetime, job_id: int | None = None, job_run_id: str | None = None
    ) -> PlanCall[int]:
        """Abort one job or a whole run: PENDING ends FAILED at once, running jobs
        become ABORTING (their worker cancels them). Returns how many changed."""
        if job_id is not None:
            check_job_id(job_id)
        return PlanCall(lambda: self._abort(now, job_id, job_run_id), atomic=self._atomic)

    def _abort(self, now: datetime, job_id: int | None, job_run_id: str | None) -> Plan[int]:
        if job_id is not None:
            values = params(job_id=job_id, now=now)
            rows = yield Step(self._s.abort_job, values, "recorded")
            if not rows:
                yield from _require_job(job_id)
        else:
            values = params(job_run_id=job_run_id, now=now)
            rows = yield Step(self._s.abort_run, values, "recorded")
        return len(rows)

    def retry_now(self, job_id: int, now: datetime) -> PlanCall[bool]:
        """Put a FAILED job back to PENDING for one more run (admin action)."""
        check_job_id(job_id)
        return PlanCall(lambda: self._retry_now(job_id, now), atomic=self._atomic)

    def _retry_now(self, job_id: int, now: datetime) -> Plan[bool]:
        rows = yield Step(self._s.retry_now, params(job_id=job_id, now=now), "recorded")
        if not rows:
            yield from _require_job(job_id)
        return bool(rows)


def _models(stmt: Any) -> Plan[list[Job]]:
    rows = yield Step(stmt, None, "all")
    return [model(Job, r) for r in rows]


def _output_of(stmt: Any) -> Plan[tuple[bool, Any]]:
    row = yield Step(stmt, None, "first")
    return (False, None) if row is None else (True, row.output)


def _require_job(job_id: int) -> Plan[None]:
    found = yield Step(select(jobs.c.id).where(jobs.c.id == job_id), None, "scalar")
    if found is None:
        raise JobNotFound(job_id)


class JobStore:
    """The job lifecycle over one :class:`Database` (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._d = db.backend
        self._s = job_statements(db.backend)
        # Where a write records its changes in the same statement, each statement
        # stands alone and needs no transaction; otherwise a write and its change
        # records are two statements of one transaction.
        self._atomic = not self._d.records_in_one_statement
        self._blobs = BlobStore(db)
        self.plans = JobPlans(db.backend)
        self._lease_ends: dict[str, datetime] = {}  # each worker's last claim's

    async def _write(
        self, conn: AsyncConnection, stmt: Recorded, values: dict[str, Any]
    ) -> list[Any]:
        """Run a recorded write; returns the changed rows (attribute access, ``_asdict``)."""
        return await self._d.run_recorded(conn, stmt, values, self.db.safe_url)

    async def _writes(self, *writes: tuple[Recorded, dict[str, Any]]) -> list[list[Any]]:
        """Run recorded writes in one transaction of their own (one call on SQLite's
        driver connection); returns the changed rows of each."""
        return await self._d.run_writes(self.db, writes, atomic=self._atomic or len(writes) > 1)

    async def _record(
        self, conn: AsyncConnection, ids: Sequence[int], now: datetime, kind: ChangeKind
    ) -> None:
        """Append one change per job in ``ids``, read from the rows as they are now."""
        if ids:
            await conn.execute(self._s.record_ids[kind], params(now=now, ids=list(ids)))

    # -- submit --------------------------------------------------------------------

    # -- what both clients run (plans: see JobPlans) -------------------------------

    async def submit(
        self, queue: str, options: JobOptions, new: Sequence[NewJob], now: datetime
    ) -> list[int]:
        """See :meth:`JobPlans.submit`."""
        return await self.db.run(self.plans.submit(queue, options, new, now))

    async def get(self, job_id: int) -> Job:
        """See :meth:`JobPlans.get`."""
        return await self.db.run(self.plans.get(job_id))

    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        status: Sequence[str] | None = None,
        limit: int = 100,
        before: int | None = None,
        task: str | None = None,
        text: str | None = None,
    ) -> list[Job]:
        """See :meth:`JobPlans.list_jobs`."""
        return await self.db.run(self.plans.list_jobs(queue, status, limit, before, task, text))

    async def output_for_input(self, queue: str, digest: str) -> tuple[bool, Any]:
        """See :meth:`JobPlans.output_for_input`."""
        return await self.db.run(self.plans.output_for_input(queue, digest))

    async def abort(
        self, now: datetime, *, job_id: int | None = None, job_run_id: str | None = None
    ) -> int:
        """See :meth:`JobPlans.abort`."""
        return await self.db.run(self.plans.abort(now, job_id, job_run_id))

    async def retry_now(self, job_id: int, now: datetime) -> bool:
        """See :meth:`JobPlans.retry_now`."""
        return await self.db.run(self.plans.retry_now(job_id, now))

    @reconnecting
    async def counts(self) -> list[tuple[str, str, int]]:
        """``(queue, status, count)`` for every queue and status present."""
        stmt = select(jobs.c.queue, jobs.c.status, func.count()).group_by(
            jobs.c.queue, jobs.c.status
        )
        async with self.db.transaction(write=False, atomic=False) as conn:
            return [(r[0], r[1], int(r[2])) for r in (await conn.execute(stmt)).all()]

    # -- worker side -----------------------------------------------------------------

    async def claim_rows(
        self,
        queue: str,
        worker_id: str,
        limit: int,
        now: datetime,
        lease_seconds: float,
        cap: int | None = None,
    ) -> list[Any]:
        """Atomically take up to ``limit`` runnable jobs: highest priority, then
        ``run_after``, then submission order. No job is ever handed to two claims.
        With a ``cap``, the queue never has more than ``cap`` jobs running after the
        claim, whatever the workers claiming at the same time (they take turns).

        Returns the claimed rows as the database wrote them (the server's hot
        path); :meth:`claim` returns them as :class:`Job` models. If the
        connection dies, the claim is run again unless it committed: then the
        rows it claimed are returned (see :meth:`_after_lost`).
        """
        values = self._claim_values(queue, worker_id, limit, now, lease_seconds)

        async def run() -> tuple[list[Any], Statuses]:
            return await self._claim(queue, values, cap), {}

        rows, _ = await self._after_lost(run, values, ())
        rows.sort(key=_claim_order)
        return rows

    async def _claim(self, queue: str, values: dict[str, Any], cap: int | None) -> list[Any]:
        if cap is None:
            (rows,) = await self._writes((self._s.claim, values))
            return rows
        async with self.db.transaction() as conn:  # counted under the queue's lock
            await self._d.lock(conn, f"taskdb-cap:{queue}")
            return await self._write(conn, self._s.claim_capped, values | params(cap=cap))

    async def _after_lost(
        self,
        run: Callable[[], Awaitable[tuple[list[Any], Statuses]]],
        values: dict[str, Any],
        items: Sequence[tuple[Claim, Outcome]],
        *,
        claims: bool = True,
    ) -> tuple[list[Any], Statuses]:
        """``run()``, a worker write bound to ``values``: outcomes of ``items`` and, if
        ``claims``, a claim; if its connection dies, what it wrote, or else its result
        run again.

        Sent, such a write may have committed before its connection died (on
        PostgreSQL it runs alone in autocommit). Run again, a claim would strand
        the jobs it took until their lease ran out (an attempt counted that never
        ran) and outcomes would be fenced off by themselves. So it first looks
        for what it wrote; finding nothing, it runs again, then looks once more
        for outcomes the second run did not write: the first run may have been
        still under way at the first look. A claim that commits that late goes
        unseen; the worker gives back such strays (:meth:`release_strays`).
        """
        try:
            return await run()
        except StorageError as exc:
            if not exc.retryable:
                raise
            if ended_by_server(exc):  # it rolled back: nothing to look for
                return await run()
        reads: list[tuple[Recorded, dict[str, Any]]] = []
        if claims:
            reads.append((self._s.claimed_by, values))
        if items:
            reads.append((self._s.finished_by, values | _ids(items)))
        found = await self._writes(*reads)
        claimed = found[0] if claims else []
        statuses = _statuses(found[1:] if claims else found, items)
        if claimed or statuses:
            return claimed, statuses
        claimed, statuses = await run()
        missing = [item for item in items if item[0].job_id not in statuses]
        if missing:
            with contextlib.suppress(StorageError):  # (the second run's result stands)
                read = (self._s.finished_by, values | _ids(missing))
                statuses |= _statuses(await self._writes(read), missing)
        return claimed, statuses

    def _claim_values(
        self, queue: str, worker_id: str, limit: int, now: datetime, lease_seconds: float
    ) -> dict[str, Any]:
        # A claim is found again by its worker and lease end (_after_lost): a worker's
        # claims never share one, even with a clock that stands still.
        lease_until = now + timedelta(seconds=lease_seconds)
        last = self._lease_ends.get(worker_id)
        if lease_until.tzinfo is not None:  # (a naive one is refused when bound)
            if last is not None and lease_until <= last:
                lease_until = last + timedelta(microseconds=1)
            self._lease_ends[worker_id] = lease_until
        return params(
            queue=queue, worker_id=worker_id, limit=limit, now=now, lease_until=lease_until
        )

    async def claim(
        self, queue: str, worker_id: str, limit: int, now: datetime, lease_seconds: float
    ) -> list[Job]:
        """:meth:`claim_rows` as :class:`Job` models."""
        rows = await self.claim_rows(queue, worker_id, limit, now, lease_seconds)
        return [model(Job, r) for r in rows]

    @reconnecting
    async def heartbeat(
        self, worker_id: str, claims: Sequence[Claim], now: datetime, lease_seconds: float
    ) -> dict[int, JobStatus]:
        """Extend the leases of ``claims``; returns the status of each claim still held."""
        if not claims:
            return {}
        values = params(
            ids=[c.job_id for c in claims],
            worker_id=worker_id,
            lease_until=now + timedelta(seconds=lease_seconds),
        )
        async with self.db.transaction(atomic=self._atomic) as conn:
            rows = list((await conn.execute(self._s.heartbeat, values)).all())
            if len(rows) < len(claims):  # some were locked by our own outcome writes
                rows = list((await conn.execute(self._s.held, values)).all())
        held = {(c.job_id, c.attempts) for c in claims}
        return {r.id: JobStatus(r.status) for r in rows if (r.id, r.attempts) in held}

    @reconnecting
    async def aborting(self, claims: Sequence[Claim]) -> set[int]:
        """Which of ``claims`` were asked to abort (a read: cheap to poll)."""
        if not claims:
            return set()
        values = params(ids=[c.job_id for c in claims])
        async with self.db.transaction(write=False, atomic=False) as conn:
            found: list[int] = list((await conn.scalars(self._s.aborting, values)).all())
        return set(found)

    @reconnecting
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
        values = params(
            job_id=claim.job_id,
            attempts=claim.attempts,
            worker_id=worker_id,
            progress=progress,
            message=message,
            details=details,
            now=now,
        )
        async with self.db.transaction(atomic=self._atomic) as conn:
            rows = await self._write(conn, self._s.progress, values)
        if not rows:
            raise LeaseLost(f"job {claim.job_id}: this worker no longer holds it")
        return JobStatus(rows[0].status)

    @reconnecting
    async def finish(
        self, worker_id: str, items: Sequence[tuple[Claim, Outcome]], now: datetime
    ) -> dict[int, JobStatus]:
        """Record the outcomes of claims in one statement.

        Fenced: only claims this worker still holds at that attempt are written;
        the result maps each written job id to its new status. A job being
        aborted ends FAILED with ``AbortedJobError`` whatever its outcome. The
        blobs of a completed output (:attr:`Complete.refs`) are linked to its job
        in the same transaction: a fenced-off or aborted output links nothing.
        If the connection dies, they are written again unless they were (see
        :meth:`_after_lost`).
        """
        if not items:
            return {}
        values = self._finish_values(worker_id, items, now)

        async def run() -> tuple[list[Any], Statuses]:
            return [], await self._finish(values, items)

        _, statuses = await self._after_lost(run, values, items, claims=False)
        return statuses

    async def _finish(
        self, values: dict[str, Any], items: Sequence[tuple[Claim, Outcome]]
    ) -> Statuses:
        refs = _refs(items)
        if not refs:
            (done,) = await self._writes((self._s.finish, values))
            return {r.id: JobStatus(r.status) for r in done}
        async with self.db.transaction() as conn:
            done = await self._write(conn, self._s.finish, values)
            statuses = {r.id: JobStatus(r.status) for r in done}
            await self._link_outputs(conn, refs, statuses)
        return statuses

    async def _link_outputs(
        self, conn: AsyncConnection, refs: dict[int, tuple[str, ...]], statuses: Statuses
    ) -> None:
        completed = {
            job_holder(job_id): keys
            for job_id, keys in refs.items()
            if statuses.get(job_id) is JobStatus.COMPLETED
        }
        missing = await self._blobs.link_holders(conn, completed)
        if missing:  # never written, or gc took it before this outcome linked it
            raise InvalidJobInput(f"the output refers to blobs that do not exist: {missing}")

    async def finish_and_claim(
        self,
        worker_id: str,
        items: Sequence[tuple[Claim, Outcome]],
        now: datetime,
        *,
        queue: str,
        limit: int,
        lease_seconds: float,
    ) -> tuple[dict[int, JobStatus], list[Any]]:
        """:meth:`finish` and :meth:`claim_rows` atomically, in one round trip (one
        statement on PostgreSQL): what a busy worker does per batch. A job that
        an outcome of ``items`` puts back to PENDING is not claimed by this call.
        If the connection dies, it runs again unless it committed: then what it
        wrote is returned (see :meth:`_after_lost`)."""
        values = self._finish_values(worker_id, items, now)
        values |= self._claim_values(queue, worker_id, limit, now, lease_seconds)

        async def run() -> tuple[list[Any], Statuses]:
            statuses, claimed = await self._finish_and_claim(values, items)
            return claimed, statuses

        claimed, statuses = await self._after_lost(run, values, items)
        claimed.sort(key=_claim_order)
        return statuses, claimed

    async def _finish_and_claim(
        self, values: dict[str, Any], items: Sequence[tuple[Claim, Outcome]]
    ) -> tuple[Statuses, list[Any]]:
        refs = _refs(items)
        if self._s.finish_and_claim is None and not refs:
            # claim first, as one statement's snapshot would
            claimed, done = await self._writes((self._s.claim, values), (self._s.finish, values))
            claimed.sort(key=_claim_order)
            return {r.id: JobStatus(r.status) for r in done}, claimed
        async with self.db.transaction(atomic=self._atomic or bool(refs)) as conn:
            if self._s.finish_and_claim is None:
                claimed = await self._write(conn, self._s.claim, values)
                done = await self._write(conn, self._s.finish, values)
                statuses = {r.id: JobStatus(r.status) for r in done}
            else:
                rows = await self._write(conn, self._s.finish_and_claim, values)
                claimed = [r for r in rows if r.finished is None]
                (pairs,) = [r.finished for r in rows if r.finished is not None]
                statuses = {job_id: JobStatus(status) for job_id, status in pairs}
            if refs:
                await self._link_outputs(conn, refs, statuses)
        claimed.sort(key=_claim_order)
        return statuses, claimed

    def _finish_values(
        self, worker_id: str, items: Sequence[tuple[Claim, Outcome]], now: datetime
    ) -> dict[str, Any]:
        batch = [self._finish_row(claim, outcome, now) for claim, outcome in items]
        values = params(worker_id=worker_id, now=now, batch=self._d.encode_batch(batch))
        if self._d.batch_updates_list_ids:  # the statement names them (statements.py)
            values |= params(ids=[claim.job_id for claim, _ in items])
        return values

    @staticmethod
    def _finish_row(claim: Claim, outcome: Outcome, now: datetime) -> dict[str, Any]:
        """One row of the outcome batch (a column left out reads as NULL)."""
        row: dict[str, Any] = {"id": claim.job_id, "attempts": claim.attempts}
        if isinstance(outcome, Complete):
            row.update(status="COMPLETED", output=outcome.output, completed_at=now)
        elif isinstance(outcome, Retry):
            row.update(status="PENDING", error=outcome.error, error_code=outcome.error_code)
            row.update(run_after=outcome.run_after, error_traceback=outcome.traceback)
        else:
            row.update(status="FAILED", error=outcome.error, error_code=outcome.error_code)
            row.update(completed_at=now, error_traceback=outcome.traceback)
        return row

    @reconnecting
    async def release(self, worker_id: str, claims: Sequence[Claim], now: datetime) -> int:
        """Give claims back untouched (graceful stop): PENDING, the attempt not counted."""
        if not claims:
            return 0
        values = params(ids=[c.job_id for c in claims], worker_id=worker_id, now=now)
        async with self.db.transaction(atomic=self._atomic) as conn:
            return len(await self._write(conn, self._s.release, values))

    @reconnecting
    async def release_strays(
        self, worker_id: str, known: Sequence[Claim], now: datetime, lease_seconds: float
    ) -> list[int]:
        """Give back, untouched, the jobs held by ``worker_id`` that it does not know
        (``known``: every claim it runs or is recording) and whose lease it has not
        renewed for half a lease: what a claim took whose answer never reached the
        worker (its connection died after the claim committed; see
        :meth:`_after_lost`). Their attempt is not counted. Returns their ids."""
        values = params(
            worker_id=worker_id,
            known=[c.job_id for c in known],
            stale_before=now + timedelta(seconds=lease_seconds / 2),
            now=now,
        )
        async with self.db.transaction(atomic=self._atomic) as conn:
            return sorted(r.id for r in await self._write(conn, self._s.release_strays, values))

    @reconnecting
    async def reap(self, queue: str, now: datetime) -> int:
        """Recover jobs whose worker died and fail jobs whose deadline passed.

        A running job whose lease expired goes back to PENDING (FAILED with
        ``LeaseExpired`` once its retries are used up, or ``AbortedJobError``
        if it was being aborted); a pending job past its deadline fails.
        """
        values = params(queue=queue, now=now)
        async with self.db.transaction(atomic=self._atomic) as conn:
            leased = await self._write(conn, self._s.reap_leases, values)
            late = await self._write(conn, self._s.reap_deadlines, values)
        return len(leased) + len(late)

    @reconnecting
    async def purge(
        self,
        older_than: datetime,
        now: datetime,
        *,
        queue: str | None = None,
        statuses: Sequence[str] = TERMINAL_STATUSES,
    ) -> int:
        """Delete terminal jobs that ended before ``older_than``, releasing the
        blobs their outputs referred to (deleted when nothing else links them)."""
        ended = [s for s in statuses if s in TERMINAL_STATUSES]
        doomed = select(jobs.c.id).where(
            jobs.c.status.in_(ended),
            jobs.c.completed_at < older_than,  # every ended job has completed_at
        )
        if queue is not None:
            doomed = doomed.where(jobs.c.queue == queue)
        async with self.db.transaction() as conn:
            ids: list[int] = list((await conn.scalars(doomed.with_for_update())).all())
            await self._record(conn, ids, now, ChangeKind.PURGED)
            if ids:
                values = params(ids=list(ids))
                await conn.execute(delete(jobs).where(self._d.id_in(jobs.c.id)), values)
                await conn.execute(
                    delete(job_streams).where(self._d.id_in(job_streams.c.job_id)), values
                )
                await self._blobs.release_holders(conn, [job_holder(i) for i in ids])
        return len(ids)


class SyncJobStore:
    """The client side of :class:`JobStore` on the synchronous engine (the sync
    client of web apps): the same plans, run from any thread."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.plans = JobPlans(db.backend)

    def submit(
        self, queue: str, options: JobOptions, new: Sequence[NewJob], now: datetime
    ) -> list[int]:
        return self.db.run_sync(self.plans.submit(queue, options, new, now))

    def get(self, job_id: int) -> Job:
        return self.db.run_sync(self.plans.get(job_id))

    def output_for_input(self, queue: str, digest: str) -> tuple[bool, Any]:
        return self.db.run_sync(self.plans.output_for_input(queue, digest))

    def abort(
        self, now: datetime, *, job_id: int | None = None, job_run_id: str | None = None
    ) -> int:
        return self.db.run_sync(self.plans.abort(now, job_id, job_run_id))
