"""Hot statements run on the driver connection beneath SQLAlchemy's pool.

SQLAlchemy builds and compiles every statement taskdb runs. For the queue's
recorded writes (a busy worker runs a claim and a finish per batch) its
per-execution work — execution context, parameter and result processing, the
cursor adapter — cost as much client CPU as psycopg itself (measured: about
1.5 ms of 3 ms for a 32-job claim on a 2-core machine). A
:class:`DriverStatement` is compiled once with the engine's dialect and runs
through the pooled connection's driver connection (psycopg here; sqlite3 in
:mod:`taskdb.store.sqlite`), applying the same bind and result processors
SQLAlchemy would.
"""

from __future__ import annotations

import asyncio
from collections import namedtuple
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy import CompoundSelect, Select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.types import TypeEngine

from taskdb.store.errors import connection_lost
from taskdb.store.schema import UtcDateTime

Processor = Callable[[Any], Any]
TypeRule = Callable[[TypeEngine[Any], Dialect], Processor | None]
"""The processor of a value of a type (a bind or a result processor)."""


def _bind_processor(type_: TypeEngine[Any], dialect: Dialect) -> Processor | None:
    return type_.bind_processor(dialect)


def _result_processor(type_: TypeEngine[Any], dialect: Dialect) -> Processor | None:
    # Sessions run in UTC (PostgresDialect.configure_engine): psycopg returns
    # timestamps in datetime.UTC already, as UtcDateTime's processor would.
    if isinstance(type_, UtcDateTime):
        return None
    return type_.result_processor(dialect, None)


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
    """A compiled statement (a SELECT, a data-modifying CTE, an UPDATE .. RETURNING)
    and how to bind it."""

    sql: str  # with the driver's positional placeholders ($n for psycopg)
    order: tuple[str, ...]  # the bind parameter of each placeholder
    fixed: dict[str, Any]  # values the statement carries (literals), already processed
    binds: tuple[tuple[str, Processor], ...]  # processors of the caller's values
    row: Any  # a namedtuple class named after the selected columns
    results: tuple[tuple[int, Processor], ...]  # result processors by column index

    @classmethod
    def compile(
        cls,
        stmt: Select[Any] | CompoundSelect[Any] | UpdateBase,
        dialect: Dialect,
        *,
        paramstyle: str = "numeric_dollar",
        bind_processor: TypeRule = _bind_processor,
        result_processor: TypeRule = _result_processor,
    ) -> DriverStatement:
        """Compile for ``dialect`` (the processors ``bind_processor`` and
        ``result_processor`` give its types), with positional placeholders:
        ``$n`` by default, which psycopg sends as is (no per-execution
        placeholder parsing, which it caches only for statements shorter than
        4 KiB)."""
        positional: Dialect = cast(Any, type(dialect))(paramstyle=paramstyle)
        compiled = stmt.compile(dialect=positional)
        assert compiled.positiontup is not None
        fixed: dict[str, Any] = {}
        binds: list[tuple[str, Processor]] = []
        bound: set[str] = set()
        for bind, name in compiled.bind_names.items():
            if bind.expanding:  # rendered per execution by SQLAlchemy only
                raise TypeError(f"driver statements take no expanding IN ({name})")
            process = bind_processor(bind.type, dialect)
            if bind.required:
                if process is not None and name not in bound:  # once per name
                    binds.append((name, process))
                    bound.add(name)
            else:
                fixed[name] = bind.value if process is None else process(bind.value)
        columns = list(stmt.exported_columns)
        results = []
        for i, col in enumerate(columns):
            process = result_processor(col.type, dialect)
            if process is not None:
                results.append((i, process))
        row = namedtuple("Row", [c.name for c in columns])  # type: ignore[misc]
        order = tuple(compiled.positiontup)
        return cls(compiled.string, order, fixed, tuple(binds), row, tuple(results))

    def parameters(self, values: dict[str, Any]) -> list[Any]:
        """The statement's positional parameters for ``values`` (its bind values by name)."""
        named = self.fixed | values
        for name, process in self.binds:
            named[name] = process(named[name])
        return [named[name] for name in self.order]

    def rows(self, raw: Iterable[Sequence[Any]]) -> list[Any]:
        """The driver's rows with the result processors applied (attribute access like
        SQLAlchemy rows, ``_asdict()`` for a mapping)."""
        make = self.row._make
        if not self.results:
            return [make(r) for r in raw]
        rows = []
        for r in raw:
            values = list(r)
            for i, process in self.results:
                values[i] = process(values[i])
            rows.append(make(values))
        return rows

    async def execute(self, conn: AsyncConnection, values: dict[str, Any], where: str) -> list[Any]:
        """Run on the psycopg connection beneath ``conn`` with ``values`` for the
        statement's bind parameters; returns its rows (see :meth:`rows`).

        A connection found broken is invalidated in the pool and reported as a
        retryable :class:`StorageError`; other driver errors propagate for
        :func:`taskdb.store.errors.translate_error`.
        """
        params = self.parameters(values)
        async with on_driver(conn, where) as driver:
            cursor = psycopg.AsyncRawCursor(driver)
            await cursor.execute(self.sql, params)
            raw = await cursor.fetchall()
        return self.rows(raw)
