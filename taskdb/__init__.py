"""taskdb: a SQL-backed durable job system for PostgreSQL and SQLite.

Start with :func:`connect`, then :class:`JobQueueClient` to submit jobs and
:class:`JobQueueServer` to run them.
"""

from taskdb.cache import (
    CacheRef,
    MemoryTaskOutputRepository,
    RunPrivateCacheRepo,
    SqlTaskOutputRepository,
    TaskOutputRepository,
    collect_garbage,
    is_cache_ref,
    resolve_job_output,
    resolve_output,
)
from taskdb.core.jobs import ChangeKind, Job, JobChange, JobStatus
from taskdb.core.retry import RetryPolicy
from taskdb.errors import (
    AbortedJobError,
    ConfigurationError,
    DeadlineExceeded,
    GraphDefinitionError,
    GraphError,
    GraphTimeout,
    InvalidCacheRef,
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
    TaskFailed,
    TaskInputError,
    WaitTimeout,
)
from taskdb.graph.dataflow import Dataflow
from taskdb.graph.jobs import GraphJobHandler, submit_graph
from taskdb.graph.model import TaskGraph
from taskdb.graph.pump import StreamPump
from taskdb.graph.registry import register_task
from taskdb.graph.runner import GraphResult, GraphRunner, RunConfig
from taskdb.graph.task import Task, TaskContext, TaskStatus
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
from taskdb.queue.server import JobQueueServer, ServerStats
from taskdb.store.database import Database, connect
from taskdb.streams.blob import Blob

__all__ = [
    "AbortedJobError",
    "Blob",
    "CacheRef",
    "ChangeKind",
    "CompositeLimiter",
    "ConcurrencyLimiter",
    "ConfigurationError",
    "Database",
    "Dataflow",
    "DeadlineExceeded",
    "DelayLimiter",
    "EvenlySpacedRateLimiter",
    "GraphDefinitionError",
    "GraphError",
    "GraphJobHandler",
    "GraphResult",
    "GraphRunner",
    "GraphTimeout",
    "InvalidCacheRef",
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
    "MemoryTaskOutputRepository",
    "NullLimiter",
    "PermanentJobError",
    "RateLimiter",
    "RetryPolicy",
    "RetryableJobError",
    "RunConfig",
    "RunPrivateCacheRepo",
    "SchemaOutOfDate",
    "ServerStats",
    "SqlTaskOutputRepository",
    "StorageError",
    "StreamPump",
    "Task",
    "TaskContext",
    "TaskFailed",
    "TaskGraph",
    "TaskInputError",
    "TaskOutputRepository",
    "TaskStatus",
    "TaskdbError",
    "WaitTimeout",
    "collect_garbage",
    "connect",
    "is_cache_ref",
    "register_task",
    "resolve_job_output",
    "resolve_output",
    "submit_graph",
]
