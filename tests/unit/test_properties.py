"""Properties of the pure parts (hypothesis): the ref codec never resolves an
untrusted ``{"$ref": ...}``, stream events assemble alike however they are
chunked, retry and backoff stay within their bounds.

Examples per property: ``TASKDB_HYPOTHESIS_EXAMPLES`` (profile in tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from taskdb.core.refs import CACHE_REF_KIND, is_cache_ref, resolve_output
from taskdb.core.retry import Fail, Retry, RetryPolicy, decide_failure
from taskdb.streams import BinaryDelta, Blob, Finish, ObjectDelta, StreamProcessor, TextDelta

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SCHEMA: dict[str, Any] = {
    "properties": {
        "text": {"x-stream": "append"},
        "items": {"x-stream": "object"},
        "image": {"x-stream": "binary"},
        "raw": {"x-stream": "binary", "format": "binary"},
    }
}

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()


def json_like(leaves: st.SearchStrategy[Any] = scalars) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
        max_leaves=20,
    )


untrusted_ref = st.fixed_dictionaries(
    {"$ref": st.text()},
    optional={"kind": st.text().filter(lambda k: k != CACHE_REF_KIND), "size": st.integers()},
)


@given(json_like(scalars | untrusted_ref))
def test_an_untrusted_ref_is_never_resolved(value: Any) -> None:
    calls: list[Any] = []

    async def resolver(ref: Any) -> Any:
        calls.append(ref)
        return b"resolved"

    assert asyncio.run(resolve_output(value, resolver)) is value
    assert calls == []


@given(untrusted_ref)
def test_an_untrusted_ref_is_not_a_cache_ref(value: dict[str, Any]) -> None:
    assert not is_cache_ref(value)


def partition(data: Any, cuts: list[int]) -> list[Any]:
    """``data`` (str or bytes) cut at ``cuts`` (any ints: taken modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


items = st.lists(
    st.fixed_dictionaries({"id": st.integers(0, 5), "v": st.integers()}), min_size=1, max_size=4
)


@given(
    text=st.text(),
    raw=st.binary(max_size=300),
    updates=st.lists(items, max_size=5),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    other=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_streams_assemble_alike_however_chunked(
    text: str, raw: bytes, updates: list[list[dict[str, int]]], cuts: list[int], other: list[int]
) -> None:
    def assemble(text_cuts: list[int], raw_cuts: list[int]) -> dict[str, Any]:
        processor = StreamProcessor(SCHEMA)
        for piece in partition(text, text_cuts):
            processor.feed(TextDelta("text", piece))
        for chunk in partition(raw, raw_cuts):
            processor.feed(BinaryDelta("image", chunk))
            processor.feed(BinaryDelta("raw", chunk))
        for batch in updates:
            processor.feed(ObjectDelta("items", batch))
        processor.feed(Finish({}))
        assert processor.output is not None
        return processor.output

    whole = assemble([], [])
    assert assemble(cuts, other) == whole == assemble(other, cuts)
    assert whole.get("text", "") == text
    if raw:  # no chunk, no port
        assert whole["raw"] == raw and isinstance(whole["image"], Blob)
        assert whole["image"].read() == raw
    latest: dict[int, dict[str, int]] = {}
    for batch in updates:
        for item in batch:
            latest[item["id"]] = item
    assert {i["id"]: i for i in whole.get("items", [])} == latest


policies = st.builds(
    RetryPolicy,
    base_seconds=st.floats(0, 1e4),
    factor=st.floats(1, 10),
    max_seconds=st.floats(0, 1e6),
    jitter=st.floats(0, 1),
)


@given(policies, st.integers(1, 10_000), st.floats(0, 1, exclude_max=True))
def test_backoff_stays_within_its_bounds(policy: RetryPolicy, attempt: int, r: float) -> None:
    rand = random.Random()
    rand.random = lambda: r  # type: ignore[method-assign]
    try:
        growth = policy.factor ** (attempt - 1)
    except OverflowError:
        growth = math.inf
    raw = 0.0 if policy.base_seconds == 0 else min(policy.max_seconds, policy.base_seconds * growth)
    delay = policy.delay(attempt, rand)
    assert raw * (1 - policy.jitter) * (1 - 1e-12) <= delay <= raw * (1 + 1e-12)
    assert 0 <= delay <= policy.max_seconds * (1 + 1e-12)


@given(
    policies,
    st.integers(1, 50),
    st.integers(0, 50),
    st.none() | st.floats(0.001, 1e6).map(lambda s: NOW + timedelta(seconds=s)),
)
def test_a_failure_is_retried_within_the_budget_and_before_the_deadline(
    policy: RetryPolicy, attempts: int, max_retries: int, deadline: datetime | None
) -> None:
    outcome = decide_failure(
        ValueError("x"),
        attempts=attempts,
        max_retries=max_retries,
        deadline=deadline,
        now=NOW,
        policy=policy,
    )
    if attempts > max_retries:
        assert isinstance(outcome, Fail)
    elif isinstance(outcome, Retry):
        assert NOW <= outcome.run_after <= NOW + timedelta(seconds=policy.max_seconds + 1)
        assert deadline is None or outcome.run_after < deadline
    else:
        assert deadline is not None and outcome.error_code == "DeadlineExceeded"
