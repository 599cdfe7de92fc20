"""The output cache: ``CacheRef`` and its walkers, repositories, blob-backed storage."""

from taskdb.cache.repository import (
    MemoryTaskOutputRepository,
    RunPrivateCacheRepo,
    TaskOutputRepository,
    inputs_fingerprint,
)
from taskdb.cache.sql import SqlTaskOutputRepository, collect_garbage
from taskdb.core.refs import (
    CACHE_REF_KIND,
    CacheRef,
    CacheRefResolver,
    is_cache_ref,
    iter_cache_refs,
    make_cache_ref,
    resolve_job_output,
    resolve_output,
)
from taskdb.store.blobs import BlobInfo, BlobStore, GcReport

__all__ = [
    "CACHE_REF_KIND",
    "BlobInfo",
    "BlobStore",
    "CacheRef",
    "CacheRefResolver",
    "GcReport",
    "MemoryTaskOutputRepository",
    "RunPrivateCacheRepo",
    "SqlTaskOutputRepository",
    "TaskOutputRepository",
    "collect_garbage",
    "inputs_fingerprint",
    "is_cache_ref",
    "iter_cache_refs",
    "make_cache_ref",
    "resolve_job_output",
    "resolve_output",
]
