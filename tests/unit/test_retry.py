from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from taskdb.core.retry import Fail, Retry, RetryPolicy, decide_failure
from taskdb.errors import AbortedJobError, PermanentJobError, RetryableJobError

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(base_seconds=2, factor=3, max_seconds=100, jitter=0)
    assert [policy.delay(a) for a in range(1, 6)] == [2, 6, 18, 54, 100]


def test_jitter_stays_within_its_fraction() -> None:
    policy = RetryPolicy(base_seconds=10, factor=1, jitter=0.5)
    rand = random.Random(7)
    delays = [policy.delay(1, rand) for _ in range(1000)]
    assert min(delays) >= 5 and max(delays) <= 10
    assert max(delays) - min(delays) > 4  # really spread, not constant


def decide(exc: BaseException, attempts: int = 1, **kw: object) -> Retry | Fail:
    options: dict[str, object] = {
        "attempts": attempts,
        "max_retries": 2,
        "deadline": None,
        "now": NOW,
        "policy": RetryPolicy(base_seconds=1, jitter=0),
    }
    options.update(kw)
    return decide_failure(exc, **options)  # type: ignore[arg-type]


def test_any_error_is_retried_while_attempts_remain() -> None:
    assert decide(ValueError("x"), attempts=1) == Retry(
        NOW + timedelta(seconds=1), "x", "ValueError"
    )
    assert decide(ValueError("x"), attempts=2) == Retry(
        NOW + timedelta(seconds=2), "x", "ValueError"
    )
    assert decide(ValueError("x"), attempts=3) == Fail("x", "ValueError")


@pytest.mark.parametrize("exc", [PermanentJobError("no"), AbortedJobError("no")])
def test_permanent_and_aborted_are_never_retried(exc: Exception) -> None:
    assert isinstance(decide(exc, attempts=1), Fail)


def test_retry_at_overrides_backoff() -> None:
    when = NOW + timedelta(hours=3)
    assert decide(RetryableJobError("later", retry_at=when)) == Retry(
        when, "later", "RetryableJobError"
    )


def test_no_retry_scheduled_past_the_deadline() -> None:
    result = decide(ValueError("x"), deadline=NOW + timedelta(milliseconds=500))
    assert isinstance(result, Fail) and result.error_code == "DeadlineExceeded"


def test_empty_message_falls_back_to_the_class_name() -> None:
    assert decide(KeyError(), attempts=9) == Fail("KeyError", "KeyError")
