"""Retry decisions and backoff math (pure: every function takes ``now``)."""

from __future__ import annotations

import math
import random
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta

from taskdb.errors import (
    AbortedJobError,
    DeadlineExceeded,
    InvalidJobInput,
    JobError,
    PermanentJobError,
    RetryableJobError,
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: ``base * factor**(attempt-1)``, capped, then jittered.

    ``jitter`` is the fraction of the delay drawn at random (0 = none, 1 = "full jitter").
    """

    base_seconds: float = 1.0
    factor: float = 2.0
    max_seconds: float = 300.0
    jitter: float = 0.5

    def delay(self, attempt: int, rand: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        try:
            growth = self.factor ** max(0, attempt - 1)
        except OverflowError:  # a thousand retries and more: capped anyway
            growth = math.inf
        raw = 0.0 if self.base_seconds == 0 else min(self.max_seconds, self.base_seconds * growth)
        r = (rand or random).random()
        return raw * (1.0 - self.jitter) + raw * self.jitter * r


@dataclass(frozen=True, slots=True)
class Complete:
    output: object
    refs: tuple[str, ...] = ()
    """The keys of the blobs ``output`` refers to: linked to the job with it."""


@dataclass(frozen=True, slots=True)
class Retry:
    run_after: datetime
    error: str
    error_code: str
    traceback: str | None = None


@dataclass(frozen=True, slots=True)
class Fail:
    error: str
    error_code: str
    traceback: str | None = None


Outcome = Complete | Retry | Fail


MAX_TRACEBACK = 16_384
"""Characters of a traceback kept on a job row."""


def traceback_text(exc: BaseException, limit: int = MAX_TRACEBACK) -> str:
    """The formatted traceback of ``exc`` (its causes included), at most ``limit``
    characters: a longer one keeps its start and its end (the innermost frames and
    the error), the cut marked."""
    text = "".join(traceback.format_exception(exc)).rstrip("\n")
    if len(text) <= limit:
        return text
    marker = "\n... {} characters cut ...\n"
    keep = limit - len(marker.format(len(text)))
    head, tail = keep // 4, keep - keep // 4
    return text[:head] + marker.format(len(text) - head - tail) + text[-tail:]


def error_code_of(exc: BaseException) -> str:
    return exc.error_code if isinstance(exc, JobError) else type(exc).__name__


def decide_failure(
    exc: BaseException,
    *,
    attempts: int,
    max_retries: int,
    deadline: datetime | None,
    now: datetime,
    policy: RetryPolicy,
    rand: random.Random | None = None,
) -> Retry | Fail:
    """What to do with a job whose attempt ``attempts`` raised ``exc``.

    Any exception but :class:`PermanentJobError`, :class:`AbortedJobError` and
    :class:`InvalidJobInput` (bad input never gets better) is retried while
    ``attempts <= max_retries`` and the retry would start before the deadline.
    """
    message = str(exc) or type(exc).__name__
    code = error_code_of(exc)
    stack = traceback_text(exc)
    final = PermanentJobError | AbortedJobError | InvalidJobInput
    if isinstance(exc, final) or attempts > max_retries:
        return Fail(message, code, stack)
    retry_at = exc.retry_at if isinstance(exc, RetryableJobError) else None
    if retry_at is None:
        retry_at = now + timedelta(seconds=policy.delay(attempts, rand))
    if deadline is not None and retry_at >= deadline:
        return Fail(f"{message} (no retry before the deadline)", DeadlineExceeded.__name__, stack)
    return Retry(retry_at, message, code, stack)
