"""The taskdb exception tree.

Every error taskdb raises derives from :class:`TaskdbError`; driver errors
(psycopg, sqlite3, SQLAlchemy) are translated at the storage boundary
(:mod:`taskdb.store.database`) and never reach callers::

    TaskdbError
    ├── ConfigurationError          bad URL, bad option value
    │   └── InvalidSchedule         bad cron, time zone, interval or catch-up policy
    ├── StorageError                the database failed or is unreachable
    │   └── SchemaOutOfDate         schema behind head: run `taskdb migrate`
    ├── InvalidJobInput             input/output not JSON, naive datetimes, ...
    ├── InvalidCacheRef             a value passed as a CacheRef is not one
    ├── JobNotFound                 unknown job id
    ├── ScheduleNotFound            unknown schedule name
    ├── WaitTimeout                 wait() gave up (also a TimeoutError)
    ├── LeaseLost                   this worker no longer owns the job (fencing)
    ├── GraphError                  a task graph is malformed or its run failed
    │   ├── GraphDefinitionError    duplicate task id, unknown task or port, a cycle
    │   ├── TaskInputError          a task's input does not match its input schema
    │   ├── TaskFailed              a task failed: names the task, chains the cause
    │   └── GraphTimeout            a task or the whole run timed out (also a TimeoutError)
    └── JobError                    a job ended in failure; carries error_code
        ├── RetryableJobError       retried while attempts remain
        ├── PermanentJobError       never retried
        │   ├── DeadlineExceeded    the job's deadline passed
        │   ├── LeaseExpired        its worker died too often (lease ran out)
        │   └── TaskNotFound        the worker knows no task of the job's name
        └── AbortedJobError         the job was aborted

A job's error class survives its row as ``error_code`` (the class name), so a
client in another process re-raises the same class (:func:`job_error_from_row`).
"""

from __future__ import annotations

from datetime import datetime


class TaskdbError(Exception):
    """Root of every error raised by taskdb."""


class ConfigurationError(TaskdbError):
    """A URL, option or argument is invalid."""


class StorageError(TaskdbError):
    """The database failed, is unreachable, or returned something unusable.

    ``retryable`` is True when the transaction certainly did not commit (the
    connection was lost before COMMIT), so running it again is safe.
    ``unavailable`` is True when the database could not be reached (down,
    restarting, refusing connections) or dropped the connection: an outage,
    which taskdb's own loops ride out by retrying.
    """

    retryable: bool = False
    unavailable: bool = False


class SchemaOutOfDate(StorageError):
    """The database schema is behind the code: run ``taskdb migrate``."""


class InvalidJobInput(TaskdbError):
    """A job input, output or option cannot be stored (not JSON, naive time, ...)."""


class InvalidCacheRef(TaskdbError):
    """A value passed as a ``CacheRef`` lacks the ``kind`` brand or a string ``$ref``."""


class JobNotFound(TaskdbError):
    """No job has this id."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class InvalidSchedule(ConfigurationError):
    """A periodic schedule's definition is wrong (cron, time zone, interval, policy)."""


class ScheduleNotFound(TaskdbError):
    """No schedule has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"schedule {name!r} not found")
        self.name = name


class WaitTimeout(TaskdbError, TimeoutError):
    """A wait for a job ended before the job did."""


class LeaseLost(TaskdbError):
    """The worker's claim on a job was lost (lease expired, aborted or re-claimed)."""


class GraphError(TaskdbError):
    """A task graph is malformed, or one of its runs failed."""


class GraphDefinitionError(GraphError):
    """The graph cannot be built: a duplicate task id, an unknown task or port, a cycle."""


class TaskInputError(GraphError):
    """A task's assembled input does not validate against its input schema."""


class TaskFailed(GraphError):
    """Task ``task_id`` failed; the original error is ``__cause__``."""

    def __init__(self, task_id: str, message: str) -> None:
        super().__init__(f"task {task_id!r} failed: {message}")
        self.task_id = task_id


class GraphTimeout(GraphError, TimeoutError):
    """A task (``task_id`` set) or the whole run (``task_id`` None) exceeded its timeout."""

    def __init__(self, seconds: float, task_id: str | None = None) -> None:
        what = f"task {task_id!r}" if task_id is not None else "graph run"
        super().__init__(f"{what} timed out after {seconds:g} s")
        self.seconds = seconds
        self.task_id = task_id


class JobError(TaskdbError):
    """A job failed. ``error_code`` names the error class stored in the job row."""

    def __init__(self, message: str = "", *, error_code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code or type(self).__name__


class RetryableJobError(JobError):
    """Raise from a handler to ask for a retry, optionally at ``retry_at``."""

    def __init__(self, message: str = "", retry_at: datetime | None = None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class PermanentJobError(JobError):
    """Raise from a handler to fail the job without retrying."""


class DeadlineExceeded(PermanentJobError):
    """The job did not finish before its deadline."""


class LeaseExpired(PermanentJobError):
    """The job's worker stopped renewing its lease and no retries were left."""


class TaskNotFound(PermanentJobError):
    """The worker that claimed the job has no task of the job's name."""


class AbortedJobError(JobError):
    """The job was aborted."""


_JOB_ERRORS: dict[str, type[JobError]] = {
    cls.__name__: cls
    for cls in (
        JobError,
        RetryableJobError,
        PermanentJobError,
        TaskNotFound,
        DeadlineExceeded,
        LeaseExpired,
        AbortedJobError,
    )
}


def job_error_from_row(error_code: str | None, message: str | None) -> JobError:
    """Rebuild the error a failed job row describes (same class where taskdb knows it)."""
    code = error_code or "JobError"
    cls = _JOB_ERRORS.get(code)
    if cls is None:
        return JobError(message or "", error_code=code)
    err = cls.__new__(cls)
    JobError.__init__(err, message or "", error_code=code)
    if isinstance(err, RetryableJobError):
        err.retry_at = None
    return err
