"""``Admin``: what an operator does to a taskdb database, as library calls.

Every ``taskdb`` command that inspects or repairs jobs and blobs is a thin
shell over one of these methods, and so is the dashboard: list and show jobs,
retry, abort and purge them, per-queue statistics, list and read blobs,
collect garbage, and watch the change feed. Every method checks its
arguments (a bad one raises :class:`~taskdb.ConfigurationError` or
:class:`~taskdb.InvalidJobInput`) and raises :class:`~taskdb.JobNotFound`
for an unknown job id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from taskdb.core.clock import Clock, age, seconds, utcnow
from taskdb.core.jobs import (
    TERMINAL_STATUSES,
    ChangeCursor,
    Job,
    JobChange,
    JobStatus,
    check_job_id,
    check_queue,
    statuses_of,
)
from taskdb.core.schedules import ScheduleInfo, check_schedule_name
from taskdb.errors import AbortedJobError, ConfigurationError, WaitTimeout
from taskdb.queue.changes import ChangeCallback, StopFollowing, follow_changes
from taskdb.queue.client import JobQueueClient, purge_ended
from taskdb.store.blobs import BlobInfo, BlobState, BlobStore, GcReport
from taskdb.store.database import Database
from taskdb.store.feed import ChangeFeed
from taskdb.store.jobs import JobStore
from taskdb.store.queues import QueueStore
from taskdb.store.schedules import ScheduleStore
from taskdb.store.stats import DatabaseStats, Throughput, collect_stats, collect_throughput
from taskdb.store.workers import WorkerInfo, WorkerStore

__all__ = ["Admin", "JobOutcome"]

EndState = Literal["completed", "failed", "aborted", "timeout"]


SCHEDULE_ACTIONS = ("pause", "resume", "trigger", "delete")
"""What :meth:`Admin.act_on_schedule` does to a schedule."""


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How a wait for a job ended (``timeout``: it had not) and the job's row then."""

    state: EndState
    job: Job

    @classmethod
    def of(cls, job: Job) -> JobOutcome:
        """How ``job``'s row says it ended (``timeout``: it has not)."""
        if job.status is JobStatus.COMPLETED:
            return cls("completed", job)
        if job.status is JobStatus.FAILED and job.error_code == AbortedJobError.__name__:
            return cls("aborted", job)
        return cls("failed" if job.status.terminal else "timeout", job)

    def describe(self) -> str:
        """One line: the error of a failed or aborted job, the status of one still running."""
        if self.state == "timeout":
            return f"job {self.job.id} is still {self.job.status.value}"
        if self.state == "completed":
            return f"job {self.job.id} completed"
        return f"job {self.job.id} {self.state}: {self.job.error_code}: {self.job.error}"


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(f"limit must be an int >= 1, got {limit!r}")
    return limit


class Admin:
    """Operator actions over one :class:`~taskdb.Database` (see the module docstring).

    ``clock`` stamps what the actions write (tests inject one).
    """

    def __init__(self, db: Database, *, clock: Clock = utcnow) -> None:
        self.db = db
        self._clock = clock
        self._jobs = JobStore(db)
        self._blobs = BlobStore(db)
        self._schedules = ScheduleStore(db)

    def __repr__(self) -> str:
        return f"Admin({self.db!r})"

    # -- jobs --------------------------------------------------------------------------

    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        status: Sequence[JobStatus | str] = (),
        limit: int = 100,
        before: int | None = None,
        task: str | None = None,
        text: str | None = None,
    ) -> list[Job]:
        """Jobs newest first: of ``queue``, ``status`` (any of them) and ``task`` when
        given, holding ``text`` (case-insensitive) in their task name, error or
        fingerprint, at most ``limit``, with ids below ``before`` (pass the last id
        of a page to read the next one: a page stays correct while jobs arrive)."""
        if before is not None:
            check_job_id(before)
        return await self._jobs.list_jobs(
            queue=queue,
            status=statuses_of(status),
            limit=check_limit(limit),
            before=before,
            task=task,
            text=text,
        )

    async def get_job(self, job_id: int) -> Job:
        """The job row; :class:`JobNotFound` for an unknown id."""
        return await self._jobs.get(job_id)

    async def retry_job(self, job_id: int) -> bool:
        """Put a FAILED job back to PENDING for one more run (its retry budget grows
        by one if it was used up). False when the job is not FAILED."""
        return await self._jobs.retry_now(job_id, self._clock())

    async def abort_job(self, job_id: int) -> bool:
        """Abort a job: a pending one fails at once, a running one's worker cancels
        it. False when the job had already ended."""
        return bool(await self._jobs.abort(self._clock(), job_id=job_id))

    async def purge_jobs(
        self,
        older_than: timedelta,
        *,
        queue: str | None = None,
        status: Sequence[JobStatus | str] = TERMINAL_STATUSES,
    ) -> int:
        """Delete ended jobs (of ``status``, default every ended one; of ``queue`` when
        given) that ended more than ``older_than`` ago, with their durable streams
        and the blobs only they referred to; returns how many jobs went."""
        return await purge_ended(self._jobs, older_than, self._clock(), queue, status)

    async def trim_changes(self, older_than: timedelta) -> int:
        """Delete change-feed rows recorded more than ``older_than`` ago (the newest
        change always stays); returns how many went. Jobs keep their rows: only their
        history (``job_history``, ``taskdb watch --job``, the dashboard) loses them,
        and a reader whose cursor is older goes on from the first change kept."""
        return await ChangeFeed(self.db).trim(self._clock() - age("older_than", older_than))

    async def pause_queue(self, queue: str) -> None:
        """Stop every worker, on every machine, claiming from ``queue`` (each with its
        next claim); submissions are still accepted and running jobs finish."""
        await QueueStore(self.db).set_paused(check_queue(queue), True, self._clock())

    async def resume_queue(self, queue: str) -> None:
        """Let workers claim from ``queue`` again."""
        await QueueStore(self.db).set_paused(check_queue(queue), False, self._clock())

    async def paused_queues(self) -> set[str]:
        """The queues no worker claims from."""
        return await QueueStore(self.db).paused()

    async def wait(self, job_id: int, timeout: float | None = None) -> JobOutcome:
        """Wait until the job ends (or ``timeout`` seconds pass); how it ended and its
        row as it is then (the output as stored: refs stay refs)."""
        job = await self.get_job(job_id)
        try:
            return JobOutcome.of(
                await JobQueueClient(self.db, job.queue).wait_ended(job_id, timeout)
            )
        except WaitTimeout:  # still running: as it is now
            return JobOutcome.of(await self.get_job(job_id))

    async def stats(self) -> DatabaseStats:
        """Per-queue job counts by status, lag and throughput, and blob totals."""
        return await collect_stats(self.db, self._clock())

    async def throughput(self, minutes: int = 60) -> Throughput:
        """Jobs completed and failed per minute over the last ``minutes`` minutes."""
        if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= 1440:
            raise ConfigurationError(f"minutes must be an int from 1 to 1440, got {minutes!r}")
        return await collect_throughput(self.db, self._clock(), minutes)

    async def workers(self) -> list[WorkerInfo]:
        """The running workers (one row per queue each serves), from their heartbeats;
        a worker that died without stopping stays listed, ``stale``."""
        return await WorkerStore(self.db).list_workers(self._clock())

    # -- periodic schedules ------------------------------------------------------------

    async def schedules(self) -> list[ScheduleInfo]:
        """Every stored schedule by name: its cadence, next and last tick, the last
        tick's job and its status, paused, orphaned (no scheduler has it lately)."""
        return await self._schedules.infos(self._clock())

    async def pause_schedule(self, name: str) -> None:
        """Stop enqueueing ``name``'s ticks (every scheduler, from its next pass);
        :class:`~taskdb.ScheduleNotFound` for an unknown name."""
        await self._schedules.set_paused(check_schedule_name(name), True, self._clock())

    async def resume_schedule(self, name: str) -> None:
        """Enqueue ``name``'s ticks again from now on (the ticks it missed while
        paused do not run)."""
        await self._schedules.set_paused(check_schedule_name(name), False, self._clock())

    async def trigger_schedule(self, name: str) -> int:
        """Enqueue a job of ``name`` now, outside its ticks (its tick argument is now;
        paused or not); returns the job's id."""
        return await self._schedules.trigger(check_schedule_name(name), self._clock())

    async def delete_schedule(self, name: str) -> None:
        """Forget ``name`` (an orphaned schedule, removed from code); a scheduler that
        still has it registers it again."""
        await self._schedules.delete(check_schedule_name(name))

    async def act_on_schedule(self, name: str, action: str) -> int | None:
        """One of :data:`SCHEDULE_ACTIONS` on ``name`` by its word (a CLI or HTTP
        action): ``trigger`` returns the job's id, the others ``None``;
        :class:`~taskdb.ConfigurationError` for another word."""
        acts: dict[str, Callable[[str], Awaitable[int | None]]] = {
            "pause": self.pause_schedule,
            "resume": self.resume_schedule,
            "trigger": self.trigger_schedule,
            "delete": self.delete_schedule,
        }
        act = acts.get(action)
        if act is None:
            known = ", ".join(SCHEDULE_ACTIONS)
            raise ConfigurationError(f"no schedule action {action!r} (one of {known})")
        return await act(name)

    # -- the change feed ---------------------------------------------------------------

    async def job_history(self, job_id: int, limit: int = 200) -> list[JobChange]:
        """The first ``limit`` changes of job ``job_id`` in the feed, oldest first: its
        submit, each attempt's claim and end, retries, progress (as long as the feed
        keeps them); :class:`JobNotFound` for an unknown job."""
        await self.get_job(check_job_id(job_id))
        return await ChangeFeed(self.db).changes(0, job_id=job_id, limit=check_limit(limit))

    async def feed_head(self) -> ChangeCursor:
        """The change-feed cursor of now: :meth:`watch` after it sees what commits later."""
        return await ChangeFeed(self.db).head()

    async def watch(
        self,
        callback: ChangeCallback,
        *,
        queue: str | None = None,
        job_id: int | None = None,
        after: ChangeCursor | int | None = None,
        poll_interval: float = 0.5,
    ) -> StopFollowing:
        """Call ``callback`` with each change of every queue (or of ``queue``, of job
        ``job_id``) after the cursor ``after`` (default: from now on), in feed
        order, each once; returns the function that stops it (see
        :func:`~taskdb.queue.changes.follow_changes`)."""
        if job_id is not None:
            check_job_id(job_id)
        seconds("poll_interval", poll_interval, positive=True)
        return await follow_changes(
            self.db, callback, queue=queue, job_id=job_id, after=after, poll_interval=poll_interval
        )

    # -- blobs -------------------------------------------------------------------------

    async def list_blobs(
        self, *, state: BlobState | None = None, limit: int = 100
    ) -> list[BlobInfo]:
        """Blobs newest first, only those in ``state`` when given."""
        if state not in (None, "committed", "writing"):
            raise ConfigurationError(f"state must be 'committed' or 'writing', got {state!r}")
        return await self._blobs.list_blobs(state=state, limit=check_limit(limit))

    async def open_blob(self, key: str) -> AsyncIterator[bytes] | None:
        """The committed blob ``key`` as a stream of chunks (never whole in memory), or
        ``None`` when no committed blob has that key."""
        return await self._blobs.open_stream(key)

    async def blob_info(self, key: str) -> BlobInfo | None:
        """What the store knows of blob ``key`` (size, mime, state), or ``None``."""
        return await self._blobs.info(key)

    async def gc(
        self,
        *,
        dry_run: bool = False,
        grace_seconds: float = 3600.0,
        stale_seconds: float = 900.0,
    ) -> GcReport:
        """Reclaim orphaned blobs: committed blobs nothing has referred to for
        ``grace_seconds``, and unfinished ones whose writer has been silent for
        ``stale_seconds``; ``dry_run`` only counts them."""
        return await self._blobs.gc(
            dry_run=dry_run,
            grace_seconds=grace_seconds,
            stale_seconds=stale_seconds,
            now=self._clock(),
        )
