"""taskdb: a SQL-backed durable job system."""

from taskdb.store.database import Database, connect

__all__ = ["Database", "connect"]
