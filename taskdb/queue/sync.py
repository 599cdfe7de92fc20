"""``SyncJobQueueClient``: the client for synchronous code (Django and Flask views,
scripts, threads).

A thin twin of :class:`~taskdb.queue.client.JobQueueClient`: the same checks
(:class:`~taskdb.queue.client.ClientBase`) and the same store logic
(:class:`~taskdb.store.jobs.JobPlans`), run on the database's synchronous
engine, whose pool is thread-safe. ``wait`` polls. Calling it inside a running
event loop is refused (it would block the loop): use ``JobQueueClient`` there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from functools import cached_property
from typing import Any, Unpack

from taskdb.core.jobs import Job, input_digest
from taskdb.errors import TaskdbError
from taskdb.queue.client import ClientBase, SubmitOptions, job_result
from taskdb.queue.tracing import submit_span
from taskdb.store.errors import outlast_sync
from taskdb.store.jobs import SyncJobStore


def refuse_in_event_loop(what: str, instead: str) -> None:
    """Raise :class:`TaskdbError` when called with an event loop running in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise TaskdbError(
        f"{what} blocks, and this thread runs an event loop: use {instead} in async code"
    )


class SyncJobHandle:
    """A submitted job, for synchronous code (see :class:`~taskdb.JobHandle`)."""

    __slots__ = ("client", "id")

    def __init__(self, client: SyncJobQueueClient, job_id: int) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"SyncJobHandle(id={self.id}, queue={self.client.queue!r})"

    def get(self) -> Job:
        return self.client.get(self.id)

    def wait(self, timeout: float | None = None) -> Any:
        return self.client.wait(self.id, timeout)

    def abort(self) -> None:
        self.client.abort(self.id)


class SyncJobQueueClient(ClientBase):
    """Submit, read, wait for and abort jobs of one queue from synchronous code."""

    @cached_property
    def _store(self) -> SyncJobStore:
        return SyncJobStore(self.db)

    def submit(
        self, input: Any, *, fingerprint: str | None = None, **options: Unpack[SubmitOptions]
    ) -> SyncJobHandle:
        """Enqueue one job (see :meth:`taskdb.JobQueueClient.submit`)."""
        fingerprints = None if fingerprint is None else [fingerprint]
        (handle,) = self.submit_batch([input], fingerprints=fingerprints, **options)
        return handle

    def submit_batch(
        self,
        inputs: Sequence[Any],
        *,
        fingerprints: Sequence[str | None] | None = None,
        **options: Unpack[SubmitOptions],
    ) -> list[SyncJobHandle]:
        """Enqueue many jobs in one transaction; one handle per input, in order."""
        refuse_in_event_loop("SyncJobQueueClient.submit", "JobQueueClient.submit")
        now = self._clock()
        with submit_span(self.queue, len(inputs), options.get("task")) as carrier:
            job_options, new = self._prepare(
                inputs, now, fingerprints, trace_context=carrier, **options
            )
            ids = self._store.submit(self.queue, job_options, new, now)
        return [SyncJobHandle(self, job_id) for job_id in ids]

    def handle(self, job_id: int) -> SyncJobHandle:
        """A handle for an existing job id (not checked until used)."""
        return SyncJobHandle(self, job_id)

    def get(self, job_id: int) -> Job:
        return self._store.get(job_id)

    def wait(self, job_id: int, timeout: float | None = None) -> Any:
        """The job's output once it completed (polled every ``poll_interval``); raises
        the job's error class if it failed, :class:`WaitTimeout` on timeout."""
        return job_result(self.wait_ended(job_id, timeout))

    def wait_ended(self, job_id: int, timeout: float | None = None) -> Job:
        """The job once it ended, whatever its status; :class:`WaitTimeout` on timeout
        (``timeout=0``: no waiting)."""
        refuse_in_event_loop("SyncJobQueueClient.wait", "await JobQueueClient.wait")
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            job = outlast_sync(lambda: self._store.get(job_id), self.poll_interval, give_up)
            if job.status.terminal:
                return job
            left = None if give_up is None else give_up - time.monotonic()
            time.sleep(self._pause(job, left, timeout))

    def abort(self, job_id: int) -> None:
        """Abort a job (see :meth:`taskdb.JobQueueClient.abort`)."""
        self._store.abort(self._clock(), job_id=job_id)

    def abort_run(self, job_run_id: str) -> int:
        """Abort every job of a run; returns how many were still active."""
        return self._store.abort(self._clock(), job_run_id=job_run_id)

    def output_for_input(self, input: Any) -> Any:
        """The output of a completed job of this queue with an equal input, else ``None``."""
        _found, output = self._store.output_for_input(self.queue, input_digest(input))
        return output
