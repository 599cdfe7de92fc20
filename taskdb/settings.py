"""Configuration defaults and the environment variables that override them."""

from __future__ import annotations

import os

DEFAULT_URL = "sqlite:///taskdb.sqlite3"
"""The embedded default database, used when neither an argument nor ``TASKDB_URL`` is given."""

URL_ENV = "TASKDB_URL"

DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_POLL_INTERVAL = 0.5
DEFAULT_MAX_RETRIES = 3
SQLITE_BUSY_TIMEOUT_SECONDS = 60.0


def resolve_url(url: str | None) -> str:
    """The URL to use: the argument, else ``$TASKDB_URL``, else the SQLite default."""
    return url or os.environ.get(URL_ENV) or DEFAULT_URL
