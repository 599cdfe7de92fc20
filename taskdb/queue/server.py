"""The worker side of the queue: a server runs N concurrent handlers in one process.

Each claimed job holds a lease renewed by heartbeat; every write a worker
makes is fenced by (job id, attempt, worker id), so a worker that lost its
lease cannot complete the job. Outcomes are group-committed, and the
statement that writes a batch of them also claims jobs for the freed slots.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from taskdb import settings
from taskdb.core.clock import Clock, utcnow
from taskdb.core.jobs import Claim, JobStatus
from taskdb.core.retry import Complete, Fail, Outcome, RetryPolicy, decide_failure
from taskdb.errors import (
    AbortedJobError,
    ConfigurationError,
    DeadlineExceeded,
    InvalidJobInput,
    StorageError,
    TaskdbError,
)
from taskdb.queue.batcher import Batcher
from taskdb.queue.context import JobContext
from taskdb.queue.durable import DurableStreamWriter, closing_event
from taskdb.queue.limiters import Limiter, NullLimiter
from taskdb.queue.local import StreamCallback, Unsubscribe, hub_for, sleep_until
from taskdb.queue.outputs import needs_storing, store_output
from taskdb.settings import DEFAULT_REFERENCE_THRESHOLD
from taskdb.store.blobs import BlobStore
from taskdb.store.database import Database
from taskdb.store.jobs import JobStore
from taskdb.store.notify import Listener
from taskdb.store.streams import StreamStore
from taskdb.streams.events import EVENT_TYPES, Phase

log = logging.getLogger("taskdb.server")
T = TypeVar("T")

Handler = Callable[[Any, JobContext], Awaitable[Any]]
_EVENT_CLASSES = tuple(EVENT_TYPES.values())  # what a durable stream takes
_MAX_BATCH = 100


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


@dataclass(eq=False)
class _Run:
    job: Any  # the claimed row: id, attempts, input, deadline, max_retries, ...
    claim: Claim
    ctx: JobContext
    task: asyncio.Task[None] | None = None
    cancelling: bool = False  # we cancelled the handler (abort, lost lease, release)
    releasing: bool = False
    lost: bool = False
    recording: bool = False  # handler done, slot freed; its outcome is being written
    cancel_timer: asyncio.TimerHandle | None = None
    stream: DurableStreamWriter | None = None  # the job was submitted with durable_stream


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobQueueServer:
    """Runs ``handler(input, ctx)`` for jobs of ``queue`` with ``workers`` concurrent slots."""

    def __init__(
        self,
        db: Database,
        queue: str,
        handler: Handler,
        *,
        workers: int = 1,
        limiter: Limiter | None = None,
        lease_seconds: float = settings.DEFAULT_LEASE_SECONDS,
        poll_interval: float = settings.DEFAULT_POLL_INTERVAL,
        batch_size: int | None = None,
        retry: RetryPolicy | None = None,
        abort_grace_seconds: float = 2.0,
        abort_poll_interval: float = 0.5,
        stop_timeout: float = 30.0,
        clock: Clock = utcnow,
        worker_id: str | None = None,
        reference_threshold_bytes: int = DEFAULT_REFERENCE_THRESHOLD,
    ) -> None:
        if workers < 1:
            raise ConfigurationError(f"workers must be at least 1, got {workers}")
        if lease_seconds <= 0 or poll_interval <= 0:
            raise ConfigurationError("lease_seconds and poll_interval must be positive")
        self.db = db
        self.queue = queue
        self.handler = handler
        self.workers = workers
        self.limiter = limiter or NullLimiter()
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.batch_size = min(batch_size or _MAX_BATCH, _MAX_BATCH)
        self.retry = retry or RetryPolicy()
        self.abort_grace_seconds = abort_grace_seconds
        self.abort_poll_interval = abort_poll_interval
        self.stop_timeout = stop_timeout
        self.worker_id = worker_id or _default_worker_id()
        self.reference_threshold_bytes = (
            DEFAULT_REFERENCE_THRESHOLD
            if reference_threshold_bytes < 0
            else reference_threshold_bytes
        )
        self._blobs = BlobStore(db)
        self._streams = StreamStore(db)
        self._clock = clock
        self._store = JobStore(db)
        self._hub = hub_for(db)
        self._running: dict[int, _Run] = {}  # claimed and not yet recorded
        self._executing = 0  # runs holding a slot (their handler has not returned)
        self._claiming = 0  # slots that claims in flight may fill
        self._listeners: defaultdict[int, list[StreamCallback]] = defaultdict(list)
        self._finisher: Batcher[tuple[Claim, Outcome], dict[int, JobStatus]] = Batcher(self._flush)
        self._wake = asyncio.Event()
        self._listener: Listener | None = None
        self._listening = False  # for work notifications (only while idle)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stats = ServerStats(queue, self.worker_id, workers)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start claiming and running jobs (returns at once)."""
        if self._tasks:
            return
        self._stopping = False
        self._wake = asyncio.Event()
        self.limiter.bind(self.db, self.queue)
        self._hub.watch_queue(self.queue, self._wake)
        self._listener = self.db.listener()
        self._tasks = [
            asyncio.ensure_future(self._fetch_loop()),
            asyncio.ensure_future(self._maintain_loop()),
        ]

    async def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: claim nothing more (jobs a claim in flight returns go
        back to PENDING at once), let running jobs finish for up to ``timeout``
        seconds (default ``stop_timeout``), then cancel the rest and release them
        back to PENDING for another worker."""
        if not self._tasks:
            return
        self._stopping = True
        self._wake.set()
        fetch, maintain = self._tasks
        wait = self.stop_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        # A claim in flight may commit: let it return so its jobs are given back
        # at once (a cancelled one would hold them until their lease expires).
        if not (await asyncio.wait([fetch], timeout=wait))[0]:
            fetch.cancel()
            await asyncio.gather(fetch, return_exceptions=True)
        runs = [r.task for r in self._running.values() if r.task is not None]
        if runs:
            left = max(0.0, deadline - time.monotonic())
            _done, pending = await asyncio.wait(runs, timeout=left)
            leftovers = [r for r in self._running.values() if r.task in pending]
            for run in leftovers:
                if not run.recording:  # still in its handler: give it back
                    run.releasing = True
                    self._cancel_handler(run)
            if pending:
                await asyncio.wait(pending)
        await self._finisher.drain()
        maintain.cancel()
        await asyncio.gather(maintain, return_exceptions=True)
        self._hub.unwatch_queue(self.queue, self._wake)
        self._listen_for_work(False)
        self._tasks = []

    async def __aenter__(self) -> JobQueueServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def scale_workers(self, workers: int) -> None:
        """Change the number of concurrent slots (running jobs are never cut short)."""
        if workers < 1:
            raise ConfigurationError(f"workers must be at least 1, got {workers}")
        self.workers = self._stats.workers = workers
        self._wake.set()

    def stats(self) -> ServerStats:
        self._stats.running = self._executing
        return ServerStats(**vars(self._stats))

    def add_stream_listener(self, job_id: int, callback: StreamCallback) -> Unsubscribe:
        """Listen to ``emit_stream_event`` of job ``job_id`` run by this server."""
        self._listeners[job_id].append(callback)

        def unsubscribe() -> None:
            listeners = self._listeners.get(job_id)
            if listeners and callback in listeners:
                listeners.remove(callback)

        return unsubscribe

    # -- claiming ------------------------------------------------------------------

    def _claimable(self) -> int:
        """How many jobs a claim may take now (free slots no claim in flight fills)."""
        # Outcomes are written in the background; cap that backlog at one server's
        # worth so a slow database slows claiming down.
        if self._stopping or len(self._running) >= 2 * self.workers:
            return 0
        return min(self.workers - self._executing - self._claiming, self.batch_size)

    async def _fetch_loop(self) -> None:
        failures = 0
        while not self._stopping:
            want = self._claimable()
            # While outcomes are being written, their flush claims for the free slots.
            if want <= 0 or self._finisher.busy:
                await self._sleep(None)
                continue
            now = self._clock()
            try:
                grant = await self.limiter.reserve(want, now)
                if grant == 0:
                    await self._sleep(self._until(self.limiter.next_time(now)))
                    continue
                jobs = await self._claiming_for(
                    grant,
                    now,
                    self._store.claim_rows(
                        self.queue, self.worker_id, grant, now, self.lease_seconds
                    ),
                )
                await self._took(jobs, grant, now)
                failures = 0
            except TaskdbError as exc:
                failures += 1
                log.warning("claim failed (%s); retrying", exc)
                await self._sleep(min(self.poll_interval * 2**failures, 10.0))
                continue
            # Short of runnable jobs: from now on, wake on NOTIFY of new work, and
            # claim once more first (what committed before the watch notified nobody).
            if self._listen_for_work(len(jobs) < grant):
                continue
            if len(jobs) < want:
                await self._sleep(self.poll_interval)

    async def _claiming_for(self, grant: int, now: datetime, claim: Awaitable[T]) -> T:
        """Await ``claim``, a claim of up to ``grant`` jobs reserved from the limiter;
        if it fails or is cancelled, it started nothing: the reservation goes back."""
        self._claiming += grant
        try:
            return await claim
        except BaseException:
            await self._unreserve(grant, now)
            raise
        finally:
            self._claiming -= grant

    async def _took(self, jobs: Sequence[Any], grant: int, now: datetime) -> None:
        """Start the jobs a claim of ``grant`` returned; while stopping, give them
        back instead (stop() no longer waits for new runs)."""
        if self._stopping and jobs:
            await self._release([Claim(job.id, job.attempts) for job in jobs])
            jobs = []
        await self._unreserve(grant - len(jobs), now)
        self._stats.claimed += len(jobs)
        for job in jobs:
            self._launch(job)

    async def _unreserve(self, count: int, now: datetime) -> None:
        """Give back limiter starts no job will use. Also after a failed claim, so an
        outage cannot shrink a ConcurrencyLimiter for good; a RateLimiter whose table
        is away keeps its slots (they leave the window with time)."""
        if count <= 0:
            return
        try:
            await self.limiter.unreserve(count, now)
        except TaskdbError as exc:
            log.warning("limiter: %d unused starts not given back (%s)", count, exc)

    def _listen_for_work(self, idle: bool) -> bool:
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

    def _until(self, when: datetime | None) -> float:
        if when is None:
            return self.poll_interval
        return max(0.001, min(self.poll_interval, (when - self._clock()).total_seconds()))

    async def _sleep(self, seconds: float | None) -> None:
        """Sleep until woken (a slot freed, work submitted here or, on PostgreSQL,
        notified from anywhere) or ``seconds`` passed."""
        await sleep_until(self._wake, seconds)
        self._wake.clear()

    def _launch(self, job: Any) -> None:
        stale = self._running.get(job.id)
        if stale is not None:
            # This worker stalled past its lease, the job was requeued and we
            # claimed it again: the old attempt is fenced off, stop it.
            self._lose(stale)
        claim = Claim(job.id, job.attempts)
        stream = None
        if getattr(job, "durable_stream", False):
            stream = DurableStreamWriter(self._streams, job.id, job.attempts, self.worker_id)
            if job.attempts > 1:  # a retried job's stream restarts, marked
                stream.add(Phase(f"attempt {job.attempts}", None))
        ctx = JobContext(job, self._progress_writer(claim), self._emitter(job.id, stream))
        run = _Run(job, claim, ctx, stream=stream)
        self._running[job.id] = run
        self._executing += 1
        run.task = asyncio.ensure_future(self._run(run))

    # -- running -------------------------------------------------------------------

    async def _run(self, run: _Run) -> None:
        job = run.job
        try:
            outcome = await self._execute(run)
            self._free_slot(run)
            if run.stream is not None:
                await self._flush_stream(run)
            if outcome is not None:
                status = await self._record(run, outcome)
                if run.stream is not None and status in (JobStatus.COMPLETED, JobStatus.FAILED):
                    await self._close_stream(run)
        except Exception:
            log.exception("job %s: unexpected error in the server", job.id)
        finally:
            self._free_slot(run)
            if run.cancel_timer is not None:
                run.cancel_timer.cancel()
            if self._running.get(job.id) is run:
                del self._running[job.id]
                self._listeners.pop(job.id, None)
            if run.releasing:
                await self._release([run.claim])
            if run.stream is not None:
                run.stream.abandon()
            self._wake.set()

    def _free_slot(self, run: _Run) -> None:
        """The handler returned: its slot can take the next job while the outcome is
        written (the write stays fenced; ``stop`` waits for it)."""
        if not run.recording:
            run.recording = True
            self._executing -= 1
            self.limiter.on_finish()
            self._wake.set()

    async def _execute(self, run: _Run) -> Outcome | None:
        """Run the handler in this task; ``None`` when nothing must be written
        (released, lease lost). The server cancels the handler by cancelling the
        run's task with ``run.cancelling`` set (see :meth:`_cancel_handler`)."""
        job = run.job
        deadline = None
        if job.deadline is not None:
            left = (job.deadline - self._clock()).total_seconds()
            deadline = asyncio.get_running_loop().time() + max(0.0, left)
        timer = None if deadline is None else asyncio.timeout_at(deadline)
        try:
            if timer is None:
                output = await self._output_of(run)
            else:
                async with timer:
                    output = await self._output_of(run)
        except TimeoutError as exc:
            if timer is None or not timer.expired():  # the handler raised it itself
                return self._failure(run, exc)
            return Fail("deadline exceeded while running", DeadlineExceeded.__name__)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not run.cancelling or task is None:
                raise  # not ours: the server itself is being cancelled
            task.uncancel()
            if run.releasing or run.lost:
                return None
            return Fail("aborted", AbortedJobError.__name__)
        except Exception as exc:
            return self._failure(run, exc)
        # Not JSON? The outcome write rejects it and fails only this job (see _flush).
        return Complete(output)

    async def _output_of(self, run: _Run) -> Any:
        """Run the handler; binary values in its output go to the blob store."""
        output = await self.handler(run.job.input, run.ctx)
        if needs_storing(output):
            threshold = self.reference_threshold_bytes
            output = await store_output(output, self._blobs, run.job.id, threshold)
        return output

    def _failure(self, run: _Run, exc: BaseException) -> Outcome:
        job = run.job
        if run.ctx.aborting:
            return Fail("aborted", AbortedJobError.__name__)
        log.info("job %s attempt %s failed: %r", job.id, job.attempts, exc)
        return decide_failure(
            exc,
            attempts=job.attempts,
            max_retries=job.max_retries,
            deadline=job.deadline,
            now=self._clock(),
            policy=self.retry,
        )

    async def _flush_stream(self, run: _Run) -> None:
        assert run.stream is not None
        try:
            await run.stream.close()
        except TaskdbError as exc:  # fenced out or the database is away: the run goes on
            log.warning("job %s: its durable stream is incomplete: %s", run.job.id, exc)

    async def _close_stream(self, run: _Run) -> None:
        """End an ended job's durable stream as its row ended (what was stored, not
        what the handler returned: an abort may have won, the output been refused)."""
        try:
            event = closing_event(await self._store.get(run.job.id))
            await self._streams.append_terminal(run.job.id, run.job.attempts, event)
        except TaskdbError as exc:  # a follower falls back on the job row
            log.warning("job %s: could not close its durable stream: %s", run.job.id, exc)

    async def _record(self, run: _Run, outcome: Outcome) -> JobStatus | None:
        """Write the outcome, retrying through a database outage while the lease lasts."""
        job = run.job
        give_up = time.monotonic() + self.lease_seconds
        delay = 0.05
        while True:
            try:
                statuses = await self._finisher.submit((run.claim, outcome))
                break
            except StorageError as exc:
                if time.monotonic() > give_up:
                    log.error(
                        "job %s: could not record its outcome (%s); its lease will expire",
                        job.id,
                        exc,
                    )
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
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

    async def _flush(self, items: Sequence[tuple[Claim, Outcome]]) -> dict[int, JobStatus]:
        """Write a batch of outcomes and, in the same round trip, claim jobs for the
        slots that are free (a busy worker's one statement per batch)."""
        now = self._clock()
        want = self._claimable()
        try:
            grant = await self.limiter.reserve(want, now) if want > 0 else 0
        except TaskdbError as exc:  # the limiter's own table: outcomes go on alone
            log.warning("claim with outcomes skipped (%s)", exc)
            grant = 0
        if grant == 0:
            return await self._finish(items)
        write = self._store.finish_and_claim(
            self.worker_id,
            items,
            now,
            queue=self.queue,
            limit=grant,
            lease_seconds=self.lease_seconds,
        )
        try:
            statuses, jobs = await self._claiming_for(grant, now, write)
        except InvalidJobInput:  # nothing was written: outcomes alone, claims later
            return await self._finish(items)
        await self._took(jobs, grant, now)
        return statuses

    async def _finish(self, items: Sequence[tuple[Claim, Outcome]]) -> dict[int, JobStatus]:
        """Write a batch of outcomes. If a value is rejected (not JSON, or refused by
        the database: PostgreSQL jsonb has no ``\\u0000``), write the items one by one
        so one bad output cannot sink its siblings; the rejected one fails its job."""
        try:
            return await self._store.finish(self.worker_id, items, self._clock())
        except InvalidJobInput as exc:
            if len(items) > 1:
                statuses: dict[int, JobStatus] = {}
                for item in items:
                    statuses |= await self._finish([item])
                return statuses
            ((claim, _),) = items
            rejected = Fail(f"output rejected: {exc}", InvalidJobInput.__name__)
            return await self._store.finish(self.worker_id, [(claim, rejected)], self._clock())

    async def _release(self, claims: Sequence[Claim]) -> None:
        """Give claimed jobs back to PENDING (the attempt does not count)."""
        try:
            released = await self._store.release(self.worker_id, claims, self._clock())
            self._stats.released += released
        except TaskdbError as exc:
            ids = ", ".join(str(c.job_id) for c in claims)
            log.warning("job %s: release failed (%s); its lease will expire", ids, exc)

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

    # -- leases, aborts, recovery ----------------------------------------------------

    async def _maintain_loop(self) -> None:
        # Abort requests are polled on their own interval: a queue polled every
        # few ms for new work need not look for aborts that often.
        tick = min(self.abort_poll_interval, self.lease_seconds / 3)
        beat_every = self.lease_seconds / 3
        reap_every = min(self.lease_seconds / 2, 5.0)
        last_beat = last_reap = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            beat, reap = now - last_beat >= beat_every, now - last_reap >= reap_every
            try:
                await self._maintain_once(beat=beat, reap=reap)
            except TaskdbError as exc:
                log.warning("lease maintenance failed (%s); retrying", exc)
                continue  # not done: try again next tick
            if beat:
                last_beat = now
            if reap:
                last_reap = now

    async def _maintain_once(self, *, beat: bool, reap: bool) -> None:
        runs = [r for r in self._running.values() if not (r.lost or r.recording)]
        claims = [r.claim for r in runs]
        now = self._clock()
        if beat:
            held = await self._store.heartbeat(self.worker_id, claims, now, self.lease_seconds)
            for run in runs:
                status = held.get(run.job.id)
                if status is None:
                    if not run.recording:  # (it may have started writing meanwhile)
                        self._lose(run)
                elif status is JobStatus.ABORTING:
                    self._abort(run)
        else:
            for job_id in await self._store.aborting(claims):
                target = self._running.get(job_id)
                if target is not None:
                    self._abort(target)
        if reap and await self._store.reap(self.queue, now):
            self._wake.set()

    def _abort(self, run: _Run) -> None:
        if run.ctx.aborting:
            return
        run.ctx.abort_signal.set()
        loop = asyncio.get_running_loop()
        run.cancel_timer = loop.call_later(self.abort_grace_seconds, self._cancel_handler, run)

    def _lose(self, run: _Run) -> None:
        log.warning("job %s: lease lost (expired or re-claimed); cancelling it", run.job.id)
        run.lost = True
        self._cancel_handler(run)

    @staticmethod
    def _cancel_handler(run: _Run) -> None:
        """Cancel a run's handler (never its outcome write, which is fenced anyway)."""
        if run.task is not None and not run.recording and not run.cancelling:
            run.cancelling = True
            run.task.cancel()
