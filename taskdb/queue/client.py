"""The client side of the queue: submit, inspect, wait for and abort jobs."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from functools import cached_property, partial
from typing import Any, TypedDict, Unpack

from taskdb import settings
from taskdb.core.clock import Clock, age, utcnow
from taskdb.core.inline import decode_binary_values
from taskdb.core.jobs import (
    TERMINAL_STATUSES,
    ChangeCursor,
    EncodedInputs,
    Job,
    JobOptions,
    JobStatus,
    NewJob,
    check_queue,
    input_digest,
    require_aware,
    statuses_of,
)
from taskdb.errors import (
    ConfigurationError,
    InvalidJobInput,
    JobError,
    JobNotFound,
    TaskdbError,
    WaitTimeout,
    job_error_from_row,
)
from taskdb.queue.changes import ChangeCallback, StopFollowing, follow_changes
from taskdb.queue.durable import closing_event
from taskdb.queue.local import StreamCallback, StreamSource, Unsubscribe, hub_for, sleep_until
from taskdb.queue.tracing import submit_span
from taskdb.store.database import Database
from taskdb.store.errors import outlast, retry_level
from taskdb.store.jobs import JobStore
from taskdb.store.streams import StreamStore
from taskdb.streams.events import Finish, StreamError, StreamEvent

log = logging.getLogger("taskdb.client")

ProgressCallback = Callable[[float, str | None, Any], object]

_INT32 = 2**31 - 1
_RECHECK_GAP = 0.02  # seconds: the least time between two notified reads of a job


_FOLLOW_BATCH = 16


def job_result(job: Job) -> Any:
    """The output of a terminal job (inlined bytes decoded, refs left as refs),
    or the error it ended with (raised)."""
    if job.status is JobStatus.COMPLETED:
        return decode_binary_values(job.output)
    if job.status is JobStatus.DISABLED:
        raise JobError(f"job {job.id} is disabled", error_code="Disabled")
    raise job_error_from_row(job.error_code, job.error)


class JobHandle:
    """A submitted job. ``on_stream`` is ``None`` unless the client is attached to
    a server in this process (``callable(handle.on_stream)`` tells)."""

    __slots__ = ("client", "id", "on_stream")

    def __init__(self, client: JobQueueClient, job_id: int) -> None:
        self.client = client
        self.id = job_id
        self.on_stream: Callable[[StreamCallback], Unsubscribe] | None = (
            self._on_stream if client.server is not None else None
        )

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id}, queue={self.client.queue!r})"

    async def get(self) -> Job:
        return await self.client.get(self.id)

    async def wait(self, timeout: float | None = None) -> Any:
        return await self.client.wait(self.id, timeout)

    async def abort(self) -> None:
        await self.client.abort(self.id)

    def on_progress(self, callback: ProgressCallback) -> Unsubscribe:
        """Call ``callback(progress, message, details)`` on each change until the job ends.

        Works from any process (it polls the row); same-process updates arrive at once.
        """
        hub = hub_for(self.client.db)
        # (written at, value) of the last delivery: a poll that read the row before a
        # newer same-process update must not deliver the older value after it.
        last: list[tuple[datetime, tuple[float, str | None, Any]]] = []
        pending: set[asyncio.Future[Any]] = set()  # keeps async callbacks alive

        def deliver(at: datetime, progress: float, message: str | None, details: Any) -> None:
            value = (progress, message, details)
            if last and at < last[0][0]:
                return  # read before the value already delivered
            changed = not last or value != last[0][1]
            last[:] = [(at, value)]
            if not changed:
                return
            try:
                result = callback(progress, message, details)
                if inspect.isawaitable(result):
                    future = asyncio.ensure_future(result)
                    pending.add(future)
                    future.add_done_callback(pending.discard)
            except Exception:
                log.exception("progress callback of job %s raised", self.id)

        async def poll() -> None:
            while True:
                try:
                    job = await self.client.get(self.id)
                except JobNotFound:
                    return  # purged
                except TaskdbError as exc:  # the database is away: keep following
                    log.log(retry_level(exc), "following job %s: %s; retrying", self.id, exc)
                    await asyncio.sleep(self.client.poll_interval)
                    continue
                if (job.progress, job.progress_message, job.progress_details) != (0.0, None, None):
                    deliver(
                        job.updated_at, job.progress, job.progress_message, job.progress_details
                    )
                if job.status.terminal:
                    return
                await asyncio.sleep(self.client.poll_interval)

        hub.add_progress_listener(self.id, deliver)
        task = asyncio.ensure_future(poll())

        def unsubscribe() -> None:
            hub.remove_progress_listener(self.id, deliver)
            task.cancel()

        task.add_done_callback(lambda _t: hub.remove_progress_listener(self.id, deliver))
        return unsubscribe

    def _on_stream(self, callback: StreamCallback) -> Unsubscribe:
        server = self.client.server
        assert server is not None
        return server.add_stream_listener(self.id, callback)


async def purge_ended(
    store: JobStore,
    older_than: timedelta,
    now: datetime,
    queue: str | None,
    statuses: Sequence[JobStatus | str],
) -> int:
    """Delete the ended jobs (of ``queue`` when given) in ``statuses`` that ended more
    than ``older_than`` before ``now``; how many went (see :meth:`JobQueueClient.purge`)."""
    wanted = statuses_of(statuses, ended=True)
    cutoff = now - age("older_than", older_than)
    return await store.purge(cutoff, now, queue=queue, statuses=wanted)


class SubmitOptions(TypedDict, total=False):
    """What the jobs of one submit share (keyword arguments of every submit call).

    ``run_after``: not before (aware datetime; default now). ``deadline``: fail
    the job if it has not ended by then. ``max_retries``: retries after the
    first run (default the client's). ``job_run_id``: groups jobs (see
    ``abort_run``). ``priority``: larger runs first. ``durable_stream``: store
    the events the handler emits, so ``follow`` works from any process.
    ``task``: the name of the typed task the job runs (see :class:`~taskdb.App`).
    """

    run_after: datetime | None
    deadline: datetime | None
    max_retries: int | None
    job_run_id: str | None
    priority: int
    durable_stream: bool
    task: str | None


class ClientBase:
    """What the async and the sync client share: their settings and the checks
    every submit makes (no I/O)."""

    def __init__(
        self,
        db: Database,
        queue: str,
        *,
        poll_interval: float = settings.DEFAULT_POLL_INTERVAL,
        max_retries: int = settings.DEFAULT_MAX_RETRIES,
        clock: Clock = utcnow,
    ) -> None:
        self.db = db
        self.queue = check_queue(queue)
        self.poll_interval = poll_interval
        self.default_max_retries = max_retries
        self._clock = clock

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.db!r}, {self.queue!r})"

    def _pause(self, job: Job, left: float | None, timeout: float | None) -> float:
        """How long a wait for ``job`` sleeps before reading it again: the poll interval,
        or what is ``left`` of its ``timeout``; :class:`WaitTimeout` when nothing is."""
        if left is None:
            return self.poll_interval
        if left <= 0:
            raise WaitTimeout(f"job {job.id} still {job.status} after {timeout}s")
        return min(self.poll_interval, left)

    def _prepare(
        self,
        inputs: Sequence[Any],
        now: datetime,
        fingerprints: Sequence[str | None] | None,
        *,
        run_after: datetime | None = None,
        deadline: datetime | None = None,
        max_retries: int | None = None,
        job_run_id: str | None = None,
        priority: int = 0,
        durable_stream: bool = False,
        task: str | None = None,
        trace_context: dict[str, str] | None = None,
    ) -> tuple[JobOptions, list[NewJob]]:
        """The options and rows of a submit, checked (:class:`InvalidJobInput` names
        what is wrong; nothing is stored then). ``trace_context``: see
        :func:`taskdb.queue.tracing.submit_span`."""
        require_aware("run_after", run_after)
        require_aware("deadline", deadline)
        retries = self.default_max_retries if max_retries is None else max_retries
        if not isinstance(retries, int) or not 0 <= retries <= 1000:
            raise InvalidJobInput(f"max_retries must be an integer 0..1000, got {retries!r}")
        if not isinstance(priority, int) or not -_INT32 <= priority <= _INT32:
            raise InvalidJobInput(f"priority must be a 32-bit integer, got {priority!r}")
        if fingerprints is not None and len(fingerprints) != len(inputs):
            raise InvalidJobInput("fingerprints must have one entry per input")
        if task is not None and (not isinstance(task, str) or not 0 < len(task) <= 200):
            raise InvalidJobInput(f"task must be a name of 1..200 chars, got {task!r}")
        for fp in fingerprints or ():
            if fp is not None and (not isinstance(fp, str) or not 0 < len(fp) <= 200):
                raise InvalidJobInput(f"fingerprint must be a string of 1..200 chars: {fp!r}")
        options = JobOptions(
            run_after=run_after or now,
            max_retries=retries,
            priority=priority,
            deadline=deadline,
            job_run_id=job_run_id,
            durable_stream=bool(durable_stream),
            task=task,
            trace_context=trace_context,
        )
        make = NewJob.encoded if isinstance(inputs, EncodedInputs) else NewJob.of
        if fingerprints is None:
            return options, [make(value) for value in inputs]
        return options, [make(v, fp) for v, fp in zip(inputs, fingerprints, strict=True)]


class JobQueueClient(ClientBase):
    """Submit and follow jobs of one queue. Works in any process: with no server
    attached, ``wait`` and ``on_progress`` poll the database."""

    server: StreamSource | None = None
    """The same-process server this client is attached to (see :meth:`attach`)."""

    @cached_property
    def _store(self) -> JobStore:
        return JobStore(self.db)

    def attach(self, server: StreamSource) -> None:
        """Attach to a same-process server (a :class:`~taskdb.JobQueueServer`): handles
        then offer ``on_stream``."""
        self.server = server

    async def submit(
        self, input: Any, *, fingerprint: str | None = None, **options: Unpack[SubmitOptions]
    ) -> JobHandle:
        """Enqueue one job (``options``: see :class:`SubmitOptions`). A ``fingerprint``
        equal to a job of this queue that has not ended returns that job's handle
        and enqueues nothing."""
        fingerprints = None if fingerprint is None else [fingerprint]
        (handle,) = await self.submit_batch([input], fingerprints=fingerprints, **options)
        return handle

    async def submit_batch(
        self,
        inputs: Sequence[Any],
        *,
        fingerprints: Sequence[str | None] | None = None,
        **options: Unpack[SubmitOptions],
    ) -> list[JobHandle]:
        """Enqueue many jobs in one transaction; one handle per input, in order."""
        now = self._clock()
        with submit_span(self.queue, len(inputs), options.get("task")) as carrier:
            job_options, new = self._prepare(
                inputs, now, fingerprints, trace_context=carrier, **options
            )
            ids = await self._store.submit(self.queue, job_options, new, now)
        hub_for(self.db).queue_has_work(self.queue)
        return [JobHandle(self, job_id) for job_id in ids]

    def handle(self, job_id: int) -> JobHandle:
        """A handle for an existing job id (not checked until used)."""
        return JobHandle(self, job_id)

    async def get(self, job_id: int) -> Job:
        return await self._store.get(job_id)

    async def wait(self, job_id: int, timeout: float | None = None) -> Any:
        """The job's output once it completed; raises the job's error class if it
        failed (``AbortedJobError`` if aborted), :class:`WaitTimeout` on timeout
        (see :meth:`wait_ended`)."""
        return job_result(await self.wait_ended(job_id, timeout))

    async def wait_ended(self, job_id: int, timeout: float | None = None) -> Job:
        """The job once it ended, whatever its status; :class:`WaitTimeout` on timeout
        (``timeout=0``: no waiting).

        Re-reads the job when a same-process server records it, on PostgreSQL when
        its queue changes (NOTIFY; at most every 20 ms), and every ``poll_interval``;
        rides out a database outage (that lasts less than what is left of ``timeout``).
        """
        loop = asyncio.get_running_loop()
        give_up = None if timeout is None else time.monotonic() + timeout
        changed = asyncio.Event()
        hub = hub_for(self.db)
        hub.watch_job(job_id, changed)
        listener = self.db.listener()
        watched: str | None = None
        try:
            while True:
                changed.clear()
                read_at = loop.time()
                job = await outlast(lambda: self._store.get(job_id), self.poll_interval, give_up)
                if job.status.terminal:
                    return job
                if listener is not None and watched is None:
                    watched = job.queue
                    listener.watch(watched, changed)
                    continue  # read again: a change before the watch began had no effect
                left = None if give_up is None else give_up - time.monotonic()
                await sleep_until(changed, self._pause(job, left, timeout))
                # A busy queue notifies all the time: re-read at most every _RECHECK_GAP.
                await asyncio.sleep(read_at + _RECHECK_GAP - loop.time())
        finally:
            hub.unwatch_job(job_id, changed)
            if listener is not None and watched is not None:
                listener.unwatch(watched, changed)

    async def abort(self, job_id: int) -> None:
        """Abort a job: a pending one fails at once; a running one's worker cancels it.
        Aborting a job that already ended does nothing."""
        await self._store.abort(self._clock(), job_id=job_id)
        hub_for(self.db).job_changed([job_id])

    async def abort_run(self, job_run_id: str) -> int:
        """Abort every job of a run; returns how many were still active."""
        return await self._store.abort(self._clock(), job_run_id=job_run_id)

    async def purge(
        self,
        older_than: timedelta,
        *,
        statuses: Sequence[JobStatus | str] = TERMINAL_STATUSES,
    ) -> int:
        """Delete this queue's ended jobs (``statuses``, default every terminal one)
        that ended more than ``older_than`` ago, with their change-feed-visible
        ``purged`` record, durable streams and the blobs only they referred to.
        Returns how many jobs went."""
        return await purge_ended(self._store, older_than, self._clock(), self.queue, statuses)

    async def follow(
        self, job_id: int, from_offset: int = 0, *, poll_interval: float | None = None
    ) -> AsyncIterator[tuple[int, StreamEvent]]:
        """The durable stream of job ``job_id`` as ``(offset, event)`` pairs, from
        ``from_offset`` on, live while the job runs and complete after it ended.

        Ends after the stream's ``Finish`` (holding ``{"output": ...}``, the job's
        stored output) or ``StreamError``; a job that ended without closing its
        stream (its worker died at the last moment) gets them from its row.
        Memory stays bounded: events are read a few at a time. A database outage
        only delays it (it reads again every ``poll_interval`` until it is back). Raises
        :class:`JobNotFound` for an unknown job and :class:`ConfigurationError`
        for a job submitted without ``durable_stream=True``.
        """
        if isinstance(from_offset, bool) or not isinstance(from_offset, int) or from_offset < 0:
            raise ConfigurationError(f"from_offset must be an int >= 0, got {from_offset!r}")
        job = await self.get(job_id)
        if not job.durable_stream:
            raise ConfigurationError(f"job {job_id} was not submitted with durable_stream=True")
        interval = min(self.poll_interval, 0.1) if poll_interval is None else poll_interval
        store = StreamStore(self.db)
        offset = from_offset
        while True:  # a database outage only delays it
            batch = await outlast(partial(store.read, job_id, offset, _FOLLOW_BATCH), interval)
            for item in batch:
                yield item.offset, item.event
                offset = item.offset + 1
                if isinstance(item.event, Finish | StreamError):
                    return
            if batch:
                continue
            job = await outlast(partial(self.get, job_id), interval)
            if job.status.terminal:
                if await outlast(partial(store.read, job_id, offset, 1), interval):
                    continue  # appended meanwhile
                yield offset, closing_event(job)
                return
            await asyncio.sleep(interval)

    async def output_for_input(self, input: Any) -> Any:
        """The output of a completed job of this queue with an equal input, else ``None``."""
        _found, output = await self._store.output_for_input(self.queue, input_digest(input))
        return output

    async def subscribe_to_changes(
        self,
        callback: ChangeCallback,
        *,
        poll_interval: float | None = None,
        after: ChangeCursor | int | None = None,
    ) -> StopFollowing:
        """Call ``callback`` (plain or async) with each :class:`JobChange` of this queue,
        in feed order, each once; returns a function that stops it (no callback runs
        after it was called; await its result to know the subscription has let go
        of its connection, e.g. before closing the database).

        Starts with what commits after this returns, or after the cursor ``after``:
        the ``cursor`` of the last change handled resumes exactly after it (``0`` is
        the start of the feed; see :mod:`taskdb.store.feed`). Reads the feed when
        notified (PostgreSQL) and every ``poll_interval``, riding out database outages.
        """
        interval = self.poll_interval if poll_interval is None else poll_interval
        return await follow_changes(
            self.db, callback, queue=self.queue, after=after, poll_interval=interval
        )
