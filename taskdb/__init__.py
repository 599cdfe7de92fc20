"""taskdb: a SQL-backed durable job system for PostgreSQL and SQLite.

Start with :func:`connect`, then :class:`JobQueueClient` to submit jobs and
:class:`JobQueueServer` to run them.
"""

from taskdb.errors import (
    AbortedJobError,
    ConfigurationError,
    DeadlineExceeded,
    InvalidJobInput,
    JobError,
    JobNotFound,
    LeaseExpired,
    LeaseLost,
    PermanentJobError,
    RetryableJobError,
    SchemaOutOfDate,
    StorageError,
    TaskdbError,
    WaitTimeout,
)
from taskdb.queue.client import JobHandle, JobQueueClient
from taskdb.queue.context import JobContext
from taskdb.queue.limiters import (
    CompositeLimiter,
    ConcurrencyLimiter,
    DelayLimiter,
    EvenlySpacedRateLimiter,
    Limiter,
    NullLimiter,
    RateLimiter,
)
from taskdb.queue.models import ChangeKind, Job, JobChange, JobStatus
from taskdb.queue.retry import RetryPolicy
from taskdb.queue.server import JobQueueServer, ServerStats
from taskdb.store.database import Database, connect
from taskdb.streams.blob import Blob

__all__ = [
    "AbortedJobError",
    "Blob",
    "ChangeKind",
    "CompositeLimiter",
    "ConcurrencyLimiter",
    "ConfigurationError",
    "Database",
    "DeadlineExceeded",
    "DelayLimiter",
    "EvenlySpacedRateLimiter",
    "InvalidJobInput",
    "Job",
    "JobChange",
    "JobContext",
    "JobError",
    "JobHandle",
    "JobNotFound",
    "JobQueueClient",
    "JobQueueServer",
    "JobStatus",
    "LeaseExpired",
    "LeaseLost",
    "Limiter",
    "NullLimiter",
    "PermanentJobError",
    "RateLimiter",
    "RetryPolicy",
    "RetryableJobError",
    "SchemaOutOfDate",
    "ServerStats",
    "StorageError",
    "TaskdbError",
    "WaitTimeout",
    "connect",
]
