"""The database handle: URL handling, engines, transactions and migrations.

Every statement taskdb runs goes through :meth:`Database.transaction`, the
one place where driver exceptions become :class:`TaskdbError`\\ s
(:mod:`taskdb.store.errors`). What PostgreSQL and SQLite do differently is
``db.backend``, a :class:`~taskdb.store.dialect.Dialect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any, Literal, TypeVar

import psycopg
from psycopg.rows import TupleRow
from sqlalchemy import URL, Connection, Engine, create_engine, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from taskdb import settings
from taskdb.errors import ConfigurationError, SchemaOutOfDate, StorageError, TaskdbError
from taskdb.store import migrate as _migrate
from taskdb.store import postgres, sqlite
from taskdb.store.dialect import ConnectOptions, Dialect, DialectName
from taskdb.store.errors import (
    DRIVER_ERRORS,
    OutageLog,
    ended_by_server,
    in_doubt,
    is_missing_table,
    reconnecting,
    reconnecting_sync,
    translate_error,
)
from taskdb.store.notify import Listener
from taskdb.store.params import dumps
from taskdb.store.plans import EXTRACT, Drive, PlanCall
from taskdb.store.schema import VERSION_TABLE

T = TypeVar("T")

_REVISION = text(f"SELECT version_num FROM {VERSION_TABLE}")

_DIALECTS: dict[str, Dialect] = {
    "postgresql": postgres.DIALECT,
    "postgres": postgres.DIALECT,
    "sqlite": sqlite.DIALECT,
}


def _parse_url(raw: str) -> tuple[URL, Dialect]:
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(f"invalid database URL {raw!r}: {exc}") from exc
    backend = _DIALECTS.get(url.get_backend_name())
    if backend is None:
        raise ConfigurationError(
            f"unsupported database {url.get_backend_name()!r} in URL: use postgresql://... "
            "or sqlite:///file"
        )
    return backend.async_url(url), backend


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _read_revision(conn: Connection) -> str | None:
    """The schema revision, ``None`` when the database was never migrated."""
    try:
        with conn.begin_nested() if conn.in_transaction() else conn.begin():
            found = conn.execute(_REVISION).scalar()
    except DBAPIError as exc:
        if not is_missing_table(exc):
            raise
        return None
    return None if found is None else str(found)


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
        listen_url: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self._url, self.backend = _parse_url(settings.resolve_url(url))
        self.dialect: DialectName = self.backend.name
        """``"postgresql"`` or ``"sqlite"``."""
        self.safe_url = self._url.render_as_string(hide_password=True)
        if sqlite_synchronous not in ("NORMAL", "FULL"):
            raise ConfigurationError("sqlite_synchronous must be 'NORMAL' or 'FULL'")
        self._options = ConnectOptions(
            pool_size, echo, sqlite_busy_timeout, sqlite_synchronous, connect_timeout
        )
        # One engine per (event loop, autocommit): statements that stand alone use a
        # pool whose connections are born in autocommit mode (PostgreSQL).
        self._engines: dict[tuple[asyncio.AbstractEventLoop, bool], AsyncEngine] = {}
        self._sync_engines: dict[bool, Engine] = {}  # the sync client's, by autocommit
        self._sync_lock = threading.Lock()
        self._schema_ok = False
        self.listen = self.backend.listens and settings.resolve_listen(listen)
        """Whether waits wake on PostgreSQL NOTIFY (else they only poll)."""
        self._listen_url = self._url
        raw_listen_url = settings.resolve_listen_url(listen_url)
        if self.listen and raw_listen_url:
            self._listen_url, backend = _parse_url(raw_listen_url)
            if backend is not self.backend:
                raise ConfigurationError("the LISTEN URL must be a postgresql:// URL")
        self._listeners: dict[asyncio.AbstractEventLoop, Listener] = {}
        self.outages = OutageLog(self.safe_url)
        """Logs each outage of this database once (see :class:`OutageLog`)."""

    def __repr__(self) -> str:
        return f"Database({self.safe_url!r})"

    # -- engines ----------------------------------------------------------------

    def _engine(self, autocommit: bool = False) -> AsyncEngine:
        loop = asyncio.get_running_loop()
        engine = self._engines.get((loop, autocommit))
        if engine is None:
            for key in [k for k in self._engines if k[0].is_closed()]:
                self._engines.pop(key).sync_engine.dispose(close=False)
            options = self.backend.engine_options(self._options, autocommit=autocommit)
            engine = create_async_engine(
                self._url, echo=self._options.echo, json_serializer=dumps, **options
            )
            self.backend.configure_engine(engine.sync_engine, self._options)
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
                self._listen_connection,
                lambda exc: translate_error(exc, self.safe_url),
                self.outages,
            )
        return listener

    async def _listen_connection(self) -> psycopg.AsyncConnection[TupleRow]:
        return await self.backend.listen_connection(self._engine().sync_engine, self._listen_url)

    def _sync_engine(self, autocommit: bool = False) -> Engine:
        """The synchronous engine (thread-safe pool) of the sync client, made on first use."""
        engine = self._sync_engines.get(autocommit)
        if engine is None:
            with self._sync_lock:
                engine = self._sync_engines.get(autocommit)
                if engine is None:
                    options = self.backend.engine_options(self._options, autocommit=autocommit)
                    engine = create_engine(
                        self.backend.sync_url(self._url),
                        echo=self._options.echo,
                        json_serializer=dumps,
                        **options,
                    )
                    self.backend.configure_engine(engine, self._options)
                    self._sync_engines[autocommit] = engine
        return engine

    # -- plans: store logic both engines run ------------------------------------

    @reconnecting
    async def run(self, call: PlanCall[T]) -> T:
        """Run a plan on this event loop's engine, in one transaction (see
        :mod:`taskdb.store.plans`); once more if the connection died before COMMIT."""
        sent = False
        try:
            async with self.transaction(write=call.write, atomic=call.atomic) as conn:
                drive = Drive(call)
                while (step := drive.next()) is not None:
                    sent = True
                    if step.fetch == "recorded":
                        drive.result = await self.backend.run_recorded(
                            conn, step.stmt, step.values, self.safe_url
                        )
                    else:
                        result = await conn.execute(step.stmt, step.values)
                        drive.result = EXTRACT[step.fetch](result)
                return drive.value
        except StorageError as exc:
            if sent and self._in_doubt(call, exc):
                raise in_doubt(exc) from exc
            raise

    @reconnecting_sync
    def run_sync(self, call: PlanCall[T]) -> T:
        """:meth:`run` on the synchronous engine, from any thread (it never touches
        an event loop)."""
        sent = False
        try:
            with self.sync_transaction(write=call.write, atomic=call.atomic) as conn:
                drive = Drive(call)
                while (step := drive.next()) is not None:
                    sent = True
                    if step.fetch == "recorded":
                        drive.result = self.backend.run_recorded_sync(conn, step.stmt, step.values)
                    else:
                        drive.result = EXTRACT[step.fetch](conn.execute(step.stmt, step.values))
                return drive.value
        except StorageError as exc:
            if sent and self._in_doubt(call, exc):
                raise in_doubt(exc) from exc
            raise

    def _in_doubt(self, call: PlanCall[Any], exc: StorageError) -> bool:
        """Whether ``exc``, raised once ``call`` sent a statement, leaves a write that
        must not run twice in doubt: it ran alone, outside a transaction, and its
        connection was lost without the server saying it rolled back."""
        return (
            exc.retryable
            and not call.repeatable
            and not call.atomic
            and self.backend.standalone_statements
            and not ended_by_server(exc)
        )

    @contextmanager
    def sync_transaction(self, *, write: bool = True, atomic: bool = True) -> Iterator[Connection]:
        """:meth:`transaction` on the synchronous engine."""
        committing = False
        try:
            if not self._schema_ok:
                self._check_schema_sync()
            standalone = not atomic and self.backend.standalone_statements
            with self._sync_engine(autocommit=standalone).connect() as conn:
                if not write:
                    conn = conn.execution_options(taskdb_write=False)
                with conn.begin():
                    yield conn
                    committing = True  # the commit may or may not happen: never retried
        except DRIVER_ERRORS as exc:
            err = translate_error(exc, self.safe_url, retryable=not committing)
            self.outages.failed(err)
            raise err from exc
        self.outages.up()

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
        standalone = not atomic and self.backend.standalone_statements
        async with self._connection(autocommit=standalone) as conn:
            if standalone:
                yield conn
                return
            if not write:
                await conn.execution_options(taskdb_write=False)
            transaction = await conn.begin()
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(*DRIVER_ERRORS):
                    await transaction.rollback()
                raise
            try:
                await transaction.commit()
            except DRIVER_ERRORS as exc:
                # The commit may or may not have happened: never retried.
                raise translate_error(exc, self.safe_url, retryable=False) from exc

    def connection(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A pooled connection with no transaction begun, for a dialect that runs a
        whole transaction in one call on its driver connection (SQLite's
        :meth:`~taskdb.store.dialect.Dialect.run_writes`). As in :meth:`transaction`,
        driver errors raised inside become :class:`TaskdbError`."""
        return self._connection()

    @asynccontextmanager
    async def _connection(self, autocommit: bool = False) -> AsyncIterator[AsyncConnection]:
        try:
            if not self._schema_ok:
                await self._check_schema()
            async with self._engine(autocommit=autocommit).connect() as conn:
                yield conn
            self.outages.up()
        except DRIVER_ERRORS as exc:
            err = translate_error(exc, self.safe_url)
            self.outages.failed(err)
            raise err from exc
        except StorageError as exc:
            self.outages.failed(exc)
            raise

    async def check(self) -> None:
        """Connect and check the schema now (a worker does before it claims anything):
        :class:`StorageError` when the database cannot be reached within the connect
        timeout, :class:`SchemaOutOfDate` when it is behind head."""
        self._schema_ok = False
        try:
            await self._check_schema()
        except DRIVER_ERRORS as exc:
            raise translate_error(exc, self.safe_url) from exc

    async def _check_schema(self) -> None:
        async with self._engine().connect() as conn:
            await conn.execution_options(taskdb_write=False)
            try:
                async with conn.begin():
                    found = (await conn.execute(_REVISION)).scalar()
            except DBAPIError as exc:
                if not is_missing_table(exc):
                    raise
                found = None
        self._accept_revision(found)

    def _check_schema_sync(self) -> None:
        with self._sync_engine().connect() as conn:
            self._accept_revision(_read_revision(conn))

    def _accept_revision(self, found: str | None) -> None:
        """Remember that the schema is at head, or raise :class:`SchemaOutOfDate`."""
        expected = _migrate.head_revision()
        if found != expected:
            state = f"at revision {found}" if found else "not migrated"
            remedy = (
                "upgrade taskdb (a newer one migrated it)"
                if found is not None and found not in _migrate.revisions()
                else "run `taskdb migrate`"
            )
            raise SchemaOutOfDate(
                f"database {self.safe_url} is {state}; taskdb needs revision {expected}: {remedy}"
            )
        self._schema_ok = True

    # -- migrations (plain calls) -----------------------------------------------

    @contextmanager
    def _sync_connection(self) -> Iterator[Any]:
        try:
            engine = create_engine(self.backend.sync_url(self._url))
            self.backend.configure_engine(engine, self._options)
        except NoSuchModuleError as exc:  # pragma: no cover - broken install
            raise ConfigurationError(str(exc)) from exc
        try:
            with engine.begin() as conn:
                self.backend.lock_migrations(conn)
                yield conn
        except DRIVER_ERRORS as exc:
            raise translate_error(exc, self.safe_url) from exc
        finally:
            engine.dispose()

    def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to ``revision`` (Alembic head by default); an unknown
        revision, or one behind the database's, is a :class:`ConfigurationError`."""
        with self._sync_connection() as conn:
            _migrate.upgrade(conn, revision, _read_revision(conn))
        self._schema_ok = False

    def downgrade(self, revision: str) -> None:
        """Downgrade the schema to ``revision`` (``"base"`` drops every taskdb table);
        an unknown revision, or one ahead of the database's, is a :class:`ConfigurationError`."""
        with self._sync_connection() as conn:
            _migrate.downgrade(conn, revision, _read_revision(conn))
        self._schema_ok = False

    def schema_revision(self) -> str | None:
        """The revision the database is at, or ``None`` when it was never migrated."""
        with self._sync_connection() as conn:
            return _read_revision(conn)

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
        self._dispose_sync_engines()

    def _dispose_sync_engines(self) -> None:
        engines, self._sync_engines = self._sync_engines, {}
        for engine in engines.values():
            engine.dispose()

    def close(self) -> None:
        """Release every pooled connection (call from sync code, outside an event loop)."""
        if _loop_running():
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
        self._dispose_sync_engines()

    def __enter__(self) -> Database:
        """Refused inside a running event loop (the exit would have to block it):
        use ``async with`` there."""
        if _loop_running():
            raise TaskdbError("`with Database` inside a running event loop: use `async with`")
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
    extra connection per process and event loop, to ``listen_url`` (default
    ``$TASKDB_LISTEN_URL``, else ``url``); ``listen=False`` (or
    ``TASKDB_LISTEN=0``) makes them poll only. Behind PgBouncer in transaction
    mode: ``?prepare_threshold=none`` in ``url`` and ``listen_url`` a direct
    connection to PostgreSQL (or ``listen=False``).
    """
    return Database(url, **options)
