"""The storage error boundary: driver errors become taskdb errors, and the one
reconnect policy every store applies.

Every statement runs inside :meth:`taskdb.store.database.Database.transaction`,
which calls :func:`translate_error` on whatever the driver (psycopg, sqlite3,
SQLAlchemy) raises. A connection found dead before COMMIT means the
transaction rolled back: that :class:`StorageError` is ``retryable``, and
:func:`reconnecting` runs the transaction once more on a fresh connection, so a
database restart costs no caller an error.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
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


def connection_lost(orig: BaseException, where: str, *, retryable: bool = True) -> StorageError:
    """The error for a connection that died (before COMMIT: ``retryable``)."""
    err = StorageError(f"database {where} connection lost: {str(orig).strip()}")
    err.retryable = retryable
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
        return StorageError(f"database {where} unavailable: {detail}")
    return StorageError(f"database error on {where}: {detail}")


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
        except StorageError:
            if until is None or time.monotonic() + delay > until:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)
