"""Every hot statement of the job store, built once per dialect (pure SQLAlchemy).

Each write returns the rows it changed and records one change-feed row per
job in the same transaction (:class:`~taskdb.store.dialect.Recorded`): one
statement where the dialect can, two otherwise. Statements take bind
parameters only (:mod:`taskdb.store.params`), so a call just binds values and
the database keeps one plan per statement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    Integer,
    and_,
    case,
    exists,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    union_all,
    update,
)

from taskdb.core.jobs import RUNNING_STATUSES, ChangeKind, JobStatus
from taskdb.store.dialect import Dialect, Recorded
from taskdb.store.params import bind
from taskdb.store.schema import UtcDateTime, job_changes, jobs, queues

KindOf = Callable[[Any], Any]
"""A change kind as an SQL expression over the changed rows."""

ABORTED = "AbortedJobError"
SUBMIT_COLUMNS = ("ord", "input", "input_digest")
FINISH_COLUMNS = (
    "id",
    "attempts",
    "status",
    "output",
    "error",
    "error_code",
    "error_traceback",
    "run_after",
    "completed_at",
)
CHANGE_COLS = (
    jobs.c.id,
    jobs.c.queue,
    jobs.c.status,
    jobs.c.attempts,
    jobs.c.progress,
    jobs.c.error_code,
)
CHANGE_FIELDS = ("job_id", "queue", "kind", "status", "attempts", "progress", "at")
_INSERTED = (
    "queue",
    "status",
    "input",
    "input_digest",
    "max_retries",
    "priority",
    "run_after",
    "deadline",
    "job_run_id",
    "durable_stream",
    "task",
    "trace_context",
    "created_at",
    "updated_at",
)


def derived_kind(c: Any, pending: ChangeKind = ChangeKind.RETRIED) -> Any:
    """The change kind of a transition, from the state the row is left in (for one
    write whose rows end in different states, such as a batch of outcomes)."""
    return case(
        (c.status == JobStatus.COMPLETED.value, ChangeKind.COMPLETED.value),
        (
            and_(c.status == JobStatus.FAILED.value, c.error_code == ABORTED),
            ChangeKind.ABORTED.value,
        ),
        (c.status == JobStatus.FAILED.value, ChangeKind.FAILED.value),
        (c.status == JobStatus.ABORTING.value, ChangeKind.ABORTING.value),
        else_=pending.value,
    )


def _requeued_kind(c: Any) -> Any:
    return derived_kind(c, pending=ChangeKind.REQUEUED)


def status_is(*statuses: str) -> Any:
    """``status`` is one of ``statuses``, written into the SQL: the generic plan of a
    prepared statement can then use the partial indexes on status (a bound value
    would leave PostgreSQL re-planning every execution or scanning the table)."""
    consts: list[Any] = [literal_column(f"'{s}'") for s in statuses]
    return jobs.c.status == consts[0] if len(consts) == 1 else jobs.c.status.in_(consts)


def _now() -> Any:
    return bind("now", UtcDateTime())


def change_rows(c: Any, kind: ChangeKind | KindOf | None) -> Any:
    """One change row per row of ``c`` (the jobs table's columns, or those of a CTE of
    changed rows); ``kind`` ``None`` derives it from the row's state."""
    expr: Any
    if kind is None:
        expr = derived_kind(c)
    elif isinstance(kind, ChangeKind):
        expr = literal(kind.value)
    else:
        expr = kind(c)
    return select(c.id, c.queue, expr, c.status, c.attempts, c.progress, _now())


def changes_from(c: Any, kind: ChangeKind | KindOf | None, where: Any = None) -> Any:
    """The INSERT of one change per row of ``c`` (those matching ``where``)."""
    rows = change_rows(c, kind)
    if where is not None:
        rows = rows.where(where).order_by(c.id)
    return insert(job_changes).from_select(CHANGE_FIELDS, rows)


class JobStatements:
    """The job store's statements for one dialect (see the module docstring)."""

    def __init__(self, d: Dialect) -> None:
        self.d = d
        self.record_ids = {
            kind: changes_from(jobs.c, kind, d.id_in(jobs.c.id)) for kind in ChangeKind
        }
        self.claim = self._recorded(self._claim_dml(), ChangeKind.CLAIMED, returning=list(jobs.c))
        self.claim_capped = self._recorded(
            self._claim_dml(capped=True), ChangeKind.CLAIMED, returning=list(jobs.c)
        )
        self.finish = self._recorded(self._finish_dml())
        self.finish_and_claim = d.finish_and_claim(
            self._finish_dml().returning(*CHANGE_COLS),
            self._claim_dml().returning(*jobs.c),
            lambda finished, claimed: insert(job_changes).from_select(
                CHANGE_FIELDS,
                union_all(change_rows(finished, None), change_rows(claimed, ChangeKind.CLAIMED)),
            ),
        )
        self.claimed_by, self.finished_by = self._written_by()
        self.heartbeat, self.held = self._heartbeat()
        self.aborting = select(jobs.c.id).where(d.id_in(jobs.c.id), status_is(JobStatus.ABORTING))
        self.progress = self._progress()
        self.release, self.release_strays = self._release()
        self.reap_leases, self.reap_deadlines = self._reap()
        self.abort_job, self.abort_run = self._abort()
        self.retry_now = self._retry_now()
        self.insert_many = self._insert_many()

    def _recorded(
        self,
        dml: Any,
        kind: ChangeKind | KindOf | None = None,
        returning: Sequence[Any] = CHANGE_COLS,
    ) -> Recorded:
        return self.d.recorded(
            dml.returning(*returning), lambda c, where: changes_from(c, kind, where)
        )

    # -- statements --------------------------------------------------------------------

    @staticmethod
    def _claim_dml(capped: bool = False) -> Any:
        """Claim up to ``limit`` runnable jobs; ``capped``: and no more than ``cap``
        minus the queue's running jobs (the caller holds the queue's cap lock)."""
        limit: Any = bind("limit", Integer())
        if capped:
            running = (
                select(func.count())
                .where(jobs.c.queue == bind("queue"), status_is(*RUNNING_STATUSES))
                .scalar_subquery()
            )
            room = bind("cap", Integer()) - running
            limit = case((room < 0, 0), (room < limit, room), else_=limit)
        runnable = (
            select(jobs.c.id)
            .where(
                jobs.c.queue == bind("queue"),
                status_is(JobStatus.PENDING),
                jobs.c.run_after <= _now(),
                or_(jobs.c.deadline.is_(None), jobs.c.deadline > _now()),
                ~exists().where(queues.c.name == bind("queue"), queues.c.paused),
            )
            .order_by(jobs.c.priority.desc(), jobs.c.run_after, jobs.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return (
            update(jobs)
            .where(jobs.c.id.in_(runnable.scalar_subquery()))
            .values(
                status=JobStatus.PROCESSING.value,
                worker_id=bind("worker_id"),
                attempts=jobs.c.attempts + 1,
                lease_expires_at=bind("lease_until", UtcDateTime()),
                updated_at=_now(),
            )
        )

    def _finish_dml(self) -> Any:
        v = self.d.batch_source(FINISH_COLUMNS)
        aborting = jobs.c.status == JobStatus.ABORTING.value
        mine = [
            jobs.c.id == v.c.id,
            jobs.c.attempts == v.c.attempts,
            jobs.c.worker_id == bind("worker_id"),
            status_is(*RUNNING_STATUSES),
        ]
        if self.d.batch_updates_list_ids:
            # PostgreSQL joined only to the batch (estimated 100 rows) scanned every
            # PROCESSING entry of the lease index, dead ones included, which grow with
            # each job claimed until vacuum (12 ms a batch after 40,000 jobs). SQLite
            # must not: it then looks up each row first and scans the whole batch for
            # it (32 rows x 32 JSON extractions, four times the cost).
            mine.append(self.d.id_in(jobs.c.id))
        return (
            update(jobs)
            .where(*mine)
            .values(
                status=case((aborting, JobStatus.FAILED.value), else_=v.c.status),
                output=case((aborting, null()), else_=v.c.output),
                error=case((aborting, "aborted"), else_=v.c.error),
                error_code=case((aborting, ABORTED), else_=v.c.error_code),
                error_traceback=case((aborting, null()), else_=v.c.error_traceback),
                run_after=func.coalesce(v.c.run_after, jobs.c.run_after),
                completed_at=case((aborting, _now()), else_=v.c.completed_at),
                worker_id=None,
                lease_expires_at=None,
                updated_at=_now(),
            )
        )

    def _written_by(self) -> tuple[Recorded, Recorded]:
        """Reads of what a claim and a batch of outcomes wrote, for a write whose
        connection died after it was sent (it may have committed). A claim is known by
        its worker and lease end (``now`` + lease: the clock moves between a worker's
        calls, and leases are renewed to later ends); outcomes by their ids, written
        at ``now`` and released by their worker. Run like the writes they look for, so
        claimed rows come back as a claim returns them."""
        claimed = select(*jobs.c).where(
            jobs.c.worker_id == bind("worker_id"),
            jobs.c.lease_expires_at == bind("lease_until", UtcDateTime()),
            status_is(*RUNNING_STATUSES),
        )
        finished = select(jobs.c.id, jobs.c.attempts, jobs.c.status).where(
            self.d.id_in(jobs.c.id), jobs.c.updated_at == _now(), jobs.c.worker_id.is_(None)
        )
        return Recorded(claimed, None), Recorded(finished, None)

    def _heartbeat(self) -> tuple[Any, Any]:
        mine = and_(
            self.d.id_in(jobs.c.id),
            jobs.c.worker_id == bind("worker_id"),
            status_is(*RUNNING_STATUSES),
        )
        # SKIP LOCKED: never wait on (or deadlock with) a batch of outcomes being
        # written; a row skipped now is read by ``held`` and renewed next beat.
        lockable = select(jobs.c.id).where(mine).with_for_update(skip_locked=True)
        renew = (
            update(jobs)
            .where(jobs.c.id.in_(lockable.scalar_subquery()))
            .values(lease_expires_at=bind("lease_until", UtcDateTime()))
            .returning(jobs.c.id, jobs.c.attempts, jobs.c.status)
        )
        held = select(jobs.c.id, jobs.c.attempts, jobs.c.status).where(mine)
        return renew, held

    def _progress(self) -> Recorded:
        dml = (
            update(jobs)
            .where(
                jobs.c.id == bind("job_id"),
                jobs.c.worker_id == bind("worker_id"),
                jobs.c.attempts == bind("attempts"),
                status_is(*RUNNING_STATUSES),
            )
            .values(
                progress=bind("progress"),
                progress_message=bind("message"),
                progress_details=bind("details", jobs.c.progress_details.type),
                updated_at=_now(),
            )
        )
        return self._recorded(dml, ChangeKind.PROGRESS)

    def _release(self) -> tuple[Recorded, Recorded]:
        """Give jobs back untouched: those listed, and a worker's strays (held by it,
        not among the ``known`` ids, their lease ending before ``stale_before``)."""
        mine = (jobs.c.worker_id == bind("worker_id"), status_is(JobStatus.PROCESSING))
        stray = (
            jobs.c.lease_expires_at < bind("stale_before", UtcDateTime()),
            ~self.d.id_in(jobs.c.id, "known"),
        )
        given_back = {
            "status": JobStatus.PENDING.value,
            "attempts": jobs.c.attempts - 1,
            "worker_id": None,
            "lease_expires_at": None,
            "run_after": _now(),
            "updated_at": _now(),
        }
        listed = update(jobs).where(self.d.id_in(jobs.c.id), *mine).values(given_back)
        strays = update(jobs).where(*stray, *mine).values(given_back)
        return (
            self._recorded(listed, ChangeKind.RELEASED),
            self._recorded(strays, ChangeKind.RELEASED),
        )

    def _reap(self) -> tuple[Recorded, Recorded]:
        expired_abort = jobs.c.status == JobStatus.ABORTING.value
        ends = or_(expired_abort, jobs.c.attempts > jobs.c.max_retries)
        # SKIP LOCKED: rows being written by their worker right now are not dead.
        expired = (
            select(jobs.c.id)
            .where(
                jobs.c.queue == bind("queue"),
                status_is(*RUNNING_STATUSES),
                jobs.c.lease_expires_at < _now(),
            )
            .with_for_update(skip_locked=True)
        )
        leases = (
            update(jobs)
            .where(jobs.c.id.in_(expired.scalar_subquery()))
            .values(
                status=case((ends, JobStatus.FAILED.value), else_=JobStatus.PENDING.value),
                error=case(
                    (expired_abort, "aborted (its worker stopped)"),
                    else_="lease expired: the worker stopped renewing it",
                ),
                error_code=case((expired_abort, ABORTED), else_="LeaseExpired"),
                error_traceback=None,
                completed_at=case((ends, _now()), else_=null()),
                worker_id=None,
                lease_expires_at=None,
                run_after=_now(),
                updated_at=_now(),
            )
        )
        deadlines = (
            update(jobs)
            .where(
                jobs.c.queue == bind("queue"),
                status_is(JobStatus.PENDING),
                jobs.c.deadline <= _now(),
            )
            .values(
                status=JobStatus.FAILED.value,
                error="deadline passed before the job could run",
                error_code="DeadlineExceeded",
                error_traceback=None,
                completed_at=_now(),
                updated_at=_now(),
            )
        )
        return self._recorded(leases, _requeued_kind), self._recorded(deadlines)

    def _abort(self) -> tuple[Recorded, Recorded]:
        pending = jobs.c.status == JobStatus.PENDING.value
        dml = (
            update(jobs)
            .where(status_is(JobStatus.PENDING, JobStatus.PROCESSING))
            .values(
                status=case((pending, JobStatus.FAILED.value), else_=JobStatus.ABORTING.value),
                error=case((pending, "aborted"), else_=jobs.c.error),
                error_code=case((pending, ABORTED), else_=jobs.c.error_code),
                error_traceback=case((pending, null()), else_=jobs.c.error_traceback),
                completed_at=case((pending, _now()), else_=jobs.c.completed_at),
                updated_at=_now(),
            )
        )
        return (
            self._recorded(dml.where(jobs.c.id == bind("job_id"))),
            self._recorded(dml.where(jobs.c.job_run_id == bind("job_run_id"))),
        )

    def _retry_now(self) -> Recorded:
        dml = (
            update(jobs)
            .where(jobs.c.id == bind("job_id"), status_is(JobStatus.FAILED))
            .values(
                status=JobStatus.PENDING.value,
                max_retries=case(
                    (jobs.c.attempts > jobs.c.max_retries, jobs.c.attempts),
                    else_=jobs.c.max_retries,
                ),
                run_after=_now(),
                completed_at=None,
                updated_at=_now(),
            )
        )
        return self._recorded(dml, ChangeKind.RETRIED)

    def _insert_many(self) -> Recorded:
        """One INSERT ... SELECT over the batch; ids follow the batch order."""
        v = self.d.batch_source(SUBMIT_COLUMNS)
        source = select(
            bind("queue"),
            literal(JobStatus.PENDING.value),
            func.coalesce(v.c.input, self.d.json_null),  # a row source reads JSON null as NULL
            v.c.input_digest,
            bind("max_retries", Integer()),
            bind("priority", Integer()),
            bind("run_after", UtcDateTime()),
            bind("deadline", UtcDateTime()),
            bind("job_run_id"),
            bind("durable_stream", Boolean()),
            bind("task"),
            bind("trace_context", jobs.c.trace_context.type),
            _now(),
            _now(),
        ).order_by(v.c.ord)
        return self._recorded(insert(jobs).from_select(_INSERTED, source), ChangeKind.SUBMITTED)


_BUILT: dict[str, JobStatements] = {}


def job_statements(d: Dialect) -> JobStatements:
    """The statements of dialect ``d``, built on first use."""
    built = _BUILT.get(d.name)
    if built is None:
        built = _BUILT[d.name] = JobStatements(d)
    return built
