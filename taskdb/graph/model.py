"""``TaskGraph``: a dataflow graph of tasks that can be run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from taskdb.graph.dataflow import DataflowGraph
from taskdb.graph.runner import GraphResult, GraphRunner, RunConfig


class TaskGraph(DataflowGraph):
    """Tasks and the dataflows between them (see :class:`DataflowGraph`), runnable."""

    async def run(
        self, inputs: Mapping[str, Any] | None = None, config: RunConfig | None = None
    ) -> GraphResult:
        """Run the graph once (see :class:`~taskdb.graph.runner.GraphRunner`)."""
        return await GraphRunner(self, config).run(inputs)
