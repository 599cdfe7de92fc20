"""The worker side of the queue: a server runs N concurrent handlers in one process.

:class:`JobQueueServer` wires small parts together and owns the runs:

- :class:`~taskdb.queue.claimer.Claimer` (slots, limiter reservations, the
  fetch loop);
- :func:`~taskdb.queue.runs.execute` (one handler under its deadline);
- :class:`~taskdb.queue.outcomes.OutcomeWriter` (group-committed outcomes,
  each batch claiming for the slots it frees);
- :class:`~taskdb.queue.leases.LeaseKeeper` (heartbeats, aborts, reaping);
- :class:`~taskdb.queue.durable.DurableStreamWriter` (a job's durable stream).

Every write a worker makes is fenced by (job id, attempt, worker id), so a
worker that lost its lease cannot complete the job. The server moves through
:class:`ServerState`: ``STOPPED`` → ``STARTING`` → ``RUNNING`` → ``DRAINING``
→ ``STOPPED``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from taskdb.core.jobs import Claim, JobStatus
from taskdb.core.retry import Complete, Outcome
from taskdb.errors import InvalidJobInput, StorageError, TaskdbError
from taskdb.queue.claimer import Claimer, Slots
from taskdb.queue.config import ServerSettings
from taskdb.queue.context import JobContext, SyncJobContext
from taskdb.queue.durable import DurableStreamWriter, closing_event
from taskdb.queue.leases import LeaseKeeper, LeaseSchedule
from taskdb.queue.limiters import NullLimiter
from taskdb.queue.local import StreamCallback, Unsubscribe, hub_for, sleep_until
from taskdb.queue.outcomes import OutcomeWriter
from taskdb.queue.outputs import needs_storing, output_refs, store_output
from taskdb.queue.runs import GiveBack, Run, cancel_handler, execute, failure
from taskdb.queue.tracing import attempt_span
from taskdb.store.blobs import BlobStore
from taskdb.store.database import Database
from taskdb.store.errors import riding_out
from taskdb.store.jobs import JobStore
from taskdb.store.notify import Listener
from taskdb.store.streams import StreamStore
from taskdb.store.workers import WorkerStore
from taskdb.streams.events import EVENT_TYPES, Phase

log = logging.getLogger("taskdb.server")

Handler = Callable[[Any, JobContext], Awaitable[Any]]
_EVENT_CLASSES = tuple(EVENT_TYPES.values())  # what a durable stream takes


class ServerState(StrEnum):
    """Where a :class:`JobQueueServer` is in its life."""

    STOPPED = "stopped"
    """Not started, or stopped: claims nothing, runs nothing."""
    STARTING = "starting"
    RUNNING = "running"
    """Claiming and running jobs."""
    DRAINING = "draining"
    """Stopping: claims nothing more; running jobs finish or are given back."""


@dataclass
class ServerStats:
    """Counters of one server since it started."""

    queue: str
    worker_id: str
    workers: int
    running: int = 0
    claimed: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    lost: int = 0
    released: int = 0
    handler_seconds: float = 0.0
    """Seconds spent in handlers (claim to return), summed."""


def is_async_callable(func: Any) -> bool:
    """Whether calling ``func`` gives a coroutine (an ``async def``, a partial of one,
    or an object whose ``__call__`` is one)."""
    call = type(func).__call__ if not inspect.isroutine(func) else None
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(call)


def in_thread(handler: Callable[[Any, Any], Any]) -> Handler:
    """A plain ``def`` handler as an async one: it runs in the event loop's thread pool
    (with the caller's context variables) and gets a :class:`SyncJobContext`."""

    async def call(value: Any, ctx: JobContext) -> Any:
        loop = asyncio.get_running_loop()
        work = functools.partial(
            contextvars.copy_context().run, handler, value, SyncJobContext(ctx, loop)
        )
        result = await loop.run_in_executor(None, work)
        return await result if inspect.isawaitable(result) else result

    return call


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobQueueServer:
    """Runs ``handler(input, ctx)`` for jobs of ``queue`` with ``workers`` concurrent slots.

    ``settings`` (a :class:`~taskdb.queue.config.ServerSettings`) says how; keyword
    arguments set or override its fields (``JobQueueServer(db, q, h, workers=4)``).
    """

    def __init__(
        self,
        db: Database,
        queue: str,
        handler: Handler,
        settings: ServerSettings | None = None,
        **options: Any,
    ) -> None:
        config = (settings or ServerSettings()).replace(**options)
        self.db = db
        self.queue = queue
        self.handler = handler
        self._call = handler if is_async_callable(handler) else in_thread(handler)
        self.settings = config
        self.worker_id = config.worker_id or _default_worker_id()
        self.limiter = config.limiter or NullLimiter()
        self._clock = config.clock
        self._store = JobStore(db)
        self._blobs = BlobStore(db)
        self._streams = StreamStore(db)
        self._hub = hub_for(db)
        self._state = ServerState.STOPPED
        self._running: dict[int, Run] = {}  # claimed and not yet recorded
        # Runs that ended with their outcome unwritten by an error: their jobs are left
        # to their lease and the reaper (the attempt counts), not given back as strays.
        self._unsettled: dict[int, tuple[Claim, float]] = {}
        self._listeners: defaultdict[int, list[StreamCallback]] = defaultdict(list)
        self._slots = Slots(config.workers, config.claim_batch)
        self._claimer = Claimer(
            self, self._slots, self.limiter, clock=self._clock, poll_interval=config.poll_interval
        )
        self._outcomes = OutcomeWriter(
            self._store,
            self._claimer,
            worker_id=self.worker_id,
            queue=queue,
            lease_seconds=config.lease_seconds,
            clock=self._clock,
        )
        self._wake = asyncio.Event()
        self._hurried = asyncio.Event()  # set by hurry(): a stop gives everything back now
        self._listener: Listener | None = None
        self._listening = False  # for work notifications (only while idle)
        self._fetching: asyncio.Task[None] | None = None
        self._maintaining: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None  # the drain of a stop() under way
        self._stats = ServerStats(queue, self.worker_id, config.workers)

    def __repr__(self) -> str:
        return f"JobQueueServer({self.queue!r}, {self._state.value}, worker_id={self.worker_id!r})"

    # -- lifecycle -----------------------------------------------------------------

    @property
    def state(self) -> ServerState:
        return self._state

    @property
    def workers(self) -> int:
        """Concurrent slots (see :meth:`scale_workers`)."""
        return self._slots.workers

    async def start(self) -> None:
        """Start claiming and running jobs (returns at once; does nothing if started)."""
        if self._state is not ServerState.STOPPED:
            return
        self._state = ServerState.STARTING
        self._wake = asyncio.Event()
        self._hurried = asyncio.Event()
        try:
            self.limiter.bind(self.db, self.queue)
            self._listener = self.db.listener()
        except BaseException:
            self._state = ServerState.STOPPED
            raise
        self._hub.watch_queue(self.queue, self._wake)
        keeper = LeaseKeeper(
            self,
            self._store,
            LeaseSchedule(self.settings.lease_seconds, self.settings.abort_poll_interval),
            worker_id=self.worker_id,
            queue=self.queue,
            clock=self._clock,
            registry=WorkerStore(self.db),
            slots=self.workers,
        )
        self._state = ServerState.RUNNING
        self.beat()
        self._fetching = asyncio.ensure_future(self._claimer.run())
        self._maintaining = asyncio.ensure_future(keeper.run())
        log.info(
            "worker %s serves queue %r with %d slot(s)",
            self.worker_id,
            self.queue,
            self.workers,
            extra={"queue": self.queue},
        )

    async def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: claim nothing more (jobs a claim in flight returns go
        back to PENDING at once), let running jobs finish for up to ``timeout``
        seconds (default ``stop_timeout``), then cancel the rest and release them
        back to PENDING for another worker.

        A cancelled ``stop()`` cancels only the wait: the drain goes on to STOPPED
        (a half-stopped server would hold its jobs until their leases expire)."""
        if self._state is ServerState.RUNNING:
            self._state = ServerState.DRAINING
            self._wake.set()
            self._stopping = asyncio.ensure_future(self._drain(timeout))
        if self._stopping is not None:
            await asyncio.shield(self._stopping)

    async def _drain(self, timeout: float | None) -> None:
        fetch, maintain = self._fetching, self._maintaining
        assert fetch is not None and maintain is not None
        wait = self.settings.stop_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        # A claim in flight may commit: let it return so its jobs are given back
        # at once (a cancelled one would hold them until their lease expires).
        if await self._until([fetch], deadline):
            fetch.cancel()
            await asyncio.gather(fetch, return_exceptions=True)
        runs = [r.task for r in self._running.values() if r.task is not None]
        if runs:
            pending = await self._until(runs, deadline)
            for run in [r for r in self._running.values() if r.task in pending]:
                if not run.recording:  # still in its handler: give it back
                    run.releasing = True
                    cancel_handler(run)
            if pending:
                await asyncio.wait(pending)
        await self._outcomes.drain()
        maintain.cancel()
        await asyncio.gather(maintain, return_exceptions=True)
        self._hub.unwatch_queue(self.queue, self._wake)
        self.listen_for_work(False)
        self._fetching = self._maintaining = self._stopping = None
        self._state = ServerState.STOPPED
        s = self.stats()
        log.info(
            "worker %s stopped serving queue %r: %d completed, %d failed, %d retried, %d released",
            self.worker_id,
            self.queue,
            s.completed,
            s.failed,
            s.retried,
            s.released,
            extra={"queue": self.queue},
        )

    def hurry(self) -> None:
        """Cut a stop in progress short (a second Ctrl-C): the jobs still running are
        cancelled and given back at once, their attempt not counted."""
        self._hurried.set()

    async def _until(self, tasks: Sequence[asyncio.Future[Any]], deadline: float) -> set[Any]:
        """Wait for ``tasks`` until ``deadline`` (``time.monotonic()``) or :meth:`hurry`;
        returns those still pending."""
        pending: set[Any] = set(tasks)
        hurried = asyncio.ensure_future(self._hurried.wait())
        try:
            while pending and not self._hurried.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                _done, pending = await asyncio.wait(
                    pending | {hurried}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(hurried)
        finally:
            hurried.cancel()
        return pending

    async def __aenter__(self) -> JobQueueServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def scale_workers(self, workers: int) -> None:
        """Change the number of concurrent slots (running jobs are never cut short)."""
        self.settings = self.settings.replace(workers=workers)  # checks the value
        self._slots.workers = self._stats.workers = workers
        self._wake.set()

    def stats(self) -> ServerStats:
        self._stats.running = self._slots.executing
        self._stats.claimed = self._claimer.claimed
        return ServerStats(**vars(self._stats))

    def add_stream_listener(self, job_id: int, callback: StreamCallback) -> Unsubscribe:
        """Listen to ``emit_stream_event`` of job ``job_id`` run by this server."""
        self._listeners[job_id].append(callback)

        def unsubscribe() -> None:
            listeners = self._listeners.get(job_id)
            if listeners and callback in listeners:
                listeners.remove(callback)

        return unsubscribe

    # -- the claimer's host ------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self._state is ServerState.RUNNING

    @property
    def held(self) -> int:
        return len(self._running)

    @property
    def recording(self) -> bool:
        return self._outcomes.busy

    async def claim_rows(self, limit: int, now: datetime) -> list[Any]:
        return await self._store.claim_rows(
            self.queue,
            self.worker_id,
            limit,
            now,
            self.settings.lease_seconds,
            cap=self.limiter.queue_cap,
        )

    async def accept(self, jobs: Sequence[Any]) -> int:
        """Start claimed jobs; while draining, give them back instead (stop() no
        longer waits for new runs)."""
        if not self.accepting:
            await self._release([Claim(job.id, job.attempts) for job in jobs])
            return 0
        return sum(self._launch(job) for job in jobs)

    def listen_for_work(self, idle: bool) -> bool:
        """Watch for work notifications while idle only (a busy server's LISTEN would
        be woken by every commit for nothing); True when the watch just began."""
        if self._listener is None or idle == self._listening:
            return False
        self._listening = idle
        if idle:
            self._listener.watch(self.queue, self._wake, work=True)
        else:
            self._listener.unwatch(self.queue, self._wake, work=True)
        return idle

    async def sleep(self, seconds: float | None) -> None:
        """Sleep until woken (a slot freed, work submitted here or, on PostgreSQL,
        notified from anywhere) or ``seconds`` passed."""
        await sleep_until(self._wake, seconds)
        self._wake.clear()

    # -- the lease keeper's host -----------------------------------------------------

    def held_claims(self) -> list[Claim]:
        return [r.claim for r in self._running.values() if not (r.lost or r.recording)]

    def known_claims(self) -> list[Claim]:
        forget = time.monotonic() - 2 * self.settings.lease_seconds  # reaped by then
        for job_id, (_, ended) in list(self._unsettled.items()):
            if ended < forget:
                del self._unsettled[job_id]
        running = [r.claim for r in self._running.values()]
        return running + [claim for claim, _ in self._unsettled.values()]

    def lost(self, claim: Claim) -> None:
        run = self._running.get(claim.job_id)
        if run is not None and run.claim == claim and not run.recording:
            self._lose(run)

    def abort(self, job_id: int) -> None:
        run = self._running.get(job_id)
        if run is None or run.ctx.aborting:
            return
        run.ctx.abort_signal.set()
        loop = asyncio.get_running_loop()
        grace = self.settings.abort_grace_seconds
        run.cancel_timer = loop.call_later(grace, cancel_handler, run)

    def wake(self) -> None:
        self._wake.set()

    def beat(self) -> None:
        """Touch the health file (a liveness probe reads its age)."""
        if self.settings.health_file is not None:
            try:
                Path(self.settings.health_file).touch()
            except OSError as exc:
                log.warning("cannot touch the health file: %s", exc)

    # -- runs ------------------------------------------------------------------------

    def _launch(self, job: Any) -> bool:
        """Start a run of ``job``; False when this very attempt already runs here (a
        claim whose connection died returns what it took, and with a clock that
        stood still that may include an earlier claim's jobs)."""
        claim = Claim(job.id, job.attempts)
        stale = self._running.get(job.id)
        if stale is not None and stale.claim == claim:
            return False
        if stale is not None:
            # This worker stalled past its lease, the job was requeued and we
            # claimed it again: the old attempt is fenced off, stop it.
            self._lose(stale)
        stream = None
        if getattr(job, "durable_stream", False):
            stream = DurableStreamWriter(self._streams, job.id, job.attempts, self.worker_id)
            if job.attempts > 1:  # a retried job's stream restarts, marked
                stream.add(Phase(f"attempt {job.attempts}", None))
        ctx = JobContext(job, self._progress_writer(claim), self._emitter(job.id, stream))
        run = Run(job, claim, ctx, stream=stream)
        self._running[job.id] = run
        self._slots.executing += 1
        run.task = asyncio.get_running_loop().create_task(self._run(run))
        return True

    async def _run(self, run: Run) -> None:
        job = run.job
        recorded = False
        try:
            with attempt_span(job) as note:
                outcome = await execute(
                    run,
                    self._output_of,
                    clock=self._clock,
                    retry=self.settings.retry,
                    max_retries=self.settings.max_retries,
                )
                note(outcome)
            self._free_slot(run)
            if run.stream is not None:
                await self._flush_stream(run)
            recorded = True  # from here on the outcome is written, or must not be
            if outcome is not None:
                status = await self._record(run, outcome)
                if run.stream is not None and status in (JobStatus.COMPLETED, JobStatus.FAILED):
                    await self._close_stream(run)
        except Exception as exc:
            if recorded or run.releasing or run.lost:
                log.exception("job %s: unexpected error in the server", job.id)
                self._unsettled[job.id] = (run.claim, time.monotonic())
            else:  # logged with its traceback as a failed attempt
                await self._record_failure(run, exc)
        finally:
            self._free_slot(run)
            if run.cancel_timer is not None:
                run.cancel_timer.cancel()
            if self._running.get(job.id) is run:
                del self._running[job.id]
                self._listeners.pop(job.id, None)
            if run.releasing:
                await self._release([run.claim], patient=run.given_back)
            if run.stream is not None:
                run.stream.abandon()
            self._wake.set()

    async def _record_failure(self, run: Run, exc: Exception) -> None:
        """An attempt that broke in taskdb itself counts as a failed attempt (retried by
        the policy, its traceback on the job), rather than waiting for its lease."""
        outcome = failure(
            run,
            exc,
            clock=self._clock,
            retry=self.settings.retry,
            max_retries=self.settings.max_retries,
        )
        try:
            await self._record(run, outcome)
        except Exception:
            log.exception("job %s: cannot record the failure; its lease will expire", run.job.id)
            self._unsettled[run.job.id] = (run.claim, time.monotonic())

    def _free_slot(self, run: Run) -> None:
        """The handler returned: its slot can take the next job while the outcome is
        written (the write stays fenced; ``stop`` waits for it)."""
        if not run.recording:
            run.recording = True
            self._stats.handler_seconds += time.monotonic() - run.started
            self._slots.executing -= 1
            self.limiter.on_finish()
            self._wake.set()

    async def _output_of(self, run: Run) -> Complete:
        """Run the handler; binary values in its output go to the blob store. A
        storage error there is not the handler's: it is retried for half the lease,
        then the job is given back (:class:`GiveBack`)."""
        output = await self._call(run.job.input, run.ctx)
        if not needs_storing(output):
            return Complete(output)
        until = time.monotonic() + self.settings.lease_seconds / 2
        try:
            stored = await store_output(
                output, self._blobs, self.settings.threshold, retry_until=until
            )
        except StorageError as exc:
            raise GiveBack(f"its output could not be stored: {exc}") from exc
        return Complete(stored, output_refs(stored))

    async def _record(self, run: Run, outcome: Outcome) -> JobStatus | None:
        """Write the outcome; the job's new status (``None``: not written)."""
        job = run.job
        statuses = await self._outcomes.record(run.claim, outcome)
        if statuses is None:  # the database stayed away: give the job back if it can
            run.releasing = run.given_back = True
            return None
        status = statuses.get(job.id)
        if status is None:
            self._stats.lost += 1
            log.warning("job %s: lease lost before its outcome was stored; discarded", job.id)
            return None
        if status is JobStatus.COMPLETED:
            self._stats.completed += 1
        elif status is JobStatus.PENDING:
            self._stats.retried += 1
        else:
            self._stats.failed += 1
        self._hub.job_changed([job.id])
        return status

    async def _flush_stream(self, run: Run) -> None:
        assert run.stream is not None
        try:
            await run.stream.close()
        except TaskdbError as exc:  # fenced out or the database is away: the run goes on
            log.warning("job %s: its durable stream is incomplete: %s", run.job.id, exc)

    async def _close_stream(self, run: Run) -> None:
        """End an ended job's durable stream as its row ended (what was stored, not
        what the handler returned: an abort may have won, the output been refused)."""
        try:
            event = closing_event(await self._store.get(run.job.id))
            await self._streams.append_terminal(run.job.id, run.job.attempts, event)
        except TaskdbError as exc:  # a follower falls back on the job row
            log.warning("job %s: could not close its durable stream: %s", run.job.id, exc)

    async def _release(self, claims: Sequence[Claim], *, patient: bool = False) -> None:
        """Give claimed jobs back to PENDING (the attempt does not count); ``patient``:
        through a database outage of up to half the lease."""
        until = time.monotonic() + self.settings.lease_seconds / 2 if patient else None
        try:
            released = await riding_out(
                lambda: self._store.release(self.worker_id, claims, self._clock()), until
            )
            self._stats.released += released
        except TaskdbError as exc:
            ids = ", ".join(str(c.job_id) for c in claims)
            log.warning(
                "job %s: release failed (%s); this worker gives it back once the database "
                "is back, or its lease expires",
                ids,
                exc,
            )

    def _lose(self, run: Run) -> None:
        log.warning("job %s: lease lost (expired or re-claimed); cancelling it", run.job.id)
        run.lost = True
        cancel_handler(run)

    def _progress_writer(self, claim: Claim) -> Callable[[float, str | None, Any], Awaitable[None]]:
        async def write(progress: float, message: str | None, details: Any) -> None:
            now = self._clock()
            await self._store.update_progress(
                self.worker_id, claim, progress, message, details, now
            )
            self._hub.progress(claim.job_id, now, progress, message, details)

        return write

    def _emitter(
        self, job_id: int, stream: DurableStreamWriter | None
    ) -> Callable[[object], asyncio.Event | None]:
        def emit(event: object) -> asyncio.Event | None:
            for listener in list(self._listeners.get(job_id, ())):
                try:
                    listener(event)
                except Exception:
                    log.exception("stream listener of job %s raised", job_id)
            if stream is None:
                return None
            if not isinstance(event, _EVENT_CLASSES):
                raise InvalidJobInput(f"a durable stream takes stream events, not {event!r:.80}")
            return stream.add(event)

        return emit
