"""The storage error boundary: driver errors become taskdb errors, the one
reconnect policy every store applies, and how an outage is logged.

Every statement runs inside :meth:`taskdb.store.database.Database.transaction`,
which calls :func:`translate_error` on whatever the driver (psycopg, sqlite3,
SQLAlchemy) raises. A connection found dead before COMMIT means the
transaction rolled back: that :class:`StorageError` is ``retryable``, and
:func:`reconnecting` runs the transaction once more on a fresh connection, so a
database restart costs no caller an error. A lone statement in autocommit has
no such before: one that must not run twice (a submit) is retried only when
the server said it ended the session (:func:`ended_by_server`); otherwise the
caller gets an error saying the write is in doubt (:func:`in_doubt`).

An outage (the database cannot be reached: :attr:`StorageError.unavailable`)
is noted by the database's :class:`OutageLog` and logged once per process by
the first loop that retries (claims, leases, followers, waits): one WARNING
when it begins, one INFO when statements succeed again; the loops log their
own retries at DEBUG (:func:`retry_level`). A one-shot call that fails only
raises.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import psycopg
from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError

from taskdb.errors import InvalidJobInput, SchemaOutOfDate, StorageError, TaskdbError

DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    SQLAlchemyError,
    sqlite3.Error,
    psycopg.Error,
    OSError,
)
"""What a driver may raise; :func:`translate_error` maps each to a :class:`TaskdbError`."""

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("taskdb.store")


def connection_lost(orig: BaseException, where: str, *, retryable: bool = True) -> StorageError:
    """The error for a connection that died (before COMMIT: ``retryable``)."""
    err = StorageError(f"database {where} connection lost: {str(orig).strip()}")
    err.retryable = retryable
    err.unavailable = True  # (the server went away, or dropped us: an outage to ride out)
    return err


_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03"})
"""SQLSTATEs of a server ending the session (terminated, shutting down, starting up)."""


def ended_by_server(exc: BaseException) -> bool:
    """Whether the server said it ended the session behind ``exc`` (a terminated
    backend, a shutdown): then the statement in flight did not commit. A bare
    end of the connection (no SQLSTATE: a crash, a network cut) says nothing."""
    seen: BaseException | None = exc
    while seen is not None:
        orig = seen.orig if isinstance(seen, DBAPIError) and seen.orig is not None else seen
        if getattr(orig, "sqlstate", None) in _SESSION_ENDED:
            return True
        seen = seen.__cause__
    return False


def in_doubt(exc: StorageError) -> StorageError:
    """``exc`` for a statement outside a transaction (autocommit) whose connection was
    lost after it was sent: it may have committed, so it is not run again."""
    err = StorageError(
        f"{exc} (the write may or may not have been stored; it is not retried, as it "
        "could then be applied twice: a fingerprint makes submitting it again safe)"
    )
    err.unavailable = exc.unavailable
    return err


def translate_error(exc: BaseException, where: str, *, retryable: bool = True) -> TaskdbError:
    """Map a driver exception to the taskdb error tree.

    A lost connection before COMMIT means the transaction was rolled back: the
    resulting :class:`StorageError` is marked ``retryable``.
    """
    if isinstance(exc, TaskdbError):
        return exc
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        # raised while encoding a parameter (``dumps`` says which value is not JSON)
        if isinstance(exc.orig, TaskdbError):
            return exc.orig
        if isinstance(exc.orig, TypeError | ValueError):
            return InvalidJobInput(f"value is not JSON: {exc.orig}")
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return connection_lost(exc.orig or exc, where, retryable=retryable)
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    detail = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    if is_missing_table(orig):
        return SchemaOutOfDate(
            f"database {where} has no up-to-date taskdb schema ({detail}): run `taskdb migrate`"
        )
    if isinstance(orig, psycopg.errors.DataError | sqlite3.DataError):
        return InvalidJobInput(f"value rejected by the database: {detail}")
    if isinstance(orig, psycopg.OperationalError | OSError | sqlite3.OperationalError):
        err = StorageError(f"database {where} unavailable: {detail}")
        err.unavailable = _unreachable(orig)
        err.retryable = err.unavailable and retryable  # (before COMMIT: rolled back)
        return err
    return StorageError(f"database error on {where}: {detail}")


def _unreachable(orig: BaseException) -> bool:
    """A failure to reach the server: no connection (no SQLSTATE), a connection
    exception (class 08) or operator intervention (57: shutting down, starting up).
    Not a statement's own failure (a lock or statement timeout), nor SQLite's
    OperationalError (a locked or read-only file)."""
    if isinstance(orig, OSError):
        return True
    if not isinstance(orig, psycopg.OperationalError):
        return False
    state = orig.sqlstate
    return state is None or state.startswith(("08", "57"))


def is_missing_table(exc: BaseException) -> bool:
    """Whether ``exc`` says a table does not exist (on either database)."""
    text = str(exc).lower()
    return "no such table" in text or ("relation" in text and "does not exist" in text)


def reconnecting(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """The reconnect policy of every store: a method (or a step) that runs one
    transaction runs once more if its connection died before COMMIT (the pool
    has been refreshed by then). Anything else propagates at once."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except StorageError as exc:
            if not exc.retryable:
                raise
            return await method(*args, **kwargs)

    return wrapper


def reconnecting_sync(method: Callable[P, R]) -> Callable[P, R]:
    """:func:`reconnecting` for a step of the synchronous engine."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except StorageError as exc:
            if not exc.retryable:
                raise
            return method(*args, **kwargs)

    return wrapper


async def riding_out(
    call: Callable[[], Awaitable[R]],
    until: float | None,
    *,
    first_delay: float = 0.05,
    max_delay: float = 2.0,
) -> R:
    """``call()``, called again after each :class:`StorageError` with exponential
    backoff (``first_delay`` doubling up to ``max_delay``) until
    ``time.monotonic()`` passes ``until`` (``None``: called once); the last error
    propagates. Rides out an outage longer than :func:`reconnecting` does."""
    delay = first_delay
    while True:
        try:
            return await call()
        except StorageError as exc:
            if until is None or time.monotonic() + delay > until:
                raise
            retry_level(exc)  # an outage is announced once, by the database's log
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached (see :class:`OutageLog`)."""
    return isinstance(exc, StorageError) and exc.unavailable


def retry_level(exc: BaseException) -> int:
    """The level at which a loop that retries logs ``exc``: DEBUG for an outage
    (the database's :class:`OutageLog` says it once, now), WARNING for anything else."""
    if not is_outage(exc):
        return logging.WARNING
    outages = getattr(exc, "_taskdb_outages", None)
    if isinstance(outages, OutageLog):
        outages.announce(exc)
    return logging.DEBUG


def _outlasted(exc: StorageError, pause: float, deadline: float | None, write: bool) -> bool:
    if not exc.unavailable or (write and not exc.retryable):
        return True
    return deadline is not None and time.monotonic() + pause > deadline


async def outlast(
    step: Callable[[], Awaitable[R]],
    pause: float,
    deadline: float | None = None,
    *,
    write: bool = False,
) -> R:
    """``await step()`` (one transaction), again every ``pause`` seconds while the
    database cannot be reached; the outage's error propagates once ``deadline``
    (``time.monotonic()``) would pass. ``write=True``: only while the failed
    transaction certainly rolled back (``retryable``), so nothing applies twice."""
    while True:
        try:
            return await step()
        except StorageError as exc:
            if _outlasted(exc, pause, deadline, write):
                raise
            retry_level(exc)
        await asyncio.sleep(pause)


def outlast_sync(read: Callable[[], R], pause: float, deadline: float | None = None) -> R:
    """:func:`outlast` of a read, for synchronous code."""
    while True:
        try:
            return read()
        except StorageError as exc:
            if _outlasted(exc, pause, deadline, False):
                raise
            retry_level(exc)
        time.sleep(pause)


class OutageLog:
    """The outages of one database. :meth:`failed` (every failed transaction)
    notes one silently and marks the error as belonging to it; a loop that
    retries announces it (:func:`retry_level`): a WARNING, once per outage. The
    first success ``settle`` seconds or more after the last failure ends the
    outage, with an INFO if it was announced. (While a server shuts down,
    connections already open still answer for a moment: those successes do not
    end it.) A one-shot command that fails logs nothing here: its error says it.
    Thread-safe; :meth:`up` costs one attribute read while the database is up."""

    def __init__(self, where: str, settle: float = 1.0) -> None:
        self._where = where
        self._settle = settle
        self._since: float | None = None  # monotonic time the outage began
        self._last = 0.0  # monotonic time of its last failure
        self._failures = 0
        self._announced = False
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        """Note a failed transaction (only an outage counts)."""
        if not is_outage(exc):
            return
        exc._taskdb_outages = self  # type: ignore[attr-defined]
        with self._lock:
            self._failures += 1
            self._last = time.monotonic()
            if self._since is None:
                self._since = self._last

    def announce(self, exc: BaseException) -> None:
        """Log the outage ``exc`` belongs to, unless it was already."""
        with self._lock:
            if self._announced or self._since is None:
                return
            self._announced = True
        log.warning("%s; retrying until it is back", exc)

    def up(self) -> None:
        """Note a success; the first after an announced outage (and ``settle``) is logged."""
        if self._since is None:
            return
        with self._lock:
            now = time.monotonic()
            since, failures, announced = self._since, self._failures, self._announced
            if since is None or now - self._last < self._settle:
                return
            self._since, self._failures, self._announced = None, 0, False
        if announced:
            log.info(
                "database %s is back after %.1fs (%d failed attempts)",
                self._where,
                now - since,
                failures,
            )
