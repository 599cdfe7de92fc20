"""Task graphs: tasks, dataflows between their ports, streaming runs."""

from taskdb.graph.dataflow import ALL_PORTS, Dataflow, DataflowGraph
from taskdb.graph.jobs import GraphJobHandler, submit_graph
from taskdb.graph.model import TaskGraph
from taskdb.graph.pump import StreamPump
from taskdb.graph.registry import register_task
from taskdb.graph.runner import EventCallback, GraphResult, GraphRunner, RunConfig
from taskdb.graph.task import ProgressCallback, Task, TaskContext, TaskStatus

__all__ = [
    "ALL_PORTS",
    "Dataflow",
    "DataflowGraph",
    "EventCallback",
    "GraphJobHandler",
    "GraphResult",
    "GraphRunner",
    "ProgressCallback",
    "RunConfig",
    "StreamPump",
    "Task",
    "TaskContext",
    "TaskGraph",
    "TaskStatus",
    "register_task",
    "submit_graph",
]
