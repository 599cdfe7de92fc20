"""Storage: the database handle, the blob store and what the stores report.

Everything that speaks SQL lives in this package: the schema (Alembic's
target), one store per concept (jobs, the change feed, blobs, durable
streams, cache entries, rate-limit windows), and the one seam to the two
databases, :class:`~taskdb.store.dialect.Dialect` (``postgres.py``,
``sqlite.py``). The stores themselves are internal; the public names are
below.
"""

from taskdb.store.blobs import BlobInfo, BlobState, BlobStore, GcReport
from taskdb.store.database import Database, connect
from taskdb.store.migrate import head_revision
from taskdb.store.stats import BlobTotals, DatabaseStats, QueueStats, Throughput
from taskdb.store.workers import WorkerInfo

__all__ = [
    "BlobInfo",
    "BlobState",
    "BlobStore",
    "BlobTotals",
    "Database",
    "DatabaseStats",
    "GcReport",
    "QueueStats",
    "Throughput",
    "WorkerInfo",
    "connect",
    "head_revision",
]
