"""Task graphs: tasks, dataflows between their ports, streaming runs."""

from taskdb.graph.model import ALL_PORTS, Dataflow, TaskGraph
from taskdb.graph.pump import StreamPump
from taskdb.graph.runner import EventCallback, GraphResult, GraphRunner, RunConfig
from taskdb.graph.task import ProgressCallback, Task, TaskContext, TaskStatus

__all__ = [
    "ALL_PORTS",
    "Dataflow",
    "EventCallback",
    "GraphResult",
    "GraphRunner",
    "ProgressCallback",
    "RunConfig",
    "StreamPump",
    "Task",
    "TaskContext",
    "TaskGraph",
    "TaskStatus",
]
