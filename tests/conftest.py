"""Fixtures: a fresh, migrated database per test on SQLite and on PostgreSQL.

PostgreSQL: migrate once into a template database, then each test gets
``CREATE DATABASE ... TEMPLATE``. SQLite: migrate once into a template file,
then each test gets a copy. Without ``TASKDB_REQUIRE_PG=1`` an unreachable
PostgreSQL skips its tests with the reason; with it, they fail.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings
from sqlalchemy import make_url

import taskdb
from tests.pgserver import ClusterUnavailable, PgBouncer, PrivateCluster, private_cluster

# Property tests: ~50 examples each in `make test` (TASKDB_HYPOTHESIS_EXAMPLES for more),
# no deadline (a database round trip varies), derandomized in CI, seeds printed.
settings.register_profile(
    "taskdb",
    max_examples=int(os.environ.get("TASKDB_HYPOTHESIS_EXAMPLES", "50")),
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    print_blob=True,
)
settings.load_profile("taskdb")

PG_URL = os.environ.get("TASKDB_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("TASKDB_REQUIRE_PG") == "1"
DIALECTS = ["sqlite", "postgresql"]


def _pg_admin() -> psycopg.Connection[tuple[object, ...]]:
    url = make_url(PG_URL)
    return psycopg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        dbname=url.database or "postgres",
        autocommit=True,
        connect_timeout=5,
    )


def pg_database_url(name: str) -> str:
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


PG_ADMIN_URL = pg_database_url("postgres").replace("+psycopg", "")
"""A plain psycopg URL of the server's ``postgres`` database (admin statements)."""


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """Name of a migrated template database (skips or fails when PostgreSQL is down)."""
    try:
        admin = _pg_admin()
    except psycopg.Error as exc:
        reason = f"PostgreSQL unreachable at {make_url(PG_URL).render_as_string()}: {exc}"
        if REQUIRE_PG:
            pytest.fail(reason + " (TASKDB_REQUIRE_PG=1)")
        pytest.skip(reason)
    name = f"taskdb_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        db = taskdb.connect(pg_database_url(name))
        db.migrate()
        db.close()
        yield name
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.sqlite3"
    db = taskdb.connect(f"sqlite:///{path}")
    db.migrate()
    db.close()
    return path


@contextmanager
def scratch_pg_database(template: str | None = None) -> Iterator[str]:
    """URL of a new PostgreSQL database (a copy of ``template`` if given), dropped after."""
    name = _create_pg_database(template)
    try:
        yield pg_database_url(name)
    finally:
        _drop_pg_database(name)


def _create_pg_database(template: str | None = None) -> str:
    name = f"taskdb_t_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with _pg_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"{clause}')
    return name


def _drop_pg_database(name: str) -> None:
    with _pg_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PgCopies:
    """Fresh copies of the migrated template, made ahead in one background thread
    and the used ones dropped in another: a test still gets a database nothing
    else has touched (``CREATE DATABASE ... TEMPLATE``, dropped after it), but the
    ~0.3 s a copy and a drop take on the shared server overlap the tests before it
    (the slow ones bank copies for the quick ones after them)."""

    AHEAD = 3

    def __init__(self, template: str) -> None:
        self.template = template
        self._creator = ThreadPoolExecutor(1, thread_name_prefix="pg-copies-create")
        self._dropper = ThreadPoolExecutor(1, thread_name_prefix="pg-copies-drop")
        self._ahead: deque[Future[str]] = deque()
        self._drops: list[Future[None]] = []

    def take(self) -> str:
        """The name of a new copy (made before this call if possible)."""
        while len(self._ahead) <= self.AHEAD:
            self._ahead.append(self._creator.submit(_create_pg_database, self.template))
        return self._ahead.popleft().result()

    def give_back(self, name: str) -> None:
        self._drops.append(self._dropper.submit(_drop_pg_database, name))

    def close(self) -> None:
        self._creator.shutdown(wait=True)
        for ahead in self._ahead:
            self.give_back(ahead.result())
        self._dropper.shutdown(wait=True)
        for drop in self._drops:
            drop.result()


@pytest.fixture(scope="session")
def pg_copies(pg_template: str) -> Iterator[PgCopies]:
    copies = PgCopies(pg_template)
    yield copies
    copies.close()


@pytest.fixture
def fresh_pg_url(pg_copies: PgCopies) -> Iterator[str]:
    """URL of a new migrated PostgreSQL database, dropped after the test."""
    name = pg_copies.take()
    try:
        yield pg_database_url(name)
    finally:
        pg_copies.give_back(name)


@pytest.fixture
def fresh_sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "taskdb.sqlite3"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=DIALECTS)
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh migrated database of each dialect."""
    fixture = "fresh_sqlite_url" if request.param == "sqlite" else "fresh_pg_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[taskdb.Database]:
    database = taskdb.connect(db_url)
    yield database
    await database.aclose()


@pytest.fixture(params=DIALECTS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of each dialect with no taskdb schema at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.sqlite3'}"
        return
    request.getfixturevalue("pg_template")  # skip/fail like the others when PG is down
    with scratch_pg_database() as url:
        yield url


# -- a private PostgreSQL cluster, for tests that stop or restart the server -------------


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivateCluster]:
    """A PostgreSQL cluster of this test session only (tests/pgserver.py): tests may
    stop and restart it (never the shared server). Skips (fails under
    ``TASKDB_REQUIRE_PG=1``) with the reason where none can be made."""
    try:
        cluster_cm = private_cluster()
        cluster = cluster_cm.__enter__()
    except ClusterUnavailable as exc:
        reason = f"no private PostgreSQL cluster: {exc}"
        if REQUIRE_PG:
            pytest.fail(reason + " (TASKDB_REQUIRE_PG=1)")
        pytest.skip(reason)
    try:
        yield cluster
    finally:
        cluster_cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def private_pg_template(private_pg: PrivateCluster) -> str:
    url = private_pg.create_database()
    taskdb.connect(url).migrate()
    name = make_url(url).database
    assert name
    return name


@pytest.fixture
def private_pg_url(private_pg: PrivateCluster, private_pg_template: str) -> Iterator[str]:
    """A fresh migrated database on the private cluster; the cluster is running
    again after the test whatever it did to it."""
    url = private_pg.create_database(private_pg_template)
    yield url
    if not private_pg.running:
        private_pg.start()
    with private_pg.admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


# -- PgBouncer in transaction mode, for the queue, follow and blob suites ----------------

POOLED = [*DIALECTS, "pgbouncer"]
"""``db_url`` params of the modules that also run through PgBouncer."""


@pytest.fixture
def pgbouncer(pg_template: str) -> Iterator[PgBouncer]:
    """PgBouncer (transaction pooling) in front of the test server: every database
    name passes through. Skips (fails under ``TASKDB_REQUIRE_PG=1``) without it.
    One per test (it starts in milliseconds): a PgBouncer 1.18 kept for a whole
    session stopped opening server connections after some 55 had been closed
    under it by ``DROP DATABASE ... WITH (FORCE)``."""
    url = make_url(PG_URL)
    try:
        bouncer = PgBouncer(url.host or "127.0.0.1", url.port or 5432, url.username or "postgres")
    except ClusterUnavailable as exc:
        if REQUIRE_PG:
            pytest.fail(f"{exc} (TASKDB_REQUIRE_PG=1)")
        pytest.skip(str(exc))
    yield bouncer
    bouncer.close()


def pooled_db_url(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, kind: str | None = None
) -> str:
    """``db_url`` for ``POOLED`` params: ``pgbouncer`` is a fresh PostgreSQL database
    reached through PgBouncer in transaction mode, as its README advice says:
    ``?prepare_threshold=none``, and LISTEN on a direct connection
    (``TASKDB_LISTEN_URL``, which worker subprocesses inherit). ``kind``: the param
    (default ``request.param``)."""
    kind = request.param if kind is None else kind
    if kind != "pgbouncer":
        fixture = "fresh_sqlite_url" if kind == "sqlite" else "fresh_pg_url"
        url: str = request.getfixturevalue(fixture)
        return url
    direct: str = request.getfixturevalue("fresh_pg_url")
    bouncer: PgBouncer = request.getfixturevalue("pgbouncer")
    monkeypatch.setenv("TASKDB_LISTEN_URL", direct)
    return bouncer.url(str(make_url(direct).database)) + "?prepare_threshold=none"
