"""The durable job queue: client, server, job context, limiters, the change feed.

The job model and retry math it works with live in :mod:`taskdb.core` and are
re-exported here, with the errors a handler raises.
"""

from taskdb.core.jobs import ChangeKind, Job, JobChange, JobStatus
from taskdb.core.retry import RetryPolicy
from taskdb.errors import (
    AbortedJobError,
    JobNotFound,
    LeaseLost,
    PermanentJobError,
    RetryableJobError,
)
from taskdb.queue.changes import ChangeCallback, StopFollowing, follow_changes
from taskdb.queue.client import JobHandle, JobQueueClient, SubmitOptions
from taskdb.queue.config import ServerSettings
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
from taskdb.queue.scheduler import Scheduler
from taskdb.queue.server import JobQueueServer, ServerState, ServerStats
from taskdb.queue.sync import SyncJobHandle, SyncJobQueueClient

__all__ = [
    "AbortedJobError",
    "ChangeCallback",
    "ChangeKind",
    "CompositeLimiter",
    "ConcurrencyLimiter",
    "DelayLimiter",
    "EvenlySpacedRateLimiter",
    "Job",
    "JobChange",
    "JobContext",
    "JobHandle",
    "JobNotFound",
    "JobQueueClient",
    "JobQueueServer",
    "JobStatus",
    "LeaseLost",
    "Limiter",
    "NullLimiter",
    "PermanentJobError",
    "RateLimiter",
    "RetryPolicy",
    "RetryableJobError",
    "Scheduler",
    "ServerSettings",
    "ServerState",
    "ServerStats",
    "StopFollowing",
    "SubmitOptions",
    "SyncJobHandle",
    "SyncJobQueueClient",
    "follow_changes",
]
