"""The database handle: URL handling, engines, transactions and the error boundary.

Every statement taskdb runs goes through :meth:`Database.transaction`, which
is the one place where driver exceptions become :class:`TaskdbError`\\ s.
PostgreSQL pools do not ping on checkout (a round trip per transaction): a
connection found dead is reported as a retryable :class:`StorageError` and
the pool is invalidated, and :mod:`taskdb.store.jobs` retries once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal

import psycopg
from psycopg.rows import TupleRow
from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    NoSuchModuleError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from taskdb import settings
from taskdb.errors import (
    ConfigurationError,
    InvalidJobInput,
    SchemaOutOfDate,
    StorageError,
    TaskdbError,
)
from taskdb.store import migrate as _migrate
from taskdb.store.notify import Listener
from taskdb.store.schema import VERSION_TABLE

Dialect = Literal["postgresql", "sqlite"]

_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    SQLAlchemyError,
    sqlite3.Error,
    psycopg.Error,
    OSError,
)


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def dumps(value: Any) -> str:
    """The JSON encoding used for every JSON column (strict: no NaN, no infinities)."""
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise InvalidJobInput(f"value is not JSON: {exc}") from exc


def _parse_url(raw: str) -> tuple[URL, Dialect]:
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(f"invalid database URL {raw!r}: {exc}") from exc
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg"), "postgresql"
    if backend == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise ConfigurationError(
                "taskdb needs an SQLite file (several processes share it), not an in-memory "
                "database: use sqlite:///path/to/file.sqlite3"
            )
        return url.set(drivername="sqlite+aiosqlite"), "sqlite"
    raise ConfigurationError(
        f"unsupported database {backend!r} in URL: use postgresql://... or sqlite:///file"
    )


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
    lowered = detail.lower()
    if "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered):
        return SchemaOutOfDate(
            f"database {where} has no up-to-date taskdb schema ({detail}): run `taskdb migrate`"
        )
    if isinstance(orig, psycopg.errors.DataError | sqlite3.DataError):
        return InvalidJobInput(f"value rejected by the database: {detail}")
    if isinstance(orig, psycopg.OperationalError | OSError | sqlite3.OperationalError):
        return StorageError(f"database {where} unavailable: {detail}")
    return StorageError(f"database error on {where}: {detail}")


class Database:
    """A taskdb database: PostgreSQL in production, an SQLite file embedded.

    Create one with :func:`taskdb.connect`. Async engines are made lazily, one
    per event loop. Use it as a context manager (sync or async) or call
    :meth:`close` / :meth:`aclose`.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        pool_size: int = 10,
        echo: bool = False,
        sqlite_busy_timeout: float = settings.SQLITE_BUSY_TIMEOUT_SECONDS,
        sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        listen: bool | None = None,
    ) -> None:
        self._url, self.dialect = _parse_url(settings.resolve_url(url))
        self.safe_url = self._url.render_as_string(hide_password=True)
        self._pool_size = pool_size
        self._echo = echo
        self._busy_ms = int(sqlite_busy_timeout * 1000)
        if sqlite_synchronous not in ("NORMAL", "FULL"):
            raise ConfigurationError("sqlite_synchronous must be 'NORMAL' or 'FULL'")
        self._synchronous = sqlite_synchronous
        # One engine per (event loop, autocommit); PostgreSQL single-statement work
        # uses a pool whose connections are born in autocommit mode.
        self._engines: dict[tuple[asyncio.AbstractEventLoop, bool], AsyncEngine] = {}
        self._schema_ok = False
        self.listen = self.dialect == "postgresql" and settings.resolve_listen(listen)
        """Whether waits wake on PostgreSQL NOTIFY (else they only poll)."""
        self._listeners: dict[asyncio.AbstractEventLoop, Listener] = {}

    def __repr__(self) -> str:
        return f"Database({self.safe_url!r})"

    # -- engines ----------------------------------------------------------------

    def _configure_sqlite(self, engine: Engine) -> None:
        busy_ms, synchronous = self._busy_ms, self._synchronous

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # taskdb emits BEGIN itself (below) so that writers take the lock up front.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # BEGIN IMMEDIATE waits on the busy timeout; a deferred transaction that
            # later upgrades to a writer fails with "database is locked" instead.
            write = conn.get_execution_options().get("taskdb_write", True)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    def _engine(self, autocommit: bool = False) -> AsyncEngine:
        loop = asyncio.get_running_loop()
        engine = self._engines.get((loop, autocommit))
        if engine is None:
            for key in [k for k in self._engines if k[0].is_closed()]:
                self._engines.pop(key).sync_engine.dispose(close=False)
            options: dict[str, Any] = {"echo": self._echo, "json_serializer": dumps}
            if self.dialect == "postgresql":
                options.update(pool_size=self._pool_size, max_overflow=self._pool_size * 2)
                options.update(pool_pre_ping=False, pool_reset_on_return=None)
                if autocommit:
                    options.update(isolation_level="AUTOCOMMIT")
            else:
                options.update(connect_args={"timeout": self._busy_ms / 1000})
            engine = create_async_engine(self._url, **options)
            if self.dialect == "sqlite":
                self._configure_sqlite(engine.sync_engine)
            self._engines[loop, autocommit] = engine
        return engine

    def listener(self) -> Listener | None:
        """This event loop's LISTEN connection (opened on first watch), or ``None``
        when waits can only poll: SQLite, or ``listen=False`` / ``TASKDB_LISTEN=0``."""
        if not self.listen:
            return None
        loop = asyncio.get_running_loop()
        listener = self._listeners.get(loop)
        if listener is None:
            for closed in [k for k in self._listeners if k.is_closed()]:
                del self._listeners[closed]  # its task died with its loop
            listener = self._listeners[loop] = Listener(
                self._listen_connection, lambda exc: str(translate_error(exc, self.safe_url))
            )
        return listener

    async def _listen_connection(self) -> psycopg.AsyncConnection[TupleRow]:
        """A new connection outside the pools, for LISTEN."""
        _args, params = self._engine().dialect.create_connect_args(self._url)
        params.setdefault("application_name", f"taskdb-listen:{os.getpid()}")
        params.setdefault("connect_timeout", 10)
        return await psycopg.AsyncConnection.connect(**params, autocommit=True)

    @asynccontextmanager
    async def transaction(
        self, *, write: bool = True, atomic: bool = True
    ) -> AsyncIterator[AsyncConnection]:
        """A connection inside one transaction, committed on success.

        ``write=False`` lets SQLite readers run beside the writer.
        ``atomic=False`` says each statement of the body stands alone: on
        PostgreSQL they then run in autocommit mode, saving the BEGIN and COMMIT
        round trips. Driver errors raised inside become :class:`TaskdbError`.
        """
        try:
            if not self._schema_ok:
                await self._check_schema()
            if not atomic and self.dialect == "postgresql":
                async with self._engine(autocommit=True).connect() as conn:
                    yield conn
                return
            async with self._engine().connect() as conn:
                if not write:
                    await conn.execution_options(taskdb_write=False)
                transaction = await conn.begin()
                try:
                    yield conn
                except BaseException:
                    with contextlib.suppress(*_DRIVER_ERRORS):
                        await transaction.rollback()
                    raise
                try:
                    await transaction.commit()
                except _DRIVER_ERRORS as exc:
                    # The commit may or may not have happened: never retried.
                    raise translate_error(exc, self.safe_url, retryable=False) from exc
        except _DRIVER_ERRORS as exc:
            raise translate_error(exc, self.safe_url) from exc

    async def _check_schema(self) -> None:
        async with self._engine().connect() as conn:
            await conn.execution_options(taskdb_write=False)
            try:
                async with conn.begin():
                    found = (
                        await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
                    ).scalar()
            except DBAPIError as exc:
                if "no such table" in str(exc) or "does not exist" in str(exc):
                    found = None
                else:
                    raise
        expected = _migrate.head_revision()
        if found != expected:
            state = f"at revision {found}" if found else "not migrated"
            raise SchemaOutOfDate(
                f"database {self.safe_url} is {state}; taskdb needs revision {expected}: "
                "run `taskdb migrate`"
            )
        self._schema_ok = True

    # -- migrations (plain calls) -----------------------------------------------

    @contextmanager
    def _sync_connection(self) -> Iterator[Any]:
        url = self._url.set(
            drivername="sqlite" if self.dialect == "sqlite" else self._url.drivername
        )
        try:
            engine = create_engine(url)
        except NoSuchModuleError as exc:  # pragma: no cover - broken install
            raise ConfigurationError(str(exc)) from exc
        try:
            with engine.begin() as conn:
                if self.dialect == "postgresql":
                    # Serialize concurrent `migrate` runs (several workers starting at once).
                    conn.execute(text("SELECT pg_advisory_xact_lock(7340017)"))
                yield conn
        except _DRIVER_ERRORS as exc:
            raise translate_error(exc, self.safe_url) from exc
        finally:
            engine.dispose()

    def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to ``revision`` (Alembic head by default)."""
        with self._sync_connection() as conn:
            _migrate.upgrade(conn, revision)
        self._schema_ok = False

    def downgrade(self, revision: str) -> None:
        """Downgrade the schema to ``revision`` (``"base"`` drops every taskdb table)."""
        with self._sync_connection() as conn:
            _migrate.downgrade(conn, revision)
        self._schema_ok = False

    def schema_revision(self) -> str | None:
        """The revision the database is at, or ``None`` when it was never migrated."""
        with self._sync_connection() as conn:
            try:
                with conn.begin_nested():
                    found = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
                    return None if found is None else str(found)
            except DBAPIError:
                return None

    # -- lifecycle --------------------------------------------------------------

    async def aclose(self) -> None:
        """Release every pooled connection (call from async code)."""
        listeners, self._listeners = self._listeners, {}
        for loop, listener in listeners.items():
            if loop is asyncio.get_running_loop():
                await listener.aclose()
        engines, self._engines = self._engines, {}
        for (loop, _), engine in engines.items():
            if loop is asyncio.get_running_loop():
                await engine.dispose()
            else:
                engine.sync_engine.dispose(close=False)

    def close(self) -> None:
        """Release every pooled connection (call from sync code, outside an event loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise TaskdbError(
                "Database.close() inside a running event loop: use `await db.aclose()`"
            )
        listeners, self._listeners = self._listeners, {}
        for loop, listener in listeners.items():
            if not loop.is_closed():
                loop.run_until_complete(listener.aclose())
        engines, self._engines = self._engines, {}
        for (loop, _), engine in engines.items():
            if loop.is_closed():
                engine.sync_engine.dispose(close=False)
            else:
                loop.run_until_complete(engine.dispose())

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def connect(url: str | None = None, **options: Any) -> Database:
    """Open a taskdb database.

    ``url`` is a SQLAlchemy URL; default ``$TASKDB_URL``, else
    ``sqlite:///taskdb.sqlite3``. ``postgresql://`` uses psycopg 3. The schema
    is never changed implicitly: call :meth:`Database.migrate` (or run
    ``taskdb migrate``) once; using a database behind head raises
    :class:`SchemaOutOfDate`. On PostgreSQL, waits wake on NOTIFY through one
    extra connection per process and event loop; ``listen=False`` (or
    ``TASKDB_LISTEN=0``) makes them poll only, e.g. behind PgBouncer in
    transaction mode.
    """
    return Database(url, **options)
