"""``App``: typed tasks over one database, and the worker side that runs them.

An app holds the tasks registered with ``@app.task`` (by name) and opens its
database on first use: a URL, ``TASKDB_URL``, else the SQLite default, or a
:class:`~taskdb.Database` given to it. A worker serves the app's queues with
one :class:`~taskdb.JobQueueServer` each, whose handler (:class:`AppHandler`)
runs every job by the task name it carries.
"""

from __future__ import annotations

import asyncio
import re
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar, overload

from taskdb import settings
from taskdb.app.tasks import SyncTaskHandle, TaskHandle, TypedTask
from taskdb.core.clock import seconds
from taskdb.core.jobs import Job, canonical_json
from taskdb.core.schedules import MAX_CATCH_UP, Cadence, CatchUp, Schedule, check_catch_up
from taskdb.errors import ConfigurationError, InvalidJobInput, InvalidSchedule, TaskNotFound
from taskdb.queue.client import JobQueueClient, SubmitOptions
from taskdb.queue.config import ServerSettings
from taskdb.queue.context import JobContext
from taskdb.queue.scheduler import Scheduler
from taskdb.queue.server import JobQueueServer
from taskdb.queue.sync import SyncJobQueueClient, refuse_in_event_loop
from taskdb.store.database import Database, connect

R = TypeVar("R")

DEFAULT_QUEUE = "default"
_NAME = re.compile(r"[A-Za-z_][\w.:-]{0,199}")


def _module_name(func: Callable[..., Any]) -> str:
    """The module a worker imports ``func`` from: for a script run as ``__main__``,
    the name it is importable under (``python app.py`` and ``taskdb worker app:app``
    then agree on its tasks' names)."""
    module = func.__module__
    if module != "__main__":
        return module
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return str(spec.name)
    path = getattr(main, "__file__", None)
    return Path(path).stem if path else module


class TaskDecorator(Protocol):
    """What ``@app.task(...)`` with options returns: it keeps the function's return
    type for the task (``TypedTask[R]``)."""

    @overload
    def __call__(self, func: Callable[..., Awaitable[R]], /) -> TypedTask[R]: ...

    @overload
    def __call__(self, func: Callable[..., R], /) -> TypedTask[R]: ...


class PeriodicDecorator(Protocol):
    """What ``@app.periodic(...)`` returns: it takes a task (or a function, which it
    registers as a task first) and gives the task back."""

    @overload
    def __call__(self, func: TypedTask[R], /) -> TypedTask[R]: ...

    @overload
    def __call__(self, func: Callable[..., Awaitable[R]], /) -> TypedTask[R]: ...

    @overload
    def __call__(self, func: Callable[..., R], /) -> TypedTask[R]: ...


TICK = "tick"
"""The parameter a periodic task's tick goes to, if it has one."""


class AppHandler:
    """A :class:`~taskdb.JobQueueServer` handler running an app's tasks: each job by the
    task name it carries. A job whose task this worker does not know fails with
    :class:`~taskdb.TaskNotFound` (and an ERROR log line naming it)."""

    def __init__(self, app: App, queue: str, threads: Executor | None = None) -> None:
        self.app = app
        self.queue = queue
        self.threads = threads

    def __repr__(self) -> str:
        return f"AppHandler({self.app!r}, {self.queue!r})"

    async def __call__(self, input: Any, ctx: JobContext) -> Any:
        name = ctx.task
        task = None if name is None else self.app.tasks.get(name)
        if task is None:
            # The worker logs the failure (ERROR, permanent) with this message.
            known = ", ".join(sorted(self.app.tasks)) or "none"
            what = "no task name (submitted without --task?)" if name is None else f"{name!r}"
            raise TaskNotFound(
                f"job {ctx.job.id} on queue {self.queue!r} runs {what}, which this "
                f"worker's app does not have (it has: {known})"
            )
        return await task.run(input, ctx, self.threads)


class App:
    """Typed tasks and their database (see the module docstring).

    ``App()`` uses ``TASKDB_URL``, else the SQLite default; ``App(url)`` or
    ``App(db=database)`` say which. ``queue`` and ``max_retries`` are the defaults
    of tasks that do not name their own; ``poll_interval`` is how often a handle's
    ``result()`` reads its job (async ones also wake on NOTIFY on PostgreSQL).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        db: Database | None = None,
        queue: str = DEFAULT_QUEUE,
        max_retries: int = settings.DEFAULT_MAX_RETRIES,
        poll_interval: float = settings.DEFAULT_POLL_INTERVAL,
    ) -> None:
        if url is not None and db is not None:
            raise ConfigurationError("App takes a URL or a Database, not both")
        self._url = url
        self._db = db
        self.default_queue = queue
        self.default_max_retries = max_retries
        self.poll_interval = seconds("poll_interval", poll_interval, positive=True)
        self.tasks: dict[str, TypedTask[Any]] = {}
        """Registered tasks by name."""
        self.schedules: dict[str, Schedule] = {}
        """Periodic schedules by name (see :meth:`periodic`)."""
        self._lock = threading.Lock()
        self._owns_db = False  # opened here from a URL: close() closes it
        self._clients: dict[str, JobQueueClient] = {}
        self._sync_clients: dict[str, SyncJobQueueClient] = {}

    def __repr__(self) -> str:
        where = self._db.safe_url if self._db is not None else self._url or "$TASKDB_URL"
        return f"App({where!r}, tasks={len(self.tasks)})"

    @property
    def db(self) -> Database:
        """The app's database, opened on first use."""
        if self._db is None:
            with self._lock:
                if self._db is None:
                    self._db = connect(self._url)
                    self._owns_db = True
        return self._db

    def bind(self, db: Database) -> None:
        """Use ``db`` from now on (a worker started with ``--db``)."""
        with self._lock:
            self._db = db
            self._owns_db = False
            self._clients.clear()
            self._sync_clients.clear()

    @property
    def queues(self) -> list[str]:
        """The queues the app's tasks run on."""
        return sorted({task.queue for task in self.tasks.values()})

    # -- registering -------------------------------------------------------------------

    @overload
    def task(self, func: Callable[..., Awaitable[R]], /) -> TypedTask[R]: ...

    @overload
    def task(self, func: Callable[..., R], /) -> TypedTask[R]: ...

    @overload
    def task(
        self,
        func: None = None,
        /,
        *,
        queue: str | None = None,
        max_retries: int | None = None,
        priority: int = 0,
        name: str | None = None,
    ) -> TaskDecorator: ...

    def task(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        queue: str | None = None,
        max_retries: int | None = None,
        priority: int = 0,
        name: str | None = None,
    ) -> TypedTask[Any] | TaskDecorator:
        """Register ``func`` (an ``async def`` or a plain ``def``) as a task:
        ``@app.task`` or ``@app.task(queue=..., max_retries=..., priority=...,
        name=...)``. Its signature is its payload schema; its name defaults to
        ``module.qualname`` (a script's module is named after its file) and must be
        unique in the app: the worker finds the task by it."""

        def register(func: Callable[..., Any]) -> TypedTask[Any]:
            task_name = name or f"{_module_name(func)}.{func.__qualname__}"
            if not _NAME.fullmatch(task_name):
                raise ConfigurationError(f"bad task name {task_name!r}")
            if task_name in self.tasks:
                raise ConfigurationError(f"task {task_name!r} is registered twice")
            options = SubmitOptions(
                priority=priority,
                max_retries=self.default_max_retries if max_retries is None else max_retries,
            )
            task = TypedTask(
                self, func, name=task_name, queue=queue or self.default_queue, options=options
            )
            self.tasks[task_name] = task
            return task

        return register if func is None else register(func)

    def periodic(
        self,
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        timezone: str = "UTC",
        catch_up: CatchUp = "latest",
        max_catch_up: int = MAX_CATCH_UP,
        name: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> PeriodicDecorator:
        """Run a task periodically: ``cron`` (five fields, or six with seconds first;
        ``@daily`` and the like) in ``timezone``, or ``every`` (whole seconds, at
        least one). Stack it on ``@app.task(...)``, or give it a function to register
        as a task (of the schedule's ``name``, if given). Each tick enqueues exactly
        one job however many schedulers run; the task gets the tick (an aware
        datetime) if it has a ``tick`` parameter, and ``kwargs`` as its other
        arguments (checked now). ``catch_up`` says what
        ticks missed while no scheduler ran do: ``latest`` (the newest runs),
        ``all`` (up to ``max_catch_up``) or ``none``. ``name`` defaults to the
        task's and must be unique in the app."""
        cadence = Cadence(cron=cron, every=every, timezone=timezone)
        check_catch_up(catch_up, max_catch_up)

        def register(func: Any) -> TypedTask[Any]:
            # A function becomes a task first, named like the schedule if that has a name.
            task: TypedTask[Any] = (
                func if isinstance(func, TypedTask) else self.task(name=name)(func)
            )
            schedule_name = name or task.name
            if schedule_name in self.schedules:
                raise InvalidSchedule(f"schedule {schedule_name!r} is defined twice")
            fields = task.signature.args.model_fields
            tick_param = TICK if TICK in fields else None
            call = dict(kwargs or {})
            if tick_param is not None:
                if TICK in call:
                    raise InvalidSchedule(f"schedule {schedule_name!r}: the tick is not a kwarg")
                call[TICK] = datetime(2000, 1, 1, tzinfo=UTC)
            try:
                (payload,) = task.signature.dump_args([call])
            except InvalidJobInput as exc:
                raise InvalidSchedule(f"schedule {schedule_name!r}: {exc}") from None
            payload.pop(TICK, None)
            retries = task.options.get("max_retries")
            self.schedules[schedule_name] = Schedule(
                name=schedule_name,
                task=task.name,
                queue=task.queue,
                cadence=cadence,
                catch_up=catch_up,
                max_catch_up=max_catch_up,
                args_json=canonical_json(payload),
                tick_param=tick_param,
                priority=task.options.get("priority", 0),
                max_retries=self.default_max_retries if retries is None else retries,
            )
            return task

        return register

    def scheduler(self, **options: Any) -> Scheduler:
        """A :class:`~taskdb.queue.scheduler.Scheduler` of the app's schedules
        (``options``: its ``clock``, ``sleep``, ``grace``); ``await
        scheduler.run()`` runs it here, or run ``taskdb scheduler module:app``."""
        return Scheduler(self.db, list(self.schedules.values()), **options)

    # -- clients -----------------------------------------------------------------------

    def client(self, queue: str) -> JobQueueClient:
        """The async client of ``queue`` (made once)."""
        client = self._clients.get(queue)
        if client is None:
            client = self._clients[queue] = JobQueueClient(
                self.db, queue, poll_interval=self.poll_interval
            )
        return client

    def sync_client(self, queue: str) -> SyncJobQueueClient:
        """The sync client of ``queue`` (made once; safe to share between threads)."""
        client = self._sync_clients.get(queue)
        if client is None:
            db = self.db  # before the lock: opening the database takes it too
            with self._lock:
                client = self._sync_clients.get(queue)
                if client is None:
                    client = self._sync_clients[queue] = SyncJobQueueClient(
                        db, queue, poll_interval=self.poll_interval
                    )
        return client

    def _task_of(self, job: Job) -> TypedTask[Any]:
        task = self.tasks.get(job.task or "")
        if task is None:
            runs = f"task {job.task!r}" if job.task else "its queue's handler"
            raise ConfigurationError(f"job {job.id} runs {runs}, which is not a task of {self!r}")
        return task

    async def handle(self, job_id: int) -> TaskHandle[Any]:
        """The typed handle of a job of any of the app's tasks, by its id (read once:
        :class:`~taskdb.JobNotFound`; :class:`~taskdb.ConfigurationError` for a job of
        no task of this app). For a status endpoint that knows only the id."""
        job = await self.client(self.default_queue).get(job_id)
        return self._task_of(job).handle(job.id)

    def sync_handle(self, job_id: int) -> SyncTaskHandle[Any]:
        """:meth:`handle` from synchronous code."""
        job = self.sync_client(self.default_queue).get(job_id)
        return self._task_of(job).sync_handle(job.id)

    async def aclose(self) -> None:
        """Close the database if the app opened it (from a URL or ``TASKDB_URL``); one
        given to it (``db=``, :meth:`bind`) is the giver's to close."""
        db = self._opened()
        if db is not None:
            await db.aclose()

    def close(self) -> None:
        """:meth:`aclose` from synchronous code."""
        refuse_in_event_loop("App.close", "await App.aclose()")
        db = self._opened()
        if db is not None:
            db.close()

    def _opened(self) -> Database | None:
        """The database the app opened itself, forgotten (a later use opens it again)."""
        with self._lock:
            if not self._owns_db:
                return None
            db, self._db, self._owns_db = self._db, None, False
            self._clients.clear()
            self._sync_clients.clear()
            return db

    # -- the worker side ---------------------------------------------------------------

    def servers(
        self,
        queues: Iterable[str] | None = None,
        *,
        threads: Executor | None = None,
        settings: ServerSettings | None = None,
        **options: Any,
    ) -> list[JobQueueServer]:
        """One server per queue (default: every queue of the app's tasks), each
        running the app's tasks; plain ``def`` tasks run in ``threads``. Start and
        stop them yourself, or run ``taskdb worker module:app``."""
        chosen: Sequence[str] = list(dict.fromkeys(queues or self.queues))
        if not chosen:
            raise ConfigurationError(f"{self!r} has no task, so no queue to serve")
        return [
            JobQueueServer(self.db, queue, AppHandler(self, queue, threads), settings, **options)
            for queue in chosen
        ]

    @asynccontextmanager
    async def serve(
        self,
        queues: Iterable[str] | None = None,
        *,
        threads: Executor | None = None,
        settings: ServerSettings | None = None,
        **options: Any,
    ) -> AsyncIterator[list[JobQueueServer]]:
        """Run :meth:`servers` while inside (started on enter, stopped gracefully on
        exit): a worker in this process, e.g. for tests or a small deployment."""
        servers = self.servers(queues, threads=threads, settings=settings, **options)
        started: list[JobQueueServer] = []
        try:
            for server in servers:
                await server.start()
                started.append(server)
            yield servers
        finally:
            await asyncio.gather(*(server.stop() for server in started))
