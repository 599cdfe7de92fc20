"""Task types by name, and graphs as JSON (pure).

A worker process rebuilds a submitted graph from JSON: every task class it
may meet must be registered (``@register_task``) under its ``type`` in the
worker's process too, by importing the module that defines it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from taskdb.errors import GraphDefinitionError
from taskdb.graph.dataflow import DataflowGraph
from taskdb.graph.model import TaskGraph
from taskdb.graph.task import Task

T = TypeVar("T", bound=type[Task])

_TASK_TYPES: dict[str, type[Task]] = {}


def register_task(cls: T) -> T:
    """Class decorator: make ``cls`` buildable from JSON under ``cls.type``."""
    known = _TASK_TYPES.get(cls.type)
    if known is not None and known is not cls:
        raise GraphDefinitionError(
            f"task type {cls.type!r} is already registered by {known.__module__}.{known.__name__}"
        )
    _TASK_TYPES[cls.type] = cls
    return cls


def task_type(name: str) -> type[Task]:
    try:
        return _TASK_TYPES[name]
    except KeyError:
        raise GraphDefinitionError(
            f"unknown task type {name!r}: register it with @register_task in a module "
            f"the worker imports"
        ) from None


def graph_to_json(graph: DataflowGraph) -> dict[str, Any]:
    """The graph as JSON: its tasks (id, type, defaults) and dataflows."""
    for task in graph.tasks.values():
        task_type(task.type)  # fail now, not on the worker
    return {
        "tasks": [
            {"id": t.id, "type": t.type, "defaults": t.defaults} for t in graph.tasks.values()
        ],
        "dataflows": [
            [f.source_id, f.source_port, f.target_id, f.target_port] for f in graph.dataflows
        ],
    }


def graph_from_json(data: Mapping[str, Any]) -> TaskGraph:
    """Rebuild a graph from :func:`graph_to_json`; bad data: :class:`GraphDefinitionError`."""
    try:
        tasks, flows = data["tasks"], data["dataflows"]
        graph = TaskGraph()
        for spec in tasks:
            graph.add(task_type(spec["type"])(spec["id"], **dict(spec.get("defaults") or {})))
        for source_id, source_port, target_id, target_port in flows:
            graph.connect(source_id, source_port, target_id, target_port)
    except GraphDefinitionError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise GraphDefinitionError(f"malformed graph JSON: {type(exc).__name__}: {exc}") from None
    return graph
