"""The graph model (pure): tasks, dataflows between their ports, and edge kinds.

:class:`DataflowGraph` is the structure the runner and the stream pump read;
:class:`~taskdb.graph.model.TaskGraph` is the same structure with ``run``.

A :class:`Dataflow` carries the value of one output port into one input
port; ``"*"`` on both sides carries every output port into the input port
of the same name. A dataflow whose ports stream in the same mode is a
*stream edge*: the consumer reads the producer's deltas while they are
produced. Any other dataflow waits for the producer's final value.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from taskdb.errors import GraphDefinitionError
from taskdb.graph.task import Task
from taskdb.streams.ports import get_port_stream_mode

ALL_PORTS = "*"


@dataclass(frozen=True, slots=True)
class Dataflow:
    """``source_id.source_port`` feeds ``target_id.target_port``."""

    source_id: str
    source_port: str
    target_id: str
    target_port: str


def _ports(schema: Mapping[str, Any] | None) -> list[str] | None:
    """The ports a schema declares, or None when it leaves them open."""
    if schema is None:
        return None
    props = schema.get("properties")
    if not isinstance(props, Mapping):
        return None
    if schema.get("additionalProperties", True) is not False and not props:
        return None
    return list(props)


class DataflowGraph:
    """Tasks and the dataflows between them; acyclic by construction."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.dataflows: list[Dataflow] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self.tasks)} tasks, {len(self.dataflows)} dataflows>"

    def add(self, task: Task) -> Task:
        """Add ``task`` (its id must be new) and return it."""
        if not isinstance(task, Task):
            raise GraphDefinitionError(f"not a Task: {task!r}")
        if task.id in self.tasks:
            raise GraphDefinitionError(f"duplicate task id {task.id!r}")
        self.tasks[task.id] = task
        return task

    def connect(
        self, source_id: str, source_port: str, target_id: str, target_port: str
    ) -> Dataflow:
        """Feed ``source_id.source_port`` into ``target_id.target_port``.

        Raises :class:`GraphDefinitionError` for an unknown task or port, a
        ``"*"`` on one side only, a port fed twice, or a dataflow that would
        close a cycle (the message names the cycle).
        """
        source, target = self._task(source_id), self._task(target_id)
        if (source_port == ALL_PORTS) != (target_port == ALL_PORTS):
            raise GraphDefinitionError(
                f"connect {source_id}.{source_port} -> {target_id}.{target_port}: "
                f'"*" connects all ports and must be used on both sides'
            )
        if source_port != ALL_PORTS:
            self._check_port(source, source_port, source.output_schema, "output")
            self._check_port(target, target_port, target.input_schema, "input")
            for flow in self.dataflows:
                if flow.target_id == target_id and flow.target_port == target_port:
                    raise GraphDefinitionError(
                        f"input port {target_id}.{target_port} is already fed by "
                        f"{flow.source_id}.{flow.source_port}"
                    )
        path = self._path(target_id, source_id)
        if path is not None:
            cycle = " -> ".join([source_id, *path])
            raise GraphDefinitionError(
                f"connecting {source_id} -> {target_id} makes a cycle: {cycle}"
            )
        flow = Dataflow(source_id, source_port, target_id, target_port)
        self.dataflows.append(flow)
        return flow

    # -- queries the runner and the pump share --------------------------------------

    def incoming(self, task_id: str) -> list[Dataflow]:
        return [f for f in self.dataflows if f.target_id == task_id]

    def outgoing(self, task_id: str) -> list[Dataflow]:
        return [f for f in self.dataflows if f.source_id == task_id]

    def port_pairs(self, flow: Dataflow) -> Iterator[tuple[str, str]]:
        """The (source port, target port) pairs a dataflow carries; ``"*"``
        expands to the source's declared output ports that the target accepts
        (nothing static when the source declares none)."""
        if flow.source_port != ALL_PORTS:
            yield flow.source_port, flow.target_port
            return
        outs = _ports(self.tasks[flow.source_id].output_schema) or []
        ins = _ports(self.tasks[flow.target_id].input_schema)
        for port in outs:
            if ins is None or port in ins:
                yield port, port

    def is_stream_edge(self, flow: Dataflow, source_port: str, target_port: str) -> bool:
        """Whether the consumer reads this pair's deltas live (same non-none mode)."""
        source = self.tasks[flow.source_id].output_schema
        target = self.tasks[flow.target_id].input_schema
        mode = get_port_stream_mode(source, source_port)
        return mode != "none" and mode == get_port_stream_mode(target, target_port)

    def needs_value(self, task_id: str, port: str) -> bool:
        """Whether some consumer of ``task_id.port`` needs its final value (not deltas)."""
        open_ports = _ports(self.tasks[task_id].output_schema) is None
        for flow in self.outgoing(task_id):
            if flow.source_port == ALL_PORTS and open_ports:
                return True  # "*" from an undeclared schema carries every value
            for source_port, target_port in self.port_pairs(flow):
                if source_port == port and not self.is_stream_edge(flow, source_port, target_port):
                    return True
        return False

    def topological_order(self) -> list[str]:
        """Task ids, every producer before its consumers (insertion order otherwise)."""
        indegree = {tid: 0 for tid in self.tasks}
        for flow in self.dataflows:
            indegree[flow.target_id] += 1
        ready = [tid for tid, n in indegree.items() if n == 0]
        order: list[str] = []
        while ready:
            tid = ready.pop(0)
            order.append(tid)
            for flow in self.outgoing(tid):
                indegree[flow.target_id] -= 1
                if indegree[flow.target_id] == 0:
                    ready.append(flow.target_id)
        return order

    # -- internals ---------------------------------------------------------------------

    def _task(self, task_id: str) -> Task:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise GraphDefinitionError(f"unknown task {task_id!r}") from None

    @staticmethod
    def _check_port(task: Task, port: str, schema: Mapping[str, Any] | None, side: str) -> None:
        ports = _ports(schema)
        if ports is not None and port not in ports:
            known = ", ".join(ports) or "none"
            raise GraphDefinitionError(
                f"task {task.id!r} ({task.type}) has no {side} port {port!r} (ports: {known})"
            )

    def _path(self, start: str, goal: str) -> list[str] | None:
        """A path of task ids from ``start`` to ``goal`` along dataflows, if any."""
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            if node == goal:
                return path
            if node in seen:
                continue
            seen.add(node)
            stack.extend((f.target_id, [*path, f.target_id]) for f in self.outgoing(node))
        return None
