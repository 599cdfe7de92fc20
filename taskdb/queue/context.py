"""What a job handler receives besides its input."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from taskdb.core.jobs import Job
from taskdb.errors import InvalidJobInput

ProgressWriter = Callable[[float, str | None, Any], Awaitable[None]]
StreamEmitter = Callable[[object], "asyncio.Event | None"]


class Room:
    """What ``emit_stream_event`` returns: awaiting it waits until a durable
    stream's buffer has room again (ignoring it is fine)."""

    __slots__ = ("_event",)

    def __init__(self, event: asyncio.Event | None) -> None:
        self._event = event

    def __await__(self) -> Generator[Any, None, None]:
        if self._event is not None and not self._event.is_set():
            yield from self._event.wait().__await__()


_NO_WAIT = Room(None)


class JobContext:
    """Per-run context of a job handler.

    ``abort_signal`` is set when the job is being aborted (from any process);
    a handler that ignores it is cancelled after the server's grace period.
    """

    __slots__ = ("_abort", "_emit", "_job", "_row", "_write_progress")

    def __init__(self, row: Any, write_progress: ProgressWriter, emit: StreamEmitter) -> None:
        """``row`` is the claimed row (a named tuple: ``_asdict()`` maps it)."""
        self._row = row
        self._job: Job | None = None
        self._abort: asyncio.Event | None = None
        self._write_progress = write_progress
        self._emit = emit

    @property
    def abort_signal(self) -> asyncio.Event:
        """Set when the job is being aborted (made on first use: most handlers never ask)."""
        if self._abort is None:
            self._abort = asyncio.Event()
        return self._abort

    @property
    def job(self) -> Job:
        """The job row as claimed (built on first use: most handlers never ask)."""
        if self._job is None:
            self._job = Job.model_validate(self._row._asdict())
        return self._job

    @property
    def task(self) -> str | None:
        """The name of the typed task the job runs (``None`` for a plain handler)."""
        task: str | None = getattr(self._row, "task", None)
        return task

    @property
    def aborting(self) -> bool:
        return self._abort is not None and self._abort.is_set()

    async def update_progress(
        self, progress: float, message: str | None = None, details: Any = None
    ) -> None:
        """Store progress (a float 0-100, stored as given) for every follower.

        Raises :class:`~taskdb.LeaseLost` if this worker no longer owns the job.
        """
        if not isinstance(progress, int | float) or not 0 <= progress <= 100:
            raise InvalidJobInput(f"progress must be a number from 0 to 100, got {progress!r}")
        await self._write_progress(float(progress), message, details)

    def emit_stream_event(self, event: object) -> Room:
        """Hand ``event`` to every same-process ``JobHandle.on_stream`` listener, in
        order, and to the job's durable stream if it has one.

        A side channel: it never changes the job's output. The result may be
        awaited for backpressure (``await ctx.emit_stream_event(e)``): it waits
        while the durable stream's write buffer is full.
        """
        room = self._emit(event)
        return _NO_WAIT if room is None else Room(room)


class SyncJobContext:
    """What a plain ``def`` task receives as its context: a :class:`JobContext` whose
    operations are plain calls, made from the worker thread the task runs in.

    Each call runs on the worker's event loop and waits for it there, so progress
    is stored and stream events are delivered in the order the task makes them.
    """

    __slots__ = ("_ctx", "_loop")

    def __init__(self, ctx: JobContext, loop: asyncio.AbstractEventLoop) -> None:
        self._ctx = ctx
        self._loop = loop

    @property
    def job(self) -> Job:
        return self._ctx.job

    @property
    def task(self) -> str | None:
        return self._ctx.task

    @property
    def aborting(self) -> bool:
        """Whether the job is being aborted (check it between steps: a thread cannot
        be cancelled, so a task that never looks runs to its end)."""
        return self._ctx.aborting

    def update_progress(
        self, progress: float, message: str | None = None, details: Any = None
    ) -> None:
        """See :meth:`JobContext.update_progress`."""
        self._call(self._ctx.update_progress(progress, message, details))

    def emit_stream_event(self, event: object) -> None:
        """See :meth:`JobContext.emit_stream_event`; returns once a durable stream's
        buffer has room again."""

        async def emit() -> None:
            await self._ctx.emit_stream_event(event)

        self._call(emit())

    def _call(self, work: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(work, self._loop).result()
