"""taskdb: a SQL-backed durable job system for PostgreSQL and SQLite.

Start with :func:`connect`, then :class:`JobQueueClient` to submit jobs and
:class:`JobQueueServer` to run them; :class:`Admin` inspects and repairs.

``import taskdb`` loads only the error classes: every other name is imported
from its subpackage on first use (SQLAlchemy, pydantic and psycopg take a few
hundred milliseconds to load).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from taskdb.errors import (
    AbortedJobError,
    ConfigurationError,
    DeadlineExceeded,
    GraphDefinitionError,
    GraphError,
    GraphTimeout,
    InvalidCacheRef,
    InvalidJobInput,
    InvalidSchedule,
    JobError,
    JobNotFound,
    LeaseExpired,
    LeaseLost,
    PermanentJobError,
    RetryableJobError,
    ScheduleNotFound,
    SchemaOutOfDate,
    StorageError,
    TaskdbError,
    TaskFailed,
    TaskInputError,
    TaskNotFound,
    WaitTimeout,
)

if TYPE_CHECKING:
    from taskdb.admin import (
        Admin,
    )
    from taskdb.app import App, SyncJobContext, SyncTaskHandle, TaskHandle, TypedTask
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
    from taskdb.core import (
        ChangeKind,
        Job,
        JobChange,
        JobStatus,
        RetryPolicy,
        ScheduleInfo,
    )
    from taskdb.graph import (
        Dataflow,
        GraphJobHandler,
        GraphResult,
        GraphRunner,
        RunConfig,
        StreamPump,
        Task,
        TaskContext,
        TaskGraph,
        TaskStatus,
        register_task,
        submit_graph,
    )
    from taskdb.queue import (
        CompositeLimiter,
        ConcurrencyLimiter,
        DelayLimiter,
        EvenlySpacedRateLimiter,
        JobContext,
        JobHandle,
        JobQueueClient,
        JobQueueServer,
        Limiter,
        NullLimiter,
        RateLimiter,
        Scheduler,
        ServerSettings,
        ServerState,
        ServerStats,
        SyncJobHandle,
        SyncJobQueueClient,
    )
    from taskdb.store import (
        BlobInfo,
        Database,
        DatabaseStats,
        GcReport,
        QueueStats,
        Throughput,
        WorkerInfo,
        connect,
    )
    from taskdb.streams import (
        Blob,
    )

_LAZY: dict[str, str] = {
    "App": "taskdb.app",
    "SyncJobContext": "taskdb.app",
    "SyncTaskHandle": "taskdb.app",
    "TaskHandle": "taskdb.app",
    "TypedTask": "taskdb.app",
    "Admin": "taskdb.admin",
    "CacheRef": "taskdb.cache",
    "MemoryTaskOutputRepository": "taskdb.cache",
    "RunPrivateCacheRepo": "taskdb.cache",
    "SqlTaskOutputRepository": "taskdb.cache",
    "TaskOutputRepository": "taskdb.cache",
    "collect_garbage": "taskdb.cache",
    "is_cache_ref": "taskdb.cache",
    "resolve_job_output": "taskdb.cache",
    "resolve_output": "taskdb.cache",
    "ChangeKind": "taskdb.core",
    "Job": "taskdb.core",
    "JobChange": "taskdb.core",
    "JobStatus": "taskdb.core",
    "RetryPolicy": "taskdb.core",
    "ScheduleInfo": "taskdb.core",
    "Dataflow": "taskdb.graph",
    "GraphJobHandler": "taskdb.graph",
    "GraphResult": "taskdb.graph",
    "GraphRunner": "taskdb.graph",
    "RunConfig": "taskdb.graph",
    "StreamPump": "taskdb.graph",
    "Task": "taskdb.graph",
    "TaskContext": "taskdb.graph",
    "TaskGraph": "taskdb.graph",
    "TaskStatus": "taskdb.graph",
    "register_task": "taskdb.graph",
    "submit_graph": "taskdb.graph",
    "CompositeLimiter": "taskdb.queue",
    "ConcurrencyLimiter": "taskdb.queue",
    "DelayLimiter": "taskdb.queue",
    "EvenlySpacedRateLimiter": "taskdb.queue",
    "JobContext": "taskdb.queue",
    "JobHandle": "taskdb.queue",
    "JobQueueClient": "taskdb.queue",
    "JobQueueServer": "taskdb.queue",
    "Limiter": "taskdb.queue",
    "NullLimiter": "taskdb.queue",
    "RateLimiter": "taskdb.queue",
    "Scheduler": "taskdb.queue",
    "ServerSettings": "taskdb.queue",
    "ServerState": "taskdb.queue",
    "ServerStats": "taskdb.queue",
    "SyncJobHandle": "taskdb.queue",
    "SyncJobQueueClient": "taskdb.queue",
    "BlobInfo": "taskdb.store",
    "Database": "taskdb.store",
    "DatabaseStats": "taskdb.store",
    "GcReport": "taskdb.store",
    "QueueStats": "taskdb.store",
    "Throughput": "taskdb.store",
    "WorkerInfo": "taskdb.store",
    "connect": "taskdb.store",
    "Blob": "taskdb.streams",
}
"""Each lazily imported name and the public subpackage it comes from."""


def __getattr__(name: str) -> Any:
    package = _LAZY.get(name)
    if package is None:
        raise AttributeError(f"module 'taskdb' has no attribute {name!r}")
    value = getattr(importlib.import_module(package), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AbortedJobError",
    "Admin",
    "App",
    "Blob",
    "BlobInfo",
    "CacheRef",
    "ChangeKind",
    "CompositeLimiter",
    "ConcurrencyLimiter",
    "ConfigurationError",
    "Database",
    "DatabaseStats",
    "Dataflow",
    "DeadlineExceeded",
    "DelayLimiter",
    "EvenlySpacedRateLimiter",
    "GcReport",
    "GraphDefinitionError",
    "GraphError",
    "GraphJobHandler",
    "GraphResult",
    "GraphRunner",
    "GraphTimeout",
    "InvalidCacheRef",
    "InvalidJobInput",
    "InvalidSchedule",
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
    "QueueStats",
    "RateLimiter",
    "RetryPolicy",
    "RetryableJobError",
    "RunConfig",
    "RunPrivateCacheRepo",
    "ScheduleInfo",
    "ScheduleNotFound",
    "Scheduler",
    "SchemaOutOfDate",
    "ServerSettings",
    "ServerState",
    "ServerStats",
    "SqlTaskOutputRepository",
    "StorageError",
    "StreamPump",
    "SyncJobContext",
    "SyncJobHandle",
    "SyncJobQueueClient",
    "SyncTaskHandle",
    "Task",
    "TaskContext",
    "TaskFailed",
    "TaskGraph",
    "TaskHandle",
    "TaskInputError",
    "TaskNotFound",
    "TaskOutputRepository",
    "TaskStatus",
    "TaskdbError",
    "Throughput",
    "TypedTask",
    "WaitTimeout",
    "WorkerInfo",
    "collect_garbage",
    "connect",
    "is_cache_ref",
    "register_task",
    "resolve_job_output",
    "resolve_output",
    "submit_graph",
]
