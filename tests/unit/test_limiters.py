"""In-process limiters (the database-backed RateLimiter is tested in tests/store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from taskdb import (
    CompositeLimiter,
    ConcurrencyLimiter,
    ConfigurationError,
    DelayLimiter,
    EvenlySpacedRateLimiter,
    NullLimiter,
    RateLimiter,
    StorageError,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


async def test_null_grants_everything() -> None:
    assert await NullLimiter().reserve(50, T0) == 50


async def test_concurrency_counts_reservations_and_finishes() -> None:
    lim = ConcurrencyLimiter(3)
    assert await lim.reserve(5, T0) == 3
    assert await lim.reserve(1, T0) == 0
    lim.on_finish()
    assert await lim.reserve(5, T0) == 1
    await lim.unreserve(1, T0)
    assert await lim.reserve(5, T0) == 1


async def test_delay_spaces_starts_and_unreserve_restores() -> None:
    lim = DelayLimiter(10)
    assert await lim.reserve(5, T0) == 1
    assert await lim.reserve(5, at(9.9)) == 0
    assert lim.next_time(at(9.9)) == at(10)
    assert await lim.reserve(5, at(10)) == 1
    await lim.unreserve(1, at(10))  # not used: the previous spacing stands
    assert await lim.reserve(1, at(10)) == 1


async def test_evenly_spaced_is_window_over_count() -> None:
    lim = EvenlySpacedRateLimiter(4, 60)
    assert lim.seconds == 15
    assert await lim.reserve(4, T0) == 1
    assert await lim.reserve(4, at(14)) == 0
    assert await lim.reserve(4, at(15)) == 1


async def test_composite_grants_the_minimum_and_returns_the_rest() -> None:
    conc = ConcurrencyLimiter(5)
    lim = CompositeLimiter(conc, DelayLimiter(1))
    assert await lim.reserve(4, T0) == 1
    assert conc.active == 1  # the 3 extra concurrency slots were given back
    assert await lim.reserve(4, T0) == 0
    assert lim.next_time(T0) == at(1)
    lim.on_finish()
    assert conc.active == 0


class _Away(NullLimiter):
    async def reserve(self, want: int, now: datetime) -> int:
        raise StorageError("limiter table unavailable")


async def test_composite_gives_everything_back_when_one_limiter_fails() -> None:
    conc, delay = ConcurrencyLimiter(5), DelayLimiter(10)
    lim = CompositeLimiter(conc, delay, _Away())
    with pytest.raises(StorageError, match="unavailable"):
        await lim.reserve(4, T0)
    assert conc.active == 0
    assert await delay.reserve(1, T0) == 1  # its start was given back too


async def test_unbound_rate_limiter_says_so() -> None:
    with pytest.raises(ConfigurationError, match="not bound"):
        await RateLimiter(1, 1).reserve(1, T0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ConcurrencyLimiter(0),
        lambda: DelayLimiter(-1),
        lambda: RateLimiter(0, 10),
        lambda: RateLimiter(1, 0),
        lambda: EvenlySpacedRateLimiter(0, 1),
    ],
)
def test_bad_limits_are_rejected(make: object) -> None:
    with pytest.raises(ConfigurationError):
        make()  # type: ignore[operator]


async def test_a_queue_scoped_limit_is_the_claims_to_enforce() -> None:
    queue_wide = ConcurrencyLimiter(2, scope="queue")
    assert queue_wide.queue_cap == 2 and ConcurrencyLimiter(2).queue_cap is None
    assert await queue_wide.reserve(8, T0) == 8  # the claim caps it in the database
    both = CompositeLimiter(ConcurrencyLimiter(5, scope="queue"), queue_wide, NullLimiter())
    assert both.queue_cap == 2
    with pytest.raises(ConfigurationError, match="scope"):
        ConcurrencyLimiter(2, scope="everywhere")  # type: ignore[arg-type]
