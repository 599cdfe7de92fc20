"""Configuration defaults and the environment variables that override them."""

from __future__ import annotations

import os

DEFAULT_URL = "sqlite:///taskdb.sqlite3"
"""The embedded default database, used when neither an argument nor ``TASKDB_URL`` is given."""

URL_ENV = "TASKDB_URL"

DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_POLL_INTERVAL = 0.5
DEFAULT_MAX_RETRIES = 3
DEFAULT_WORKER_SLOTS = 16
"""``taskdb worker --concurrency``: jobs one worker process runs at once per queue,
chosen by measurement (``benchmarks/queue_throughput.py``: one slot spends a
transaction and a wake-up per job). ``JobQueueServer``'s own default stays 1."""
DEFAULT_REFERENCE_THRESHOLD = 65_536
"""Binary outputs of at least this many bytes are stored as blobs behind a ``CacheRef``;
smaller ones are inlined in the row."""
SQLITE_BUSY_TIMEOUT_SECONDS = 60.0

LISTEN_ENV = "TASKDB_LISTEN"
"""``0`` (or ``false``, ``no``, ``off``) turns PostgreSQL LISTEN wake-ups off: waits then
only poll (for PgBouncer in transaction mode, which does not pass NOTIFY)."""

BLOB_STORAGE_ENV = "TASKDB_BLOB_STORAGE"
"""Where new blobs' bytes go when a ``BlobStore`` is not told: ``chunks`` (the default)
or, on PostgreSQL, ``large_object``."""


def resolve_url(url: str | None) -> str:
    """The URL to use: the argument, else ``$TASKDB_URL``, else the SQLite default."""
    return url or os.environ.get(URL_ENV) or DEFAULT_URL


def resolve_blob_storage(storage: str | None) -> str | None:
    """The blob storage to use: the argument, else ``$TASKDB_BLOB_STORAGE``, else ``None``
    (the dialect's default)."""
    return storage or os.environ.get(BLOB_STORAGE_ENV, "").strip() or None


def resolve_listen(listen: bool | None) -> bool:
    """Whether to LISTEN for change notifications: the argument, else ``$TASKDB_LISTEN``
    (on unless it says ``0``, ``false``, ``no`` or ``off``)."""
    if listen is not None:
        return listen
    return os.environ.get(LISTEN_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


LISTEN_URL_ENV = "TASKDB_LISTEN_URL"
"""A direct PostgreSQL URL for the LISTEN connection when ``TASKDB_URL`` goes through
a pooler in transaction mode (PgBouncer), which does not pass NOTIFY."""


def resolve_listen_url(url: str | None) -> str | None:
    """The URL the LISTEN connection uses: the argument, else ``$TASKDB_LISTEN_URL``
    (``None``: the database URL itself)."""
    return url or os.environ.get(LISTEN_URL_ENV) or None
