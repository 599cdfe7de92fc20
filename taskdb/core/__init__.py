"""Pure values every layer shares: the job model, retry math, the clock, the ref codec.

Nothing here does I/O. ``store`` and everything above it build on these types;
the public ones are re-exported by the packages that use them (``taskdb.queue``,
``taskdb.cache``) and by ``taskdb``.
"""

from taskdb.core.clock import MAX_SECONDS, Clock, seconds, utcnow
from taskdb.core.inline import decode_binary_values, encode_binary_values, is_inline_bytes
from taskdb.core.jobs import ChangeKind, Claim, Job, JobChange, JobOptions, JobStatus, NewJob
from taskdb.core.refs import (
    CACHE_REF_KIND,
    CacheRef,
    CacheRefResolver,
    is_cache_ref,
    iter_cache_refs,
    make_cache_ref,
    ref_key,
    resolve_job_output,
    resolve_output,
)
from taskdb.core.retry import Complete, Fail, Outcome, Retry, RetryPolicy, decide_failure
from taskdb.core.schedules import Cadence, Schedule, ScheduleInfo

__all__ = [
    "CACHE_REF_KIND",
    "MAX_SECONDS",
    "CacheRef",
    "CacheRefResolver",
    "Cadence",
    "ChangeKind",
    "Claim",
    "Clock",
    "Complete",
    "Fail",
    "Job",
    "JobChange",
    "JobOptions",
    "JobStatus",
    "NewJob",
    "Outcome",
    "Retry",
    "RetryPolicy",
    "Schedule",
    "ScheduleInfo",
    "decide_failure",
    "decode_binary_values",
    "encode_binary_values",
    "is_cache_ref",
    "is_inline_bytes",
    "iter_cache_refs",
    "make_cache_ref",
    "ref_key",
    "resolve_job_output",
    "resolve_output",
    "seconds",
    "utcnow",
]
