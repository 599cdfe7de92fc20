"""``Task``: one node of a task graph, and the context it runs with.

A task declares ``type``, ``input_schema``, ``output_schema`` and
``cacheable`` as class attributes and implements ``execute`` (returns the
output dict) and/or ``execute_stream`` (yields stream events, ending with a
``Finish``). When both exist the runner streams.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from enum import StrEnum
from typing import Any, ClassVar

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from taskdb.errors import GraphDefinitionError, TaskInputError
from taskdb.streams.events import StreamEvent
from taskdb.streams.ports import get_port_stream_mode, get_streaming_ports

ProgressCallback = Callable[[str, float, str | None], object]
"""``(task_id, progress, message)``: a task reported progress."""


class TaskStatus(StrEnum):
    """Where a task (or a run) stands."""

    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    STREAMING = "STREAMING"
    COMPLETED = "COMPLETED"
    ABORTING = "ABORTING"
    FAILED = "FAILED"
    DISABLED = "DISABLED"


_ids = itertools.count(1)


class Task:
    """Subclass and implement :meth:`execute` and/or :meth:`execute_stream`.

    ``Task(id=None, **defaults)``: ``defaults`` are input values used when no
    edge or graph input provides them. ``timeout`` (seconds) bounds one run.
    """

    type: ClassVar[str] = ""
    input_schema: ClassVar[Mapping[str, Any] | None] = None
    output_schema: ClassVar[Mapping[str, Any] | None] = None
    cacheable: ClassVar[bool] = True
    timeout: ClassVar[float | None] = None

    _validator: ClassVar[Draft202012Validator | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("type"):
            cls.type = cls.__name__
        cls._validator = None
        for schema in (cls.input_schema, cls.output_schema):
            get_streaming_ports(schema)  # a bad x-stream / format fails at definition time
        if cls.input_schema is not None:
            try:
                Draft202012Validator.check_schema(cls.input_schema)
            except SchemaError as exc:
                raise GraphDefinitionError(
                    f"task type {cls.type!r}: invalid input_schema: {exc.message}"
                ) from None
            cls._validator = Draft202012Validator(cls.input_schema)

    def __init__(self, id: str | None = None, **defaults: Any) -> None:
        self.id = id if id is not None else f"{self.type}-{next(_ids)}"
        self.defaults = defaults

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id!r}>"

    @property
    def streams(self) -> bool:
        """Whether this task implements :meth:`execute_stream`."""
        return type(self).execute_stream is not Task.execute_stream

    async def execute(self, inputs: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        """Compute the output dict (override this, or :meth:`execute_stream`)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither execute nor stream")

    def execute_stream(self, inputs: dict[str, Any], ctx: TaskContext) -> AsyncIterator[Any]:
        """Yield stream events ending with a ``Finish`` (an async generator)."""
        raise NotImplementedError

    def validate_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Raise :class:`TaskInputError` unless ``inputs`` match the input schema.

        Ports that stream into this task are not present yet and binary ports
        hold bytes/Blob/refs, not JSON: both are left out of validation.
        """
        validator = type(self)._validator
        if validator is None:
            return
        skipped = {
            port
            for port in inputs
            if get_port_stream_mode(self.input_schema, port) == "binary"
            or not _is_json_like(inputs[port])
        }
        instance = {k: v for k, v in inputs.items() if k not in skipped} if skipped else inputs
        schema = self.input_schema or {}
        errors = [
            e
            for e in validator.iter_errors(instance)
            # a required port that was skipped above is present, just not JSON
            if not (e.validator == "required" and _missing(e.message) in skipped)
        ]
        if errors:
            error = min(errors, key=lambda e: len(e.path))
            where = "/".join(str(p) for p in error.path) or "(inputs)"
            title = schema.get("title")
            raise TaskInputError(
                f"task {self.id!r} ({title or self.type}): invalid input at {where}: "
                f"{error.message}"
            )


def _is_json_like(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | dict | list | tuple) or value is None


def _missing(message: str) -> str:
    # jsonschema's "required" message: "'port' is a required property"
    return message.split("'")[1] if message.count("'") >= 2 else message


class TaskContext:
    """What a running task gets besides its inputs.

    ``abort_signal`` is set when the run is aborted (the task is cancelled
    right after); ``input_stream(port)`` yields the events of a port that a
    producer streams into this task, ending with the producer's ``Finish``
    restricted to that port.
    """

    __slots__ = ("_on_progress", "_streams", "abort_signal", "run_id", "task_id")

    def __init__(
        self,
        task_id: str,
        run_id: str,
        abort_signal: asyncio.Event,
        streams: Mapping[str, AsyncIterator[StreamEvent]],
        on_progress: ProgressCallback | None,
    ) -> None:
        self.task_id = task_id
        self.run_id = run_id
        self.abort_signal = abort_signal
        self._streams = streams
        self._on_progress = on_progress

    @property
    def aborted(self) -> bool:
        return self.abort_signal.is_set()

    def input_stream(self, port: str) -> AsyncIterator[StreamEvent]:
        """The live events of input ``port`` (``KeyError`` if no stream edge feeds it)."""
        try:
            return self._streams[port]
        except KeyError:
            raise KeyError(
                f"no stream edge feeds input port {port!r} of {self.task_id!r}"
            ) from None

    def update_progress(self, progress: float, message: str | None = None) -> None:
        if self._on_progress is not None:
            self._on_progress(self.task_id, progress, message)
