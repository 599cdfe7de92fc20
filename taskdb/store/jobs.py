"""The job store: every queue statement, shared by both dialects.

Methods are domain verbs (submit, claim, heartbeat, finish, reap, ...). Each
runs in one transaction and records the transitions it makes in the change
feed (``taskdb_job_changes``) in that same transaction. Every method that
depends on time takes ``now`` so tests never sleep.

The statements are built once per dialect with bind parameters
(:class:`_Statements`); a call only binds values. On PostgreSQL a write and
its change records are one statement (a data-modifying CTE); SQLite, which
has none, runs the change INSERT right after it in the same transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from types import ModuleType
from typing import Any, ParamSpec, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import (
    Boolean,
    Integer,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    union_all,
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
    canonical_json,
    json_digest,
)
from taskdb.queue.retry import Complete, Outcome, Retry
from taskdb.store import feed, postgres, sqlite
from taskdb.store.blobs import BlobStore
from taskdb.store.database import Database
from taskdb.store.driver import DriverStatement
from taskdb.store.feed import ChangeCursor
from taskdb.store.schema import (
    ACTIVE_STATUSES,
    UtcDateTime,
    job_changes,
    job_holder,
    job_streams,
    jobs,
    rate_limit_hits,
)

M = TypeVar("M", bound=BaseModel)
KindOf = Callable[[Any], Any]  # a change kind as an SQL expression over the changed rows

_RUNNING = (JobStatus.PROCESSING, JobStatus.ABORTING)
_ABORTED = "AbortedJobError"
_SUBMIT_COLUMNS = ("ord", "input", "input_digest")
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
_CHANGE_COLS = (
    jobs.c.id,
    jobs.c.queue,
    jobs.c.status,
    jobs.c.attempts,
    jobs.c.progress,
    jobs.c.error_code,
)
_CHANGE_FIELDS = ("job_id", "queue", "kind", "status", "attempts", "progress", "at")


@dataclass(frozen=True, slots=True)
class JobOptions:
    """What the jobs of one submit share (validated by the client)."""

    run_after: datetime
    max_retries: int
    priority: int = 0
    deadline: datetime | None = None
    job_run_id: str | None = None
    durable_stream: bool = False


@dataclass(frozen=True, slots=True)
class NewJob:
    """One job to insert: its input as canonical JSON text, that text's digest, an
    optional dedupe key. :meth:`of` makes one from a value (encoded once)."""

    input_json: str
    input_digest: str
    fingerprint: str | None = None

    @classmethod
    def of(cls, value: Any, fingerprint: str | None = None) -> NewJob:
        """Raises InvalidJobInput if ``value`` is not JSON."""
        text = canonical_json(value)
        return cls(text, json_digest(text), fingerprint)


@dataclass(frozen=True, slots=True)
class ChangePage:
    """Changes read from the feed, the cursor to read on from, and whether the page was
    full (more may follow at once)."""

    changes: list[JobChange]
    cursor: ChangeCursor
    full: bool


@dataclass(frozen=True, slots=True)
class Claim:
    """What fences a worker's writes to a job: the job id and the attempt it claimed."""

    job_id: int
    attempts: int


def _model(model: type[M], row: Any, **extra: Any) -> M:
    """Validate a row (and ``extra`` fields) into a model; a malformed row is a
    StorageError, not a crash."""
    try:
        return model.model_validate({**row._asdict(), **extra})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise StorageError(f"malformed {model.__name__} row: {where}: {first['msg']}") from exc


def _derived_kind(c: Any, pending: ChangeKind = ChangeKind.RETRIED) -> Any:
    """The change kind of a transition, from the state the row is left in (for one
    write whose rows end in different states, such as a batch of outcomes)."""
    return case(
        (c.status == JobStatus.COMPLETED.value, ChangeKind.COMPLETED.value),
        (
            and_(c.status == JobStatus.FAILED.value, c.error_code == _ABORTED),
            ChangeKind.ABORTED.value,
        ),
        (c.status == JobStatus.FAILED.value, ChangeKind.FAILED.value),
        (c.status == JobStatus.ABORTING.value, ChangeKind.ABORTING.value),
        else_=pending.value,
    )


def _claim_order(row: Any) -> tuple[int, datetime, int]:
    """The order claimed jobs start in: highest priority, then ``run_after``, then id."""
    return (-row.priority, row.run_after, row.id)


def _requeued_kind(c: Any) -> Any:
    return _derived_kind(c, pending=ChangeKind.REQUEUED)


P = ParamSpec("P")
R = TypeVar("R")


def _retrying(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Run a store method once more if its connection died before COMMIT (the
    pool has then been refreshed): a database restart costs no caller an error."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except StorageError as exc:
            if not exc.retryable:
                raise
            return await method(*args, **kwargs)

    return wrapper


def _p(name: str, type_: Any = None) -> Any:
    """A bind parameter; names are prefixed so none collides with a column name."""
    return bindparam(f"p_{name}", type_=type_)


def _status_is(*statuses: JobStatus) -> Any:
    """``status`` is one of ``statuses``, written into the SQL: the generic plan of a
    prepared statement can then use the partial indexes on status (a bound value
    would leave PostgreSQL re-planning every execution or scanning the table)."""
    consts: list[Any] = [literal_column(f"'{s.value}'") for s in statuses]
    return jobs.c.status == consts[0] if len(consts) == 1 else jobs.c.status.in_(consts)


def _now() -> Any:
    return _p("now", UtcDateTime())


def _params(**values: Any) -> dict[str, Any]:
    """Values for :func:`_p` parameters (``ids`` and ``batch`` are the dialects' own)."""
    return {k if k in ("ids", "batch") else f"p_{k}": v for k, v in values.items()}


@dataclass(frozen=True, slots=True)
class _Recorded:
    """A write that records its changes: ``record`` runs after ``main`` (SQLite) or
    is ``None`` when ``main`` does both (PostgreSQL)."""

    main: Any
    record: Any | None


class _Statements:
    """Every hot statement of the store, built once per dialect with bind parameters."""

    def __init__(self, d: ModuleType) -> None:
        self.d = d
        self.record_ids = {kind: self._record_by_ids(kind) for kind in ChangeKind}
        self.claim = self._claim()
        self.finish = self._finish()
        self.finish_and_claim = _Recorded(self._finish_and_claim(), None) if d.DML_CTES else None
        self.heartbeat, self.held = self._heartbeat()
        self.aborting = select(jobs.c.id).where(d.id_in(jobs.c.id), _status_is(JobStatus.ABORTING))
        self.progress = self._progress()
        self.release = self._release()
        self.reap_leases, self.reap_deadlines = self._reap()
        self.abort_job, self.abort_run = self._abort()
        self.retry_now = self._retry_now()
        self.insert_many = self._insert_many()
        # recorded writes compiled for the driver on first use, by id() (PostgreSQL)
        self.driver: dict[int, DriverStatement] = {}

    # -- building blocks ---------------------------------------------------------------

    @staticmethod
    def _change_rows(c: Any, kind: ChangeKind | KindOf | None) -> Any:
        """One change row per row of ``c`` (the table, or a CTE of changed rows)."""
        expr: Any
        if kind is None:
            expr = _derived_kind(c)
        elif isinstance(kind, ChangeKind):
            expr = literal(kind.value)
        else:
            expr = kind(c)
        return select(c.id, c.queue, expr, c.status, c.attempts, c.progress, _now())

    def _changes_from(self, c: Any, kind: ChangeKind | KindOf | None, where: Any = None) -> Any:
        """INSERT of one change per row of ``c``."""
        rows = self._change_rows(c, kind)
        if where is not None:
            rows = rows.where(where).order_by(c.id)
        return insert(job_changes).from_select(_CHANGE_FIELDS, rows)

    def _record_by_ids(self, kind: ChangeKind | KindOf | None) -> Any:
        return self._changes_from(jobs.c, kind, self.d.id_in(jobs.c.id))

    def _recorded(
        self,
        dml: Any,
        kind: ChangeKind | KindOf | None = None,
        returning: Sequence[Any] = _CHANGE_COLS,
    ) -> _Recorded:
        dml = dml.returning(*returning)
        if self.d.DML_CTES:
            changed = dml.cte("changed")
            recorded = self._changes_from(changed.c, kind).cte("recorded")
            return _Recorded(select(changed).add_cte(recorded), None)
        return _Recorded(dml, self._record_by_ids(kind))

    # -- statements --------------------------------------------------------------------

    @staticmethod
    def _claim_dml() -> Any:
        runnable = (
            select(jobs.c.id)
            .where(
                jobs.c.queue == _p("queue"),
                _status_is(JobStatus.PENDING),
                jobs.c.run_after <= _now(),
                or_(jobs.c.deadline.is_(None), jobs.c.deadline > _now()),
            )
            .order_by(jobs.c.priority.desc(), jobs.c.run_after, jobs.c.id)
            .limit(_p("limit", Integer()))
            .with_for_update(skip_locked=True)
        )
        dml = (
            update(jobs)
            .where(jobs.c.id.in_(runnable.scalar_subquery()))
            .values(
                status=JobStatus.PROCESSING.value,
                worker_id=_p("worker_id"),
                attempts=jobs.c.attempts + 1,
                lease_expires_at=_p("lease_until", UtcDateTime()),
                updated_at=_now(),
            )
        )
        return dml

    def _claim(self) -> _Recorded:
        return self._recorded(self._claim_dml(), ChangeKind.CLAIMED, returning=list(jobs.c))

    def _finish_dml(self) -> Any:
        v = self.d.batch_source(_FINISH_COLUMNS)
        aborting = jobs.c.status == JobStatus.ABORTING.value
        dml = (
            update(jobs)
            .where(
                jobs.c.id == v.c.id,
                jobs.c.attempts == v.c.attempts,
                jobs.c.worker_id == _p("worker_id"),
                _status_is(*_RUNNING),
            )
            .values(
                status=case((aborting, JobStatus.FAILED.value), else_=v.c.status),
                output=case((aborting, null()), else_=v.c.output),
                error=case((aborting, "aborted"), else_=v.c.error),
                error_code=case((aborting, _ABORTED), else_=v.c.error_code),
                run_after=func.coalesce(v.c.run_after, jobs.c.run_after),
                completed_at=case((aborting, _now()), else_=v.c.completed_at),
                worker_id=None,
                lease_expires_at=None,
                updated_at=_now(),
            )
        )
        return dml

    def _finish(self) -> _Recorded:
        return self._recorded(self._finish_dml())

    def _finish_and_claim(self) -> Any:
        """PostgreSQL: outcomes written and new jobs claimed in one statement. It
        returns a row per claimed job and one row whose ``finished`` is a JSON array
        of ``[id, status]`` of the outcomes written. The two updates touch
        disjoint rows (running ones, pending ones) and see one snapshot, so a job
        retried by an outcome is not claimed back by the same statement."""
        finished = self._finish_dml().returning(*_CHANGE_COLS).cte("finished")
        claimed = self._claim_dml().returning(*jobs.c).cte("claimed")
        changes = union_all(
            self._change_rows(finished.c, None),
            self._change_rows(claimed.c, ChangeKind.CLAIMED),
        )
        recorded = insert(job_changes).from_select(_CHANGE_FIELDS, changes).cte("recorded")
        pairs = func.json_agg(func.json_build_array(finished.c.id, finished.c.status))
        outcomes = select(func.coalesce(pairs, text("'[]'::json")), *(null() for _ in claimed.c))
        return union_all(select(null().label("finished"), *claimed.c), outcomes).add_cte(recorded)

    def _heartbeat(self) -> tuple[Any, Any]:
        mine = and_(
            self.d.id_in(jobs.c.id),
            jobs.c.worker_id == _p("worker_id"),
            _status_is(*_RUNNING),
        )
        # SKIP LOCKED: never wait on (or deadlock with) a batch of outcomes being
        # written; a row skipped now is read by ``held`` and renewed next beat.
        lockable = select(jobs.c.id).where(mine).with_for_update(skip_locked=True)
        renew = (
            update(jobs)
            .where(jobs.c.id.in_(lockable.scalar_subquery()))
            .values(lease_expires_at=_p("lease_until", UtcDateTime()))
            .returning(jobs.c.id, jobs.c.attempts, jobs.c.status)
        )
        held = select(jobs.c.id, jobs.c.attempts, jobs.c.status).where(mine)
        return renew, held

    def _progress(self) -> _Recorded:
        dml = (
            update(jobs)
            .where(
                jobs.c.id == _p("job_id"),
                jobs.c.worker_id == _p("worker_id"),
                jobs.c.attempts == _p("attempts"),
                _status_is(*_RUNNING),
            )
            .values(
                progress=_p("progress"),
                progress_message=_p("message"),
                progress_details=_p("details", jobs.c.progress_details.type),
                updated_at=_now(),
            )
        )
        return self._recorded(dml, ChangeKind.PROGRESS)

    def _release(self) -> _Recorded:
        dml = (
            update(jobs)
            .where(
                self.d.id_in(jobs.c.id),
                jobs.c.worker_id == _p("worker_id"),
                _status_is(JobStatus.PROCESSING),
            )
            .values(
                status=JobStatus.PENDING.value,
                attempts=jobs.c.attempts - 1,
                worker_id=None,
                lease_expires_at=None,
                run_after=_now(),
                updated_at=_now(),
            )
        )
        return self._recorded(dml, ChangeKind.RELEASED)

    def _reap(self) -> tuple[_Recorded, _Recorded]:
        expired_abort = jobs.c.status == JobStatus.ABORTING.value
        ends = or_(expired_abort, jobs.c.attempts > jobs.c.max_retries)
        # SKIP LOCKED: rows being written by their worker right now are not dead.
        expired = (
            select(jobs.c.id)
            .where(
                jobs.c.queue == _p("queue"),
                _status_is(*_RUNNING),
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
                error_code=case((expired_abort, _ABORTED), else_="LeaseExpired"),
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
                jobs.c.queue == _p("queue"),
                _status_is(JobStatus.PENDING),
                jobs.c.deadline <= _now(),
            )
            .values(
                status=JobStatus.FAILED.value,
                error="deadline passed before the job could run",
                error_code="DeadlineExceeded",
                completed_at=_now(),
                updated_at=_now(),
            )
        )
        return self._recorded(leases, _requeued_kind), self._recorded(deadlines)

    def _abort(self) -> tuple[_Recorded, _Recorded]:
        pending = jobs.c.status == JobStatus.PENDING.value
        dml = (
            update(jobs)
            .where(_status_is(JobStatus.PENDING, JobStatus.PROCESSING))
            .values(
                status=case((pending, JobStatus.FAILED.value), else_=JobStatus.ABORTING.value),
                error=case((pending, "aborted"), else_=jobs.c.error),
                error_code=case((pending, _ABORTED), else_=jobs.c.error_code),
                completed_at=case((pending, _now()), else_=jobs.c.completed_at),
                updated_at=_now(),
            )
        )
        return (
            self._recorded(dml.where(jobs.c.id == _p("job_id"))),
            self._recorded(dml.where(jobs.c.job_run_id == _p("job_run_id"))),
        )

    def _retry_now(self) -> _Recorded:
        dml = (
            update(jobs)
            .where(jobs.c.id == _p("job_id"), _status_is(JobStatus.FAILED))
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

    def _insert_many(self) -> _Recorded:
        """One INSERT ... SELECT over the batch; ids follow the batch order."""
        v = self.d.batch_source(_SUBMIT_COLUMNS)
        source = select(
            _p("queue"),
            literal(JobStatus.PENDING.value),
            func.coalesce(v.c.input, self.d.JSON_NULL),  # a row source reads JSON null as NULL
            v.c.input_digest,
            _p("max_retries", Integer()),
            _p("priority", Integer()),
            _p("run_after", UtcDateTime()),
            _p("deadline", UtcDateTime()),
            _p("job_run_id"),
            _p("durable_stream", Boolean()),
            _now(),
            _now(),
        ).order_by(v.c.ord)
        names = [
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
            "created_at",
            "updated_at",
        ]
        return self._recorded(insert(jobs).from_select(names, source), ChangeKind.SUBMITTED)


@cache
def _statements(dialect: str) -> _Statements:
    return _Statements(postgres if dialect == "postgresql" else sqlite)


class JobStore:
    """Queue statements over one :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._s = _statements(db.dialect)
        self._d = self._s.d
        # Where a write records its changes in the same statement (PostgreSQL),
        # each statement stands alone and needs no transaction; on SQLite a write
        # and its change records are two statements in one transaction.
        self._atomic = not self._d.DML_CTES
        self._blobs = BlobStore(db)

    async def _write(
        self, conn: AsyncConnection, stmt: _Recorded, params: dict[str, Any]
    ) -> list[Any]:
        """Run a recorded write; returns the changed rows (attribute access, ``_asdict``)."""
        if stmt.record is None:  # PostgreSQL: one statement, run on the driver
            compiled = self._s.driver.get(id(stmt))
            if compiled is None:
                compiled = DriverStatement.compile(stmt.main, conn.dialect)
                self._s.driver[id(stmt)] = compiled
            return await compiled.execute(conn, params, self.db.safe_url)
        rows = list((await conn.execute(stmt.main, params)).all())
        if rows:
            ids = self._d.encode_ids([r.id for r in rows])
            await conn.execute(stmt.record, {"p_now": params["p_now"], "ids": ids})
        return rows

    async def _record(
        self, conn: AsyncConnection, ids: Sequence[int], now: datetime, kind: ChangeKind
    ) -> None:
        """Append one change per job in ``ids``, read from the rows as they are now."""
        if ids:
            params = _params(now=now, ids=self._d.encode_ids(ids))
            await conn.execute(self._s.record_ids[kind], params)

    # -- submit --------------------------------------------------------------------

    @_retrying
    async def submit(
        self, queue: str, options: JobOptions, new: Sequence[NewJob], now: datetime
    ) -> list[int]:
        """Insert jobs sharing ``options``; one id per item, in order. A fingerprint
        matching an active job of the queue returns that job's id and inserts nothing."""
        ids: list[int] = [0] * len(new)
        plain = [i for i, n in enumerate(new) if n.fingerprint is None]
        keyed = [i for i, n in enumerate(new) if n.fingerprint is not None]
        shared = {
            "queue": queue,
            "now": now,
            "max_retries": options.max_retries,
            "priority": options.priority,
            "run_after": options.run_after,
            "deadline": options.deadline,
            "job_run_id": options.job_run_id,
            "durable_stream": options.durable_stream,
        }
        # Plain jobs are one statement on PostgreSQL (their change records too).
        atomic = self._atomic or bool(keyed)
        async with self.db.transaction(atomic=atomic) as conn:
            if plain:
                items = [new[i] for i in plain] if keyed else new
                params = _params(batch=self._submit_batch(items), **shared)
                written = await self._write(conn, self._s.insert_many, params)
                # ids come from the sequence in insertion order: the ORDER BY's.
                for i, job_id in zip(plain, sorted(r.id for r in written), strict=True):
                    ids[i] = job_id
            inserted: list[int] = []
            for i in keyed:
                fresh = await self._insert_deduped(conn, queue, options, new[i], now)
                if fresh is None:
                    ids[i] = await self._active_by_fingerprint(conn, queue, new[i].fingerprint)
                else:
                    ids[i] = fresh
                    inserted.append(fresh)
            await self._record(conn, inserted, now, ChangeKind.SUBMITTED)
        return ids

    def _submit_batch(self, items: Sequence[NewJob]) -> str:
        """The batch of :attr:`_Statements.insert_many` as JSON text, built around each
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

    async def _insert_deduped(
        self, conn: AsyncConnection, queue: str, options: JobOptions, new: NewJob, now: datetime
    ) -> int | None:
        stmt = (
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
        found = await conn.scalar(stmt, {"input_json": new.input_json})
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
        if found is None:
            # The active twin ended between our INSERT and this SELECT: the
            # transaction rolls back and @_retrying runs the submit again.
            err = StorageError(f"fingerprint {fingerprint!r} changed state during submit")
            err.retryable = True
            raise err
        return int(found)

    # -- reads -----------------------------------------------------------------------

    @_retrying
    async def get(self, job_id: int) -> Job:
        async with self.db.transaction(write=False, atomic=False) as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        if row is None:
            raise JobNotFound(job_id)
        return _model(Job, row)

    @_retrying
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
        async with self.db.transaction(write=False, atomic=False) as conn:
            rows = (await conn.execute(stmt)).all()
        return [_model(Job, r) for r in rows]

    @_retrying
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
        async with self.db.transaction(write=False, atomic=False) as conn:
            row = (await conn.execute(stmt)).first()
        return (False, None) if row is None else (True, row.output)

    @_retrying
    async def counts(self) -> list[tuple[str, str, int]]:
        """``(queue, status, count)`` for every queue and status present."""
        stmt = select(jobs.c.queue, jobs.c.status, func.count()).group_by(
            jobs.c.queue, jobs.c.status
        )
        async with self.db.transaction(write=False, atomic=False) as conn:
            return [(r[0], r[1], int(r[2])) for r in (await conn.execute(stmt)).all()]

    @_retrying
    async def changes_head(self) -> ChangeCursor:
        """The change-feed cursor of "now": reading after it returns what commits later."""
        async with self.db.transaction(write=False, atomic=False) as conn:
            value = await conn.scalar(feed.head_statement(self.db.dialect))
        return feed.head_cursor(self.db.dialect, value)

    def check_cursor(self, after: ChangeCursor | int) -> None:
        """Raise :class:`ConfigurationError` unless ``after`` is a cursor of this feed."""
        feed.parse(self.db.dialect, after)

    async def changes(
        self,
        after: ChangeCursor | int = 0,
        *,
        queue: str | None = None,
        job_id: int | None = None,
        limit: int = 1000,
    ) -> list[JobChange]:
        """Up to ``limit`` changes after the cursor ``after`` (see :mod:`taskdb.store.feed`;
        ``0`` is the start of the feed), in feed order."""
        return (await self.changes_page(after, queue=queue, job_id=job_id, limit=limit)).changes

    @_retrying
    async def changes_page(
        self,
        after: ChangeCursor | int = 0,
        *,
        queue: str | None = None,
        job_id: int | None = None,
        limit: int = 1000,
    ) -> ChangePage:
        """:meth:`changes`, with the cursor to read the next page from (past the last
        change returned, or past everything this read could see when the page is short)."""
        dialect = self.db.dialect
        cursor = feed.parse(dialect, after)
        stmt, params = feed.page_query(dialect, cursor, queue, job_id, limit)
        async with self.db.transaction(write=False, atomic=False) as conn:
            rows = (await conn.execute(stmt, params)).all()
        read, following = feed.cursors(dialect, cursor, rows, limit)
        changes = [_model(JobChange, row, cursor=at) for row, at in read]
        return ChangePage(changes, following, full=len(changes) >= limit)

    # -- worker side -----------------------------------------------------------------

    @_retrying
    async def claim_rows(
        self, queue: str, worker_id: str, limit: int, now: datetime, lease_seconds: float
    ) -> list[Any]:
        """Atomically take up to ``limit`` runnable jobs: highest priority, then
        ``run_after``, then submission order. No job is ever handed to two claims.

        Returns the claimed rows as the database wrote them (the server's hot
        path); :meth:`claim` returns them as :class:`Job` models.
        """
        params = self._claim_params(queue, worker_id, limit, now, lease_seconds)
        async with self.db.transaction(atomic=self._atomic) as conn:
            rows = await self._write(conn, self._s.claim, params)
        rows.sort(key=_claim_order)
        return rows

    @staticmethod
    def _claim_params(
        queue: str, worker_id: str, limit: int, now: datetime, lease_seconds: float
    ) -> dict[str, Any]:
        lease_until = now + timedelta(seconds=lease_seconds)
        return _params(
            queue=queue, worker_id=worker_id, limit=limit, now=now, lease_until=lease_until
        )

    async def claim(
        self, queue: str, worker_id: str, limit: int, now: datetime, lease_seconds: float
    ) -> list[Job]:
        """:meth:`claim_rows` as :class:`Job` models."""
        rows = await self.claim_rows(queue, worker_id, limit, now, lease_seconds)
        return [_model(Job, r) for r in rows]

    @_retrying
    async def heartbeat(
        self, worker_id: str, claims: Sequence[Claim], now: datetime, lease_seconds: float
    ) -> dict[int, JobStatus]:
        """Extend the leases of ``claims``; returns the status of each claim still held."""
        if not claims:
            return {}
        params = _params(
            ids=self._d.encode_ids([c.job_id for c in claims]),
            worker_id=worker_id,
            lease_until=now + timedelta(seconds=lease_seconds),
        )
        async with self.db.transaction(atomic=self._atomic) as conn:
            rows = list((await conn.execute(self._s.heartbeat, params)).all())
            if len(rows) < len(claims):  # some were locked by our own outcome writes
                rows = list((await conn.execute(self._s.held, params)).all())
        held = {(c.job_id, c.attempts) for c in claims}
        return {r.id: JobStatus(r.status) for r in rows if (r.id, r.attempts) in held}

    @_retrying
    async def aborting(self, claims: Sequence[Claim]) -> set[int]:
        """Which of ``claims`` were asked to abort (a read: cheap to poll)."""
        if not claims:
            return set()
        params = _params(ids=self._d.encode_ids([c.job_id for c in claims]))
        async with self.db.transaction(write=False, atomic=False) as conn:
            found: list[int] = list((await conn.scalars(self._s.aborting, params)).all())
        return set(found)

    @_retrying
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
        params = _params(
            job_id=claim.job_id,
            attempts=claim.attempts,
            worker_id=worker_id,
            progress=progress,
            message=message,
            details=details,
            now=now,
        )
        async with self.db.transaction(atomic=self._atomic) as conn:
            rows = await self._write(conn, self._s.progress, params)
        if not rows:
            raise LeaseLost(f"job {claim.job_id}: this worker no longer holds it")
        return JobStatus(rows[0].status)

    @_retrying
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
        params = self._finish_params(worker_id, items, now)
        async with self.db.transaction(atomic=self._atomic) as conn:
            done = await self._write(conn, self._s.finish, params)
        return {r.id: JobStatus(r.status) for r in done}

    @_retrying
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
        an outcome of ``items`` puts back to PENDING is not claimed by this call."""
        params = self._finish_params(worker_id, items, now)
        params |= self._claim_params(queue, worker_id, limit, now, lease_seconds)
        async with self.db.transaction(atomic=self._atomic) as conn:
            if self._s.finish_and_claim is None:  # claim first, as PostgreSQL's snapshot does
                claimed = await self._write(conn, self._s.claim, params)
                done = await self._write(conn, self._s.finish, params)
                statuses = {r.id: JobStatus(r.status) for r in done}
            else:
                rows = await self._write(conn, self._s.finish_and_claim, params)
                claimed = [r for r in rows if r.finished is None]
                (pairs,) = [r.finished for r in rows if r.finished is not None]
                statuses = {job_id: JobStatus(status) for job_id, status in pairs}
        claimed.sort(key=_claim_order)
        return statuses, claimed

    def _finish_params(
        self, worker_id: str, items: Sequence[tuple[Claim, Outcome]], now: datetime
    ) -> dict[str, Any]:
        batch = [self._finish_row(claim, outcome, now) for claim, outcome in items]
        return _params(worker_id=worker_id, now=now, batch=self._d.encode_batch(batch))

    @staticmethod
    def _finish_row(claim: Claim, outcome: Outcome, now: datetime) -> dict[str, Any]:
        """One row of the outcome batch (a column left out reads as NULL)."""
        row: dict[str, Any] = {"id": claim.job_id, "attempts": claim.attempts}
        if isinstance(outcome, Complete):
            row.update(status="COMPLETED", output=outcome.output, completed_at=now)
        elif isinstance(outcome, Retry):
            row.update(status="PENDING", error=outcome.error, error_code=outcome.error_code)
            row.update(run_after=outcome.run_after)
        else:
            row.update(status="FAILED", error=outcome.error, error_code=outcome.error_code)
            row.update(completed_at=now)
        return row

    @_retrying
    async def release(self, worker_id: str, claims: Sequence[Claim], now: datetime) -> int:
        """Give claims back untouched (graceful stop): PENDING, the attempt not counted."""
        if not claims:
            return 0
        params = _params(
            ids=self._d.encode_ids([c.job_id for c in claims]), worker_id=worker_id, now=now
        )
        async with self.db.transaction(atomic=self._atomic) as conn:
            return len(await self._write(conn, self._s.release, params))

    @_retrying
    async def reap(self, queue: str, now: datetime) -> int:
        """Recover jobs whose worker died and fail jobs whose deadline passed.

        A running job whose lease expired goes back to PENDING (FAILED with
        ``LeaseExpired`` once its retries are used up, or ``AbortedJobError``
        if it was being aborted); a pending job past its deadline fails.
        """
        params = _params(queue=queue, now=now)
        async with self.db.transaction(atomic=self._atomic) as conn:
            leased = await self._write(conn, self._s.reap_leases, params)
            late = await self._write(conn, self._s.reap_deadlines, params)
        return len(leased) + len(late)

    @staticmethod
    async def _require_job(conn: AsyncConnection, job_id: int) -> None:
        if await conn.scalar(select(jobs.c.id).where(jobs.c.id == job_id)) is None:
            raise JobNotFound(job_id)

    # -- client side -----------------------------------------------------------------

    @_retrying
    async def abort(
        self, now: datetime, *, job_id: int | None = None, job_run_id: str | None = None
    ) -> int:
        """Abort one job or a whole run: PENDING ends FAILED at once, running jobs
        become ABORTING (their worker cancels them). Returns how many changed."""
        async with self.db.transaction(atomic=self._atomic) as conn:
            if job_id is not None:
                params = _params(job_id=job_id, now=now)
                rows = await self._write(conn, self._s.abort_job, params)
                if not rows:
                    await self._require_job(conn, job_id)
            else:
                params = _params(job_run_id=job_run_id, now=now)
                rows = await self._write(conn, self._s.abort_run, params)
        return len(rows)

    @_retrying
    async def retry_now(self, job_id: int, now: datetime) -> bool:
        """Put a FAILED job back to PENDING for one more run (admin action)."""
        async with self.db.transaction(atomic=self._atomic) as conn:
            params = _params(job_id=job_id, now=now)
            rows = await self._write(conn, self._s.retry_now, params)
            if not rows:
                await self._require_job(conn, job_id)
        return bool(rows)

    @_retrying
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
                params = _params(ids=self._d.encode_ids(ids))
                await conn.execute(delete(jobs).where(self._d.id_in(jobs.c.id)), params)
                await conn.execute(
                    delete(job_streams).where(self._d.id_in(job_streams.c.job_id)), params
                )
                await self._blobs.release_holders(conn, [job_holder(i) for i in ids])
        return len(ids)

    # -- rate limits -------------------------------------------------------------------

    @_retrying
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
            lock = self._d.advisory_lock_sql()
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

    @_retrying
    async def return_rate_slots(self, ids: Sequence[int]) -> None:
        if ids:
            async with self.db.transaction() as conn:
                await conn.execute(delete(rate_limit_hits).where(rate_limit_hits.c.id.in_(ids)))
