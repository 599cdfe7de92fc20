"""Task registry and graph JSON round trip (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from taskdb import GraphDefinitionError
from taskdb.graph import Task, TaskContext, TaskGraph
from taskdb.graph.registry import graph_from_json, graph_to_json, register_task


@register_task
class Add(Task):
    type = "test.Add"
    input_schema = {"properties": {"a": {}, "b": {}}}
    output_schema = {"properties": {"sum": {}}}

    async def execute(self, inputs: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return {"sum": inputs["a"] + inputs["b"]}


@register_task
class Double(Task):
    type = "test.Double"
    input_schema = {"properties": {"sum": {}}}

    async def execute(self, inputs: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return {"double": inputs["sum"] * 2}


async def test_a_graph_survives_json() -> None:
    graph = TaskGraph()
    graph.add(Add("add", a=1))
    graph.add(Double("double"))
    graph.connect("add", "sum", "double", "sum")
    data = graph_to_json(graph)
    rebuilt = graph_from_json(data)
    assert graph_to_json(rebuilt) == data
    assert (await rebuilt.run({"b": 2}))["double"] == {"double": 6}


def test_unregistered_and_malformed_graphs_are_clear_errors() -> None:
    class Unregistered(Task):
        pass

    graph = TaskGraph()
    graph.add(Unregistered("u"))
    with pytest.raises(GraphDefinitionError, match="unknown task type 'Unregistered'"):
        graph_to_json(graph)
    with pytest.raises(GraphDefinitionError, match="malformed graph JSON"):
        graph_from_json({"tasks": [{"id": "x"}], "dataflows": []})
    with pytest.raises(GraphDefinitionError, match="unknown task 'nope'"):
        graph_from_json(
            {"tasks": [{"id": "a", "type": "test.Add"}], "dataflows": [["a", "sum", "nope", "x"]]}
        )


def test_a_type_name_is_registered_once() -> None:
    with pytest.raises(GraphDefinitionError, match="already registered"):

        @register_task
        class Other(Task):
            type = "test.Add"
