"""Typed tasks: a decorated function, how it is deferred, and the handles it gives.

``task.defer(**kwargs)`` (synchronous code) and ``await task.defer_async(**kwargs)``
validate the arguments against the function's signature, then submit one job
to the task's queue with the task's name on it; ``task.configure(...)`` sets
per-call options first. Their handles' ``result()`` gives the function's
declared return type back.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, Unpack

from taskdb.app.signature import TaskSignature
from taskdb.core.jobs import EncodedInputs, Job
from taskdb.errors import ConfigurationError
from taskdb.queue.client import JobHandle, JobQueueClient, SubmitOptions, job_result
from taskdb.queue.context import JobContext, SyncJobContext
from taskdb.queue.sync import SyncJobHandle, SyncJobQueueClient, refuse_in_event_loop

R = TypeVar("R")
H = TypeVar("H", JobHandle, SyncJobHandle)


class TaskHost(Protocol):
    """Where a task's jobs go (a :class:`~taskdb.App`)."""

    def client(self, queue: str) -> JobQueueClient: ...

    def sync_client(self, queue: str) -> SyncJobQueueClient: ...


class _Handle(Generic[R, H]):
    """What both task handles share: the task and the job's own handle."""

    __slots__ = ("job", "task")

    def __init__(self, task: TypedTask[R], job: H) -> None:
        self.task = task
        self.job: H = job

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.task.name!r}, id={self.id})"

    @property
    def id(self) -> int:
        return self.job.id


class TaskHandle(_Handle[R, JobHandle]):
    """A deferred task's job, from async code: :meth:`result` is the return value."""

    __slots__ = ()

    async def get(self) -> Job:
        return await self.job.get()

    async def wait(self, timeout: float | None = None) -> Any:
        """The stored output as JSON (see :meth:`taskdb.JobHandle.wait`)."""
        return await self.job.wait(timeout)

    async def abort(self) -> None:
        await self.job.abort()

    async def result(self, timeout: float | None = None) -> R:
        """The task's return value once the job completed, as its declared type;
        raises the job's error class if it failed (:class:`~taskdb.WaitTimeout` on
        timeout; ``timeout=0``: no waiting). See :meth:`TypedTask.result_of`."""
        return self.task.result_of(await self.job.client.wait_ended(self.id, timeout))


class SyncTaskHandle(_Handle[R, SyncJobHandle]):
    """A deferred task's job, from synchronous code: :meth:`result` is the return value."""

    __slots__ = ()

    def get(self) -> Job:
        return self.job.get()

    def wait(self, timeout: float | None = None) -> Any:
        """The stored output as JSON (see :meth:`taskdb.SyncJobHandle.wait`)."""
        return self.job.wait(timeout)

    def abort(self) -> None:
        self.job.abort()

    def result(self, timeout: float | None = None) -> R:
        """The task's return value once the job completed, as its declared type (see
        :meth:`TaskHandle.result`)."""
        return self.task.result_of(self.job.client.wait_ended(self.id, timeout))


@dataclass(frozen=True)
class TaskCall(Generic[R]):
    """A task with per-call options (:meth:`TypedTask.configure`): defer it the same
    ways as the task itself."""

    task: TypedTask[R]
    queue: str
    fingerprint: str | None = None
    options: SubmitOptions = field(default_factory=lambda: SubmitOptions())

    def _payloads(self, calls: Iterable[Mapping[str, Any]]) -> EncodedInputs:
        return self.task.signature.encode_args(list(calls))

    def _fingerprints(self, count: int) -> list[str | None] | None:
        if self.fingerprint is None:
            return None
        if count != 1:
            raise ConfigurationError("a fingerprint names one job: defer one at a time")
        return [self.fingerprint]

    def defer(self, **kwargs: Any) -> SyncTaskHandle[R]:
        """Validate the arguments and enqueue one job (synchronous code)."""
        (handle,) = self.defer_many([kwargs])
        return handle

    def defer_many(self, calls: Iterable[Mapping[str, Any]]) -> list[SyncTaskHandle[R]]:
        """Enqueue one job per mapping of arguments, in one transaction; nothing is
        stored when any of them is invalid."""
        name = self.task.name
        refuse_in_event_loop(f"{name}.defer", f"await {name}.defer_async(...)")
        payloads = self._payloads(calls)
        client = self.task.app.sync_client(self.queue)
        jobs = client.submit_batch(
            payloads, fingerprints=self._fingerprints(len(payloads)), **self.options
        )
        return [SyncTaskHandle(self.task, job) for job in jobs]

    async def defer_async(self, **kwargs: Any) -> TaskHandle[R]:
        """Validate the arguments and enqueue one job (async code)."""
        (handle,) = await self.defer_many_async([kwargs])
        return handle

    async def defer_many_async(self, calls: Iterable[Mapping[str, Any]]) -> list[TaskHandle[R]]:
        """:meth:`defer_many` from async code."""
        payloads = self._payloads(calls)
        client = self.task.app.client(self.queue)
        jobs = await client.submit_batch(
            payloads, fingerprints=self._fingerprints(len(payloads)), **self.options
        )
        return [TaskHandle(self.task, job) for job in jobs]


class TypedTask(Generic[R]):
    """A function registered with :meth:`taskdb.App.task`. Calling it runs the function
    here and now; ``defer`` and ``defer_async`` run it on a worker."""

    def __init__(
        self,
        app: TaskHost,
        func: Callable[..., Awaitable[R]] | Callable[..., R],
        *,
        name: str,
        queue: str,
        options: SubmitOptions,
    ) -> None:
        self.app = app
        self.func = func
        self.name = name
        self.queue = queue
        self.options = options
        self.is_async = inspect.iscoroutinefunction(func)
        self.signature = TaskSignature.of(func, f"task {name!r}")
        self.__doc__ = func.__doc__
        self.__wrapped__ = func

    def __repr__(self) -> str:
        return f"<TypedTask {self.name!r} on queue {self.queue!r}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def configure(
        self,
        *,
        queue: str | None = None,
        fingerprint: str | None = None,
        **options: Unpack[SubmitOptions],
    ) -> TaskCall[R]:
        """Per-call options: ``queue``, ``fingerprint`` (dedupe) and what a submit
        takes (``run_after``, ``deadline``, ``priority``, ``max_retries``,
        ``durable_stream``, ``job_run_id``) over the task's own."""
        merged = SubmitOptions(**{**self.options, **options, "task": self.name})
        return TaskCall(self, queue or self.queue, fingerprint, merged)

    def defer(self, **kwargs: Any) -> SyncTaskHandle[R]:
        """Validate the arguments and enqueue a job from synchronous code (a Django or
        Flask view, a script); refused in a thread running an event loop."""
        return self.configure().defer(**kwargs)

    async def defer_async(self, **kwargs: Any) -> TaskHandle[R]:
        """Validate the arguments and enqueue a job from async code."""
        return await self.configure().defer_async(**kwargs)

    def defer_many(self, calls: Iterable[Mapping[str, Any]]) -> list[SyncTaskHandle[R]]:
        """One job per mapping of arguments, in one transaction."""
        return self.configure().defer_many(calls)

    async def defer_many_async(self, calls: Iterable[Mapping[str, Any]]) -> list[TaskHandle[R]]:
        """:meth:`defer_many` from async code."""
        return await self.configure().defer_many_async(calls)

    def handle(self, job_id: int) -> TaskHandle[R]:
        """A handle (async code) for a job of this task deferred earlier, by its id."""
        return TaskHandle(self, self.app.client(self.queue).handle(job_id))

    def sync_handle(self, job_id: int) -> SyncTaskHandle[R]:
        """A handle (synchronous code) for a job of this task deferred earlier, by its id."""
        return SyncTaskHandle(self, self.app.sync_client(self.queue).handle(job_id))

    def result_of(self, job: Job) -> R:
        """The return value of ``job``, an ended job of this task, as the declared
        type; raises the job's error class if it did not complete, and
        :class:`~taskdb.ConfigurationError` for a job of another task (its output
        has another type)."""
        if job.task != self.name:
            runs = f"task {job.task!r}" if job.task else "its queue's handler"
            raise ConfigurationError(f"job {job.id} runs {runs}, not task {self.name!r}")
        value: R = self.signature.load_output(job_result(job))
        return value

    async def run(self, payload: Any, ctx: JobContext, threads: Executor | None) -> Any:
        """Run the function for a stored payload on a worker; returns the output to
        store. A plain ``def`` runs in ``threads`` (with this task's context
        variables) and gets a :class:`~taskdb.SyncJobContext`."""
        kwargs = self.signature.load_args(payload)
        context = self.signature.context
        if self.is_async:
            if context is not None:
                kwargs[context] = ctx
            result = await self.func(**kwargs)  # type: ignore[misc]
        else:
            loop = asyncio.get_running_loop()
            if context is not None:
                kwargs[context] = SyncJobContext(ctx, loop)
            call = functools.partial(contextvars.copy_context().run, self.func, **kwargs)
            result = await loop.run_in_executor(threads, call)
        return self.signature.dump_output(result)
