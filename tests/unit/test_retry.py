from __future__ import annotations

import dataclasses
import random
import re
from datetime import UTC, datetime, timedelta

import pytest

from taskdb.core.retry import Fail, Retry, RetryPolicy, decide_failure, traceback_text
from taskdb.errors import (
    AbortedJobError,
    InvalidJobInput,
    PermanentJobError,
    RetryableJobError,
)

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
    outcome = decide_failure(exc, **options)  # type: ignore[arg-type]
    return dataclasses.replace(outcome, traceback=None)  # compared on their own below


def test_any_error_is_retried_while_attempts_remain() -> None:
    assert decide(ValueError("x"), attempts=1) == Retry(
        NOW + timedelta(seconds=1), "x", "ValueError"
    )
    assert decide(ValueError("x"), attempts=2) == Retry(
        NOW + timedelta(seconds=2), "x", "ValueError"
    )
    assert decide(ValueError("x"), attempts=3) == Fail("x", "ValueError")


@pytest.mark.parametrize(
    "exc", [PermanentJobError("no"), AbortedJobError("no"), InvalidJobInput("no")]
)
def test_permanent_aborted_and_invalid_input_are_never_retried(exc: Exception) -> None:
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


def _raise_deep(depth: int) -> None:
    if depth == 0:
        raise ValueError("at the bottom")
    _raise_deep(depth - 1)


def test_the_outcome_keeps_the_traceback_with_its_cause() -> None:
    try:
        try:
            _raise_deep(2)
        except ValueError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as exc:
        outcome = decide_failure(
            exc, attempts=1, max_retries=0, deadline=None, now=NOW, policy=RetryPolicy()
        )
    assert isinstance(outcome, Fail) and outcome.traceback is not None
    assert "_raise_deep" in outcome.traceback and "ValueError: at the bottom" in outcome.traceback
    assert outcome.traceback.endswith("RuntimeError: wrapped")


def test_a_long_traceback_is_cut_in_the_middle_and_says_so() -> None:
    try:
        _raise_deep(400)
    except ValueError as exc:
        text = traceback_text(exc, limit=300)
        whole = traceback_text(exc, limit=10**9)
    assert len(text) <= 300 < len(whole)
    assert text.startswith("Traceback (most recent call last):")
    assert text.endswith("ValueError: at the bottom")
    marker = re.search(r"\n\.\.\. (\d+) characters cut \.\.\.\n", text)
    assert marker is not None
    assert int(marker.group(1)) == len(whole) - (len(text) - len(marker.group(0)))


def test_backoff_after_a_thousand_attempts_is_capped_not_an_overflow() -> None:
    """Found by hypothesis: 2.0 ** 1024 overflows a float."""
    policy = RetryPolicy(base_seconds=1.0, factor=2.0, max_seconds=60.0, jitter=0.0)
    assert policy.delay(1025) == 60.0
    assert RetryPolicy(base_seconds=0.0, jitter=0.0).delay(5000) == 0.0
