"""The one seam between the stores and the two databases.

Everything PostgreSQL and SQLite do differently is a member of :class:`Dialect`,
implemented by :mod:`taskdb.store.postgres` and :mod:`taskdb.store.sqlite`; the
stores, the feed, the schema and the cache build their statements from it and
never look at which database they run on. A :class:`Database` holds its
dialect as ``db.backend``.

Capabilities are flags (``listens``, ``standalone_statements``,
``records_in_one_statement``) so shared code can choose a strategy without
naming a database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import psycopg
from psycopg.rows import TupleRow
from sqlalchemy import URL, ColumnElement, Connection, Engine, FromClause, Row, Select, Table
from sqlalchemy.ext.asyncio import AsyncConnection

from taskdb.core.jobs import ChangeCursor

T = TypeVar("T")

MiB = 1024 * 1024
PIECE_BYTES = MiB
"""A blob writer's default piece: one ``lo_put``, or one chunk row (readers size
their statements by it)."""

DialectName = Literal["postgresql", "sqlite"]


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """How a :class:`~taskdb.store.database.Database` opens connections."""

    pool_size: int = 10
    echo: bool = False
    busy_timeout: float = 60.0
    """SQLite: seconds a writer waits for the write lock."""
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """SQLite: ``PRAGMA synchronous`` (WAL mode)."""
    connect_timeout: float = 10.0
    """PostgreSQL: seconds to wait for a new connection before the database counts
    as unreachable."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """A write that records its changes in the change feed: ``record`` runs after
    ``main`` (with the ids ``main`` returned), or is ``None`` when ``main`` does both.
    Statements are built once per process; :meth:`compiled` keeps what a dialect
    compiled one to for the driver, beside it."""

    main: Any
    record: Any | None
    _compiled: list[Any] = field(default_factory=list, init=False, compare=False, repr=False)

    def compiled(self, compile: Callable[[Recorded, Any], T], dialect: Any) -> T:
        """``compile(self, dialect)``, run on first use only (a statement serves one
        dialect)."""
        if not self._compiled:
            self._compiled.append(compile(self, dialect))
        found: T = self._compiled[0]
        return found


ChangeRows = Callable[[Any, Any], Any]
"""``(changed, where)``: an INSERT of one change row per row of ``changed`` (the jobs
table's columns, or those of the rows a statement changed), restricted by ``where``."""


class Transactions(Protocol):
    """What dialect code may ask of the database it serves."""

    @property
    def safe_url(self) -> str: ...

    def transaction(
        self, *, write: bool = True, atomic: bool = True
    ) -> AbstractAsyncContextManager[AsyncConnection]: ...

    def connection(self) -> AbstractAsyncContextManager[AsyncConnection]: ...


class FeedCursors(Protocol):
    """How a dialect reads the change feed in a gap-free order (see
    :mod:`taskdb.store.feed`). A *position* is a parsed cursor."""

    def parse(self, after: ChangeCursor | int) -> Any:
        """The position of a cursor; :class:`~taskdb.ConfigurationError` if it is not
        one of this database's cursors."""
        ...

    def head(self) -> Select[Any]:
        """A statement whose one value is "now" (see :meth:`head_cursor`)."""
        ...

    def head_cursor(self, value: Any) -> ChangeCursor:
        """The cursor after which only changes committed after :meth:`head` ran follow."""
        ...

    def page(
        self, position: Any, queue: str | None, job_id: int | None, limit: int
    ) -> tuple[Select[Any], dict[str, Any]]:
        """The statement reading up to ``limit`` changes after ``position`` (of
        ``queue``, of job ``job_id`` when given) and its values; its rows are those
        of :func:`taskdb.store.changes.page_of`."""
        ...

    def cursors(
        self, position: Any, rows: Sequence[Any], limit: int
    ) -> tuple[list[tuple[Any, ChangeCursor]], ChangeCursor]:
        """The change rows a page read after ``position``, each with its own cursor,
        and the cursor to read the next page from."""
        ...


class BlobIO(Protocol):
    """Where blob bytes live. ``row`` is a ``taskdb_blobs`` row (``id``, ``oid``,
    ``key``, ``size``): a row with an ``oid`` names a PostgreSQL large object,
    one without keeps its bytes in ``taskdb_blob_chunks`` rows."""

    storages: tuple[str, ...]
    """The storages new blobs may be written to, the default first."""

    def new_oid(self, storage: str) -> Any:
        """The ``oid`` of a new blob row in ``storage`` (a new large object, or NULL)."""
        ...

    def commits_in_flight(self, storage: str) -> int:
        """How many of a writer's commits to ``storage`` may run at once."""
        ...

    async def put(
        self, conn: AsyncConnection, row: Any, offset: int, seq: int, pieces: Sequence[bytes]
    ) -> None:
        """Append ``pieces`` at byte ``offset`` (the ``seq``-th piece on)."""
        ...

    async def relax_commit(self, conn: AsyncConnection) -> None:
        """Make this transaction's commit cheap (an intermediate commit of a stream)."""
        ...

    def read(self, db: Transactions, row: Row[Any], chunk_size: int) -> AsyncIterator[bytes]:
        """The blob's bytes in chunks of at most ``chunk_size``, a few MiB per transaction."""
        ...

    async def drop(self, conn: AsyncConnection, rows: Sequence[Row[Any]]) -> None:
        """Delete the bytes of blob rows just deleted in ``conn``'s transaction."""
        ...


class Dialect(Protocol):
    """What differs between PostgreSQL and SQLite (see the module docstring)."""

    name: DialectName
    listens: bool
    """Waits can wake on notifications (PostgreSQL LISTEN/NOTIFY)."""
    standalone_statements: bool
    """A statement that stands alone needs no transaction (PostgreSQL autocommit)."""
    records_in_one_statement: bool
    """A write and its change records are one statement (data-modifying CTEs)."""
    batch_updates_list_ids: bool
    """A batch update also names its rows' ids as a list (PostgreSQL then finds them
    by primary key; SQLite, joined to that list, would scan the batch once per row)."""
    json_null: ColumnElement[Any]
    """The JSON ``null`` literal of a JSON column."""
    feed: FeedCursors
    blobs: BlobIO

    # -- connections -----------------------------------------------------------------

    def async_url(self, url: URL) -> URL:
        """``url`` with taskdb's async driver; :class:`~taskdb.ConfigurationError`
        when taskdb cannot use it."""
        ...

    def sync_url(self, url: URL) -> URL:
        """``url`` with the synchronous driver (migrations)."""
        ...

    def engine_options(self, options: ConnectOptions, *, autocommit: bool) -> dict[str, Any]:
        """``create_async_engine`` keyword arguments (``autocommit``: for statements
        that stand alone)."""
        ...

    def configure_engine(self, engine: Engine, options: ConnectOptions) -> None:
        """Hook connection setup into a new engine."""
        ...

    def lock_migrations(self, conn: Connection) -> None:
        """Serialize concurrent migrations (several workers starting at once)."""
        ...

    async def listen_connection(
        self, engine: Engine, url: URL
    ) -> psycopg.AsyncConnection[TupleRow]:
        """A new connection outside the pools, for LISTEN (only when ``listens``)."""
        ...

    # -- statements ----------------------------------------------------------------

    def insert(self, table: Table) -> Any:
        """An INSERT construct of ``table`` with ``on_conflict_do_nothing/_update``."""
        ...

    def json_param(self, name: str) -> ColumnElement[Any]:
        """A bind parameter taking JSON *text* (already encoded), read as JSON."""
        ...

    def batch_source(self, names: Sequence[str], param: str = "batch") -> FromClause:
        """A derived table ``v`` with columns ``names``, read from one JSON array bound
        as ``param`` (see :meth:`encode_batch`): a whole batch in one parameter."""
        ...

    def encode_batch(self, rows: Sequence[dict[str, Any]]) -> str:
        """Rows for :meth:`batch_source` as one JSON text."""
        ...

    def embed_json(self, text: str) -> str:
        """A JSON value's text as it is written into a batch of :meth:`encode_batch`."""
        ...

    def id_in(self, col: ColumnElement[Any], param: str = "ids") -> ColumnElement[bool]:
        """``col`` is one of the ids bound as ``param`` (one value, whatever the count)."""
        ...

    async def lock(self, conn: AsyncConnection, key: str) -> None:
        """Hold a lock named ``key`` until the transaction ends (writers of one key
        take turns)."""
        ...

    def recorded(self, dml: Any, changes: ChangeRows) -> Recorded:
        """``dml`` (returning the changed rows) together with the INSERT of its change
        records that ``changes`` builds."""
        ...

    def finish_and_claim(
        self, finished: Any, claimed: Any, record: Callable[[Any, Any], Any]
    ) -> Recorded | None:
        """One statement running both ``finished`` (a batch of outcomes) and ``claimed``
        (a claim), returning a row per claimed job (``finished`` NULL) and one row whose
        ``finished`` is a JSON array of ``[id, status]`` of the outcomes written;
        ``record(finished_cols, claimed_cols)`` builds the INSERT of their change rows.
        ``None`` when the dialect cannot (the store then runs them one after the other)."""
        ...

    async def run_recorded(
        self, conn: AsyncConnection, stmt: Recorded, values: dict[str, Any], where: str
    ) -> list[Any]:
        """Run a :class:`Recorded` write; returns the changed rows (attribute access,
        ``_asdict()``)."""
        ...

    async def run_writes(
        self, db: Transactions, writes: Sequence[tuple[Recorded, dict[str, Any]]], *, atomic: bool
    ) -> list[list[Any]]:
        """Run :class:`Recorded` writes one after the other in one write transaction of
        their own (``atomic=False``: one write that may stand alone); returns the
        changed rows of each."""
        ...

    def run_recorded_sync(
        self, conn: Connection, stmt: Recorded, values: dict[str, Any]
    ) -> list[Any]:
        """:meth:`run_recorded` on a synchronous connection."""
        ...
