"""Applications and typed tasks: ``@app.task``, ``defer`` from sync and async code,
results with their types, and the worker side that runs them by name."""

from taskdb.app.app import App, AppHandler
from taskdb.app.signature import TaskSignature
from taskdb.app.tasks import SyncTaskHandle, TaskCall, TaskHandle, TypedTask
from taskdb.errors import TaskNotFound
from taskdb.queue.context import SyncJobContext

__all__ = [
    "App",
    "AppHandler",
    "SyncJobContext",
    "SyncTaskHandle",
    "TaskCall",
    "TaskHandle",
    "TaskNotFound",
    "TaskSignature",
    "TypedTask",
]
