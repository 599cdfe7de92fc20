"""Hot PostgreSQL statements run on the psycopg connection beneath SQLAlchemy's pool.

SQLAlchemy builds and compiles every statement taskdb runs. For the queue's
recorded writes (a busy worker runs a claim and a finish per batch) its
per-execution work — execution context, parameter and result processing, the
cursor adapter — cost as much client CPU as psycopg itself (measured: about
1.5 ms of 3 ms for a 32-job claim on a 2-core machine). A
:class:`DriverStatement` is compiled once with the engine's dialect and runs
through the pooled connection's psycopg connection, applying the same bind
and result processors SQLAlchemy would.
"""

from __future__ import annotations

import asyncio
from collections import namedtuple
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy import CompoundSelect, Select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from taskdb.store.errors import connection_lost
from taskdb.store.schema import UtcDateTime

Processor = Callable[[Any], Any]


@asynccontextmanager
async def on_driver(
    conn: AsyncConnection, where: str
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """The psycopg connection beneath ``conn`` (in ``conn``'s transaction, if any).

    A connection found broken meanwhile is invalidated in the pool and reported
    as a retryable :class:`StorageError`; other driver errors propagate for
    :func:`taskdb.store.errors.translate_error`. A connection left in the middle
    of a command by a cancellation (a ``COPY`` cut short) is invalidated too.
    """
    pooled = conn.sync_connection.connection  # type: ignore[union-attr]
    driver = cast(psycopg.AsyncConnection[Any], pooled.driver_connection)
    try:
        yield driver
    except psycopg.Error as exc:
        if driver.broken or driver.closed:
            await conn.invalidate(exc)
            raise connection_lost(exc, where) from exc
        raise
    except asyncio.CancelledError:
        if driver.info.transaction_status == TransactionStatus.ACTIVE:
            await conn.invalidate()
        raise


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """A compiled SELECT (a data-modifying CTE on PostgreSQL) and how to bind it."""

    sql: str  # with PostgreSQL's own $n placeholders
    order: tuple[str, ...]  # the bind parameter of each placeholder
    fixed: dict[str, Any]  # values the statement carries (literals), already processed
    binds: tuple[tuple[str, Processor], ...]  # processors of the caller's values
    row: Any  # a namedtuple class named after the selected columns
    results: tuple[tuple[int, Processor], ...]  # result processors by column index

    @classmethod
    def compile(cls, stmt: Select[Any] | CompoundSelect[Any], dialect: Dialect) -> DriverStatement:
        """Compile for ``dialect`` (its type processors), with ``$n`` placeholders:
        psycopg then sends the SQL as is (no per-execution placeholder parsing,
        which it caches only for statements shorter than 4 KiB)."""
        positional: Dialect = cast(Any, type(dialect))(paramstyle="numeric_dollar")
        compiled = stmt.compile(dialect=positional)
        assert compiled.positiontup is not None
        fixed: dict[str, Any] = {}
        binds: list[tuple[str, Processor]] = []
        for bind, name in compiled.bind_names.items():
            if bind.expanding:  # rendered per execution by SQLAlchemy only
                raise TypeError(f"driver statements take no expanding IN ({name})")
            process = bind.type.bind_processor(dialect)
            if bind.required:
                if process is not None:
                    binds.append((name, process))
            else:
                fixed[name] = bind.value if process is None else process(bind.value)
        columns = list(stmt.selected_columns)
        results = []
        for i, col in enumerate(columns):
            # Sessions run in UTC (PostgresDialect.configure_engine): psycopg returns
            # timestamps in datetime.UTC already, as UtcDateTime's processor would.
            if isinstance(col.type, UtcDateTime):
                continue
            process = col.type.result_processor(dialect, None)
            if process is not None:
                results.append((i, process))
        row = namedtuple("Row", [c.name for c in columns])  # type: ignore[misc]
        order = tuple(compiled.positiontup)
        return cls(compiled.string, order, fixed, tuple(binds), row, tuple(results))

    async def execute(self, conn: AsyncConnection, values: dict[str, Any], where: str) -> list[Any]:
        """Run with ``values`` for the statement's bind parameters; returns its rows
        (attribute access like SQLAlchemy rows, ``_asdict()`` for a mapping).

        A connection found broken is invalidated in the pool and reported as a
        retryable :class:`StorageError`; other driver errors propagate for
        :func:`taskdb.store.errors.translate_error`.
        """
        named = self.fixed | values
        for name, process in self.binds:
            named[name] = process(named[name])
        params = [named[name] for name in self.order]
        async with on_driver(conn, where) as driver:
            cursor = psycopg.AsyncRawCursor(driver)
            await cursor.execute(self.sql, params)
            raw = await cursor.fetchall()
        make = self.row._make
        if not self.results:
            return [make(r) for r in raw]
        rows = []
        for r in raw:
            values_ = list(r)
            for i, process in self.results:
                values_[i] = process(values_[i])
            rows.append(make(values_))
        return rows
