"""``ServerSettings``: how a :class:`~taskdb.JobQueueServer` runs, checked when made."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from taskdb import settings
from taskdb.core.clock import Clock, seconds, utcnow
from taskdb.core.retry import RetryPolicy
from taskdb.errors import ConfigurationError
from taskdb.queue.limiters import Limiter

MAX_BATCH = 100
"""The most jobs one claim (or one batch of outcomes) takes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    """How a :class:`~taskdb.JobQueueServer` runs; an invalid value raises
    :class:`~taskdb.ConfigurationError` when the settings are made.

    ``workers``: jobs run at once. ``limiter``: decides how many may start
    (default none; a limiter keeps state, so give each server its own).
    ``lease_seconds``: how long a claim holds without a heartbeat (beats come
    every third of it). ``poll_interval``: seconds between claims while idle.
    ``batch_size``: the most jobs one claim takes (default and at most
    100). ``retry``: the backoff between attempts. ``abort_grace_seconds``:
    how long an aborted handler may run on before it is cancelled;
    ``abort_poll_interval``: how often running jobs are checked for aborts.
    ``stop_timeout``: how long ``stop()`` lets running jobs finish. ``clock``:
    the time source (tests inject one). ``worker_id``: default
    ``host:pid:random``. ``reference_threshold_bytes``: binary outputs this
    large or larger become blobs behind a ref (negative: the default).
    ``health_file``: a file touched at start and at every heartbeat (a liveness
    probe checks its age). ``max_retries``: the most retries any job gets on this
    server, whatever it was submitted with (``None``: as submitted).
    """

    workers: int = 1
    limiter: Limiter | None = None
    lease_seconds: float = settings.DEFAULT_LEASE_SECONDS
    poll_interval: float = settings.DEFAULT_POLL_INTERVAL
    batch_size: int | None = None
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    abort_grace_seconds: float = 2.0
    abort_poll_interval: float = 0.5
    stop_timeout: float = 30.0
    clock: Clock = utcnow
    worker_id: str | None = None
    reference_threshold_bytes: int = settings.DEFAULT_REFERENCE_THRESHOLD
    health_file: str | None = None
    max_retries: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigurationError(f"workers must be at least 1, got {self.workers!r}")
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, int)
            or self.batch_size < 1
        ):
            raise ConfigurationError(f"batch_size must be None or >= 1, got {self.batch_size!r}")
        for name in ("lease_seconds", "poll_interval", "abort_poll_interval"):
            seconds(name, getattr(self, name), positive=True)
        for name in ("abort_grace_seconds", "stop_timeout"):
            seconds(name, getattr(self, name))
        if self.max_retries is not None and (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or self.max_retries < 0
        ):
            raise ConfigurationError(f"max_retries must be None or >= 0, got {self.max_retries!r}")
        if not isinstance(self.retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy, got {self.retry!r}")
        if self.limiter is not None and not isinstance(self.limiter, Limiter):
            raise ConfigurationError(f"limiter must be a Limiter, got {self.limiter!r}")

    def replace(self, **changes: Any) -> ServerSettings:
        """A copy with ``changes`` (checked like a new one; an unknown name is a
        :class:`~taskdb.ConfigurationError`)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigurationError(f"unknown server setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    @property
    def claim_batch(self) -> int:
        """The most jobs one claim takes."""
        return min(self.batch_size or MAX_BATCH, MAX_BATCH)

    @property
    def threshold(self) -> int:
        """``reference_threshold_bytes``, the default when negative."""
        if self.reference_threshold_bytes < 0:
            return settings.DEFAULT_REFERENCE_THRESHOLD
        return self.reference_threshold_bytes
