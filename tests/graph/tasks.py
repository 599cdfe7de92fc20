"""Task types the graph tests share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from taskdb.graph import Task, TaskContext
from taskdb.streams import BinaryDelta, Finish, Phase, StreamEvent, TextDelta

TEXT_OUT = {"type": "object", "properties": {"text": {"type": "string", "x-stream": "append"}}}
TEXT_IN = TEXT_OUT
BIN_OUT = {
    "type": "object",
    "properties": {"data": {"x-stream": "binary", "contentMediaType": "application/octet-stream"}},
}


class Words(Task):
    """Streams ``count`` text deltas ``"w<i> "``; counts how often it ran."""

    input_schema = {"type": "object", "properties": {"count": {"type": "integer", "minimum": 0}}}
    output_schema = TEXT_OUT
    runs = 0

    async def execute_stream(
        self, inputs: dict[str, Any], ctx: TaskContext
    ) -> AsyncIterator[StreamEvent]:
        type(self).runs += 1
        yield Phase("start", 0.0)
        for i in range(inputs.get("count", 3)):
            yield TextDelta("text", f"w{i} ")
        yield Finish({})


class Upper(Task):
    """Upper-cases its input text stream, delta by delta."""

    input_schema = TEXT_IN
    output_schema = TEXT_OUT
    cacheable = False

    async def execute_stream(
        self, inputs: dict[str, Any], ctx: TaskContext
    ) -> AsyncIterator[StreamEvent]:
        async for event in ctx.input_stream("text"):
            if isinstance(event, TextDelta):
                yield TextDelta("text", event.text.upper())
        yield Finish({})


class Length(Task):
    """A plain task: the length of a text value."""

    input_schema = {"type": "object", "properties": {"text": {"type": "string"}}}
    output_schema = {"type": "object", "properties": {"length": {"type": "integer"}}}
    runs = 0

    async def execute(self, inputs: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        type(self).runs += 1
        return {"length": len(inputs["text"])}


class Bytes(Task):
    """Streams ``chunks`` binary deltas of ``size`` bytes each (byte value = index)."""

    input_schema = {
        "type": "object",
        "properties": {"chunks": {"type": "integer"}, "size": {"type": "integer"}},
    }
    output_schema = BIN_OUT
    runs = 0

    async def execute_stream(
        self, inputs: dict[str, Any], ctx: TaskContext
    ) -> AsyncIterator[StreamEvent]:
        type(self).runs += 1
        for i in range(inputs.get("chunks", 4)):
            yield BinaryDelta("data", bytes([i % 256]) * inputs.get("size", 1024))
        yield Finish({})


class Stall(Task):
    """Reads nothing until ``release`` is set, then drains its input stream."""

    input_schema = TEXT_IN
    output_schema = {"type": "object", "properties": {"seen": {"type": "integer"}}}
    cacheable = False
    release: asyncio.Event

    async def execute(self, inputs: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        await self.release.wait()
        seen = 0
        async for event in ctx.input_stream("text"):
            seen += isinstance(event, TextDelta)
        return {"seen": seen}
