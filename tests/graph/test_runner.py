"""The graph runner without a database: streaming, fan-out, backpressure, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from taskdb import AbortedJobError, GraphDefinitionError, GraphTimeout, TaskFailed, TaskInputError
from taskdb.graph import GraphRunner, RunConfig, Task, TaskContext, TaskGraph, TaskStatus
from taskdb.streams import Blob, Finish, ObjectDelta, StreamError, StreamEvent, TextDelta
from tests.graph.tasks import TEXT_IN, TEXT_OUT, Bytes, Length, Stall, Upper, Words


def chain(count: int) -> TaskGraph:
    graph = TaskGraph()
    graph.add(Words("words", count=count))
    graph.add(Upper("upper"))
    graph.add(Upper("upper2"))
    graph.connect("words", "text", "upper", "text")
    graph.connect("upper", "text", "upper2", "text")
    return graph


async def test_ten_thousand_deltas_flow_in_order_through_a_three_task_chain() -> None:
    seen: list[str] = []

    def on_event(task_id: str, event: StreamEvent) -> None:
        if task_id == "upper2" and isinstance(event, TextDelta):
            seen.append(event.text)

    result = await chain(10_000).run(config=RunConfig(on_event=on_event))
    expected = [f"W{i} " for i in range(10_000)]
    assert seen == expected
    assert result["upper2"]["text"] == "".join(expected)
    assert set(result.statuses.values()) == {TaskStatus.COMPLETED}


async def test_a_stream_consumer_starts_before_its_producer_finishes() -> None:
    release = asyncio.Event()
    got_first = asyncio.Event()

    class Slow(Task):
        output_schema = TEXT_OUT

        async def execute_stream(
            self, inputs: dict[str, Any], ctx: TaskContext
        ) -> AsyncIterator[StreamEvent]:
            yield TextDelta("text", "a")
            await release.wait()  # only the consumer can release us
            yield TextDelta("text", "b")
            yield Finish({})

    class Reader(Task):
        input_schema = TEXT_IN
        output_schema = TEXT_OUT

        async def execute_stream(
            self, inputs: dict[str, Any], ctx: TaskContext
        ) -> AsyncIterator[StreamEvent]:
            async for event in ctx.input_stream("text"):
                if isinstance(event, TextDelta):
                    got_first.set()
                    release.set()
                    yield event
            yield Finish({})

    graph = TaskGraph()
    graph.add(Slow("slow"))
    graph.add(Reader("reader"))
    graph.connect("slow", "text", "reader", "text")
    result = await asyncio.wait_for(graph.run(), 10)
    assert got_first.is_set()
    assert result["reader"]["text"] == "ab"


async def test_fan_out_gives_every_consumer_the_same_events_in_order() -> None:
    graph = TaskGraph()
    graph.add(Words("words", count=500))
    for name in ("a", "b", "c"):
        graph.add(Upper(name))
        graph.connect("words", "text", name, "text")
    seen: dict[str, list[str]] = {"a": [], "b": [], "c": []}

    def on_event(task_id: str, event: StreamEvent) -> None:
        if task_id in seen and isinstance(event, TextDelta):
            seen[task_id].append(event.text)

    await graph.run(config=RunConfig(on_event=on_event))
    assert seen["a"] == [f"W{i} " for i in range(500)]
    assert seen["a"] == seen["b"] == seen["c"]


async def test_a_stalled_consumer_bounds_its_producer() -> None:
    produced = 0

    class Many(Task):
        output_schema = TEXT_OUT

        async def execute_stream(
            self, inputs: dict[str, Any], ctx: TaskContext
        ) -> AsyncIterator[StreamEvent]:
            nonlocal produced
            for i in range(10_000):
                produced += 1
                yield TextDelta("text", str(i))
            yield Finish({})

    stall = Stall("stall")
    stall.release = asyncio.Event()
    graph = TaskGraph()
    graph.add(Many("many"))
    graph.add(stall)
    graph.connect("many", "text", "stall", "text")
    run = asyncio.ensure_future(graph.run(config=RunConfig(stream_buffer=16)))
    for _ in range(500):  # loop turns, not wall time: the producer runs as far as it can
        await asyncio.sleep(0)
    assert produced <= 16 + 1, produced  # the buffer plus the one event in hand
    stall.release.set()
    result = await asyncio.wait_for(run, 10)
    assert result["stall"] == {"seen": 10_000}


async def test_value_edge_from_a_stream_gets_the_accumulated_value() -> None:
    graph = TaskGraph()
    graph.add(Words("words", count=4))
    graph.add(Length("length"))
    graph.connect("words", "text", "length", "text")
    result = await graph.run()
    assert result["length"] == {"length": len("w0 w1 w2 w3 ")}


async def test_all_ports_dataflow_carries_every_value() -> None:
    class Pair(Task):
        output_schema = {"properties": {"a": {}, "b": {}}}

        async def execute(self, inputs: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
            return {"a": 1, "b": 2}

    class Sum(Task):
        input_schema = {"properties": {"a": {}, "b": {}}, "required": ["a", "b"]}

        async def execute(self, inputs: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
            return {"sum": inputs["a"] + inputs["b"]}

    graph = TaskGraph()
    graph.add(Pair("pair"))
    graph.add(Sum("sum"))
    graph.connect("pair", "*", "sum", "*")
    assert (await graph.run())["sum"] == {"sum": 3}


async def test_independent_tasks_run_concurrently() -> None:
    both = asyncio.Barrier(2)

    class Meet(Task):
        async def execute(self, inputs: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
            await both.wait()  # deadlocks unless both run at once
            return {}

    graph = TaskGraph()
    graph.add(Meet("x"))
    graph.add(Meet("y"))
    await asyncio.wait_for(graph.run(), 10)


async def test_graph_inputs_and_defaults_reach_source_tasks() -> None:
    graph = TaskGraph()
    graph.add(Words("words", count=1))
    assert (await graph.run())["words"]["text"] == "w0 "
    assert (await graph.run({"count": 2}))["words"]["text"] == "w0 w1 "


async def test_explicit_finish_value_wins_over_streamed_chunks() -> None:
    class Explicit(Task):
        output_schema = TEXT_OUT

        async def execute_stream(
            self, inputs: dict[str, Any], ctx: TaskContext
        ) -> AsyncIterator[StreamEvent]:
            yield TextDelta("text", "streamed")
            yield Finish({"text": "explicit"})

    graph = TaskGraph()
    graph.add(Explicit("e"))
    graph.add(Length("length"))
    graph.connect("e", "text", "length", "text")
    result = await graph.run()
    assert result["e"]["text"] == "explicit"
    assert result["length"] == {"length": len("explicit")}


async def test_binary_deltas_are_materialized_for_a_leaf() -> None:
    graph = TaskGraph()
    graph.add(Bytes("bytes", chunks=3, size=10))
    result = await graph.run()
    blob = result["bytes"]["data"]
    assert isinstance(blob, Blob)
    assert blob.read() == b"\x00" * 10 + b"\x01" * 10 + b"\x02" * 10
    assert blob.mime == "application/octet-stream"


async def test_should_accumulate_off_keeps_leaf_streams_out_of_the_output() -> None:
    result = await chain(5).run(config=RunConfig(should_accumulate=False))
    assert "text" not in result["upper2"]


async def test_progress_from_phases_and_ctx() -> None:
    updates: list[tuple[str, float, str | None]] = []

    class Reports(Task):
        async def execute(self, inputs: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
            ctx.update_progress(50.0, "half")
            return {}

    graph = TaskGraph()
    graph.add(Words("words", count=1))
    graph.add(Reports("reports"))
    await graph.run(config=RunConfig(on_progress=lambda *u: updates.append(u)))
    assert ("words", 0.0, "start") in updates
    assert ("reports", 50.0, "half") in updates


# -- failures -----------------------------------------------------------------------------


async def test_an_error_event_fails_the_task_and_the_run_names_it() -> None:
    class Broken(Task):
        output_schema = TEXT_OUT

        async def execute_stream(
            self, inputs: dict[str, Any], ctx: TaskContext
        ) -> AsyncIterator[StreamEvent]:
            yield TextDelta("text", "partial")
            yield StreamError(ValueError("disk full"))

    graph = TaskGraph()
    graph.add(Broken("broken"))
    graph.add(Upper("upper"))
    graph.connect("broken", "text", "upper", "text")
    runner = GraphRunner(graph)
    with pytest.raises(TaskFailed, match="'broken' failed: ValueError: disk full") as info:
        await runner.run()
    assert info.value.task_id == "broken"
    assert isinstance(info.value.__cause__, ValueError)
    assert runner.statuses["broken"] == TaskStatus.FAILED
    assert runner.statuses["upper"] == TaskStatus.FAILED


async def test_abort_mid_stream_stops_the_producer() -> None:
    produced = 0
    started = asyncio.Event()
    stopped = asyncio.Event()

    class Endless(Task):
        output_schema = TEXT_OUT

        async def execute_stream(
            self, inputs: dict[str, Any], ctx: TaskContext
        ) -> AsyncIterator[StreamEvent]:
            nonlocal produced
            try:
                while True:
                    produced += 1
                    started.set()
                    yield TextDelta("text", "x")
                    await asyncio.sleep(0)
            finally:
                stopped.set()

    graph = TaskGraph()
    graph.add(Endless("endless"))
    graph.add(Upper("upper"))
    graph.connect("endless", "text", "upper", "text")
    abort = asyncio.Event()
    run = asyncio.ensure_future(graph.run(config=RunConfig(abort_signal=abort)))
    await started.wait()
    abort.set()
    with pytest.raises(AbortedJobError):
        await asyncio.wait_for(run, 10)
    assert stopped.is_set()
    count = produced
    for _ in range(100):
        await asyncio.sleep(0)
    assert produced == count


async def test_task_timeout_and_run_timeout() -> None:
    class Sleepy(Task):
        timeout = 0.05

        async def execute(self, inputs: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
            await asyncio.sleep(30)
            return {}

    graph = TaskGraph()
    graph.add(Sleepy("sleepy"))
    with pytest.raises(GraphTimeout, match=r"task 'sleepy' timed out after 0\.05 s"):
        await graph.run()

    class Slow(Task):
        async def execute(self, inputs: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
            await asyncio.sleep(30)
            return {}

    graph = TaskGraph()
    graph.add(Slow("slow"))
    with pytest.raises(GraphTimeout, match=r"graph run timed out after 0\.05 s"):
        await graph.run(config=RunConfig(timeout=0.05))


async def test_schema_invalid_input_is_one_clear_error() -> None:
    graph = TaskGraph()
    graph.add(Words("words", count=-1))
    with pytest.raises(TaskInputError, match=r"task 'words' \(Words\): invalid input at count"):
        await graph.run()


async def test_wrong_delta_for_a_port_fails_the_task() -> None:
    class Wrong(Task):
        output_schema = TEXT_OUT

        async def execute_stream(
            self, inputs: dict[str, Any], ctx: TaskContext
        ) -> AsyncIterator[StreamEvent]:
            yield ObjectDelta("text", {"a": 1})

    graph = TaskGraph()
    graph.add(Wrong("wrong"))
    with pytest.raises(TaskFailed, match="object-delta event for port 'text'"):
        await graph.run()


async def test_execute_must_return_a_dict() -> None:
    class NotDict(Task):
        async def execute(self, inputs: dict[str, Any], ctx: TaskContext) -> Any:
            return [1]

    graph = TaskGraph()
    graph.add(NotDict("nd"))
    with pytest.raises(TaskFailed, match="not a dict"):
        await graph.run()


def test_definition_errors() -> None:
    graph = TaskGraph()
    graph.add(Words("a"))
    graph.add(Upper("b"))
    graph.add(Upper("c"))
    with pytest.raises(GraphDefinitionError, match="duplicate task id 'a'"):
        graph.add(Words("a"))
    with pytest.raises(GraphDefinitionError, match="unknown task 'zzz'"):
        graph.connect("a", "text", "zzz", "text")
    with pytest.raises(GraphDefinitionError, match="has no output port 'nope'"):
        graph.connect("a", "nope", "b", "text")
    with pytest.raises(GraphDefinitionError, match="has no input port 'nope'"):
        graph.connect("a", "text", "b", "nope")
    with pytest.raises(GraphDefinitionError, match="both sides"):
        graph.connect("a", "*", "b", "text")
    graph.connect("b", "text", "c", "text")
    with pytest.raises(GraphDefinitionError, match="cycle: c -> b -> c"):
        graph.connect("c", "text", "b", "text")
    with pytest.raises(GraphDefinitionError, match="already fed"):
        graph.connect("a", "text", "c", "text")


def test_bad_schemas_fail_at_class_definition() -> None:
    from taskdb.streams import StreamSchemaError

    with pytest.raises(StreamSchemaError):

        class BadMode(Task):
            output_schema = {"properties": {"x": {"x-stream": "sideways"}}}

    with pytest.raises(GraphDefinitionError, match="invalid input_schema"):

        class BadSchema(Task):
            input_schema = {"type": 12}


async def test_a_stream_consumer_gets_exactly_one_finish_with_the_explicit_value() -> None:
    class Explicit(Task):
        output_schema = TEXT_OUT

        async def execute_stream(
            self, inputs: dict[str, Any], ctx: TaskContext
        ) -> AsyncIterator[StreamEvent]:
            yield TextDelta("text", "streamed")
            yield Finish({"text": "explicit"})

    class Record(Task):
        input_schema = TEXT_IN

        async def execute(self, inputs: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
            events = [event async for event in ctx.input_stream("text")]
            return {"events": events}

    graph = TaskGraph()
    graph.add(Explicit("e"))
    graph.add(Record("r"))
    graph.connect("e", "text", "r", "text")
    result = await graph.run()
    assert result["r"]["events"] == [TextDelta("text", "streamed"), Finish({"text": "explicit"})]
