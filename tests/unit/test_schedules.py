"""Schedule time arithmetic (pure): cron and interval ticks, DST gaps and repeats,
Feb 29, catch-up policies, and the errors of bad definitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from zoneinfo import ZoneInfo

import pytest

from taskdb import InvalidSchedule
from taskdb.core.schedules import Cadence, Schedule, due_ticks

PARIS = ZoneInfo("Europe/Paris")


def _after(cadence: Cadence, moment: datetime, n: int) -> list[str]:
    return [t.isoformat() for t in islice(cadence.after(moment), n)]


def test_a_time_skipped_by_dst_does_not_run() -> None:
    daily = Cadence(cron="30 2 * * *", timezone="Europe/Paris")
    # 2026-03-29: clocks go from 02:00 to 03:00 in Paris; 02:30 does not exist
    assert _after(daily, datetime(2026, 3, 27, 12, tzinfo=PARIS), 3) == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_a_time_repeated_by_dst_runs_once() -> None:
    daily = Cadence(cron="30 2 * * *", timezone="Europe/Paris")
    # 2026-10-25: 02:00-03:00 happens twice in Paris; 02:30 runs at its first occurrence
    assert _after(daily, datetime(2026, 10, 24, 12, tzinfo=PARIS), 2) == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]
    half_hourly = Cadence(cron="*/30 * * * *", timezone="Europe/Paris")
    assert _after(half_hourly, datetime(2026, 10, 25, 1, 0, tzinfo=PARIS), 5) == [
        "2026-10-25T01:30:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T03:00:00+01:00",  # 02:00 and 02:30 (+01:00) were run already
        "2026-10-25T03:30:00+01:00",
    ]


def test_ticks_are_strictly_increasing_across_a_whole_year_of_dst() -> None:
    hourly = Cadence(cron="15 * * * *", timezone="Europe/Paris")
    ticks = list(islice(hourly.after(datetime(2026, 1, 1, tzinfo=UTC)), 24 * 365))
    assert all(a < b for a, b in pairwise(ticks))
    # one hour fewer in spring (02:15 skipped), and 02:15 once in autumn
    assert len({t.astimezone(PARIS).replace(tzinfo=None) for t in ticks}) == len(ticks)


def test_february_29_runs_only_in_leap_years() -> None:
    leap = Cadence(cron="0 12 29 2 *", timezone="UTC")
    assert _after(leap, datetime(2026, 1, 1, tzinfo=UTC), 2) == [
        "2028-02-29T12:00:00+00:00",
        "2032-02-29T12:00:00+00:00",
    ]


def test_aliases_and_seconds() -> None:
    assert _after(Cadence(cron="@daily"), datetime(2026, 1, 1, 5, tzinfo=UTC), 1) == [
        "2026-01-02T00:00:00+00:00"
    ]
    every_5s = Cadence(cron="*/5 * * * * *")  # six fields: seconds first
    assert _after(every_5s, datetime(2026, 1, 1, tzinfo=UTC), 2) == [
        "2026-01-01T00:00:05+00:00",
        "2026-01-01T00:00:10+00:00",
    ]


def test_interval_ticks_are_multiples_of_the_interval_since_the_epoch() -> None:
    every = Cadence(every=timedelta(seconds=7))
    ticks = list(islice(every.after(datetime(2026, 1, 1, tzinfo=UTC)), 3))
    assert all(int(t.timestamp()) % 7 == 0 for t in ticks)
    assert [b - a for a, b in pairwise(ticks)] == [timedelta(seconds=7)] * 2
    # before() is the same sequence read backwards, at or before the moment
    moment = ticks[1]
    assert list(islice(every.before(moment), 2)) == [ticks[1], ticks[0]]


def test_cron_before_walks_back_including_now() -> None:
    five = Cadence(cron="*/5 * * * *")
    now = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
    assert [t.minute for t in islice(five.before(now), 3)] == [10, 5, 0]
    assert [t.minute for t in islice(five.before(now + timedelta(seconds=59)), 1)] == [10]


START = datetime(2026, 6, 1, tzinfo=UTC)
MINUTELY = Cadence(cron="* * * * *")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("latest", [10]), ("all", list(range(1, 11))), ("none", [])],
)
def test_catch_up_after_downtime(policy: str, expected: list[int]) -> None:
    now = START + timedelta(minutes=10, seconds=45)  # no tick within the grace period
    ticks = due_ticks(MINUTELY, START, now, policy)  # type: ignore[arg-type]
    assert [int((t - START).total_seconds() // 60) for t in ticks] == expected


def test_on_time_ticks_all_run_whatever_the_policy() -> None:
    every = Cadence(every=timedelta(seconds=10))
    since = datetime(2026, 6, 1, tzinfo=UTC)
    now = since + timedelta(seconds=25)  # 10 s and 20 s are within the 30 s grace
    for policy in ("latest", "all", "none"):
        assert due_ticks(every, since, now, policy) == [  # type: ignore[arg-type]
            since + timedelta(seconds=10),
            since + timedelta(seconds=20),
        ]
    # latest: a missed tick does not run beside an on-time one
    now = since + timedelta(seconds=55)
    ticks = due_ticks(every, since, now, "latest")
    assert ticks == [since + timedelta(seconds=s) for s in (30, 40, 50)]


def test_all_is_bounded_by_max_catch_up() -> None:
    now = START + timedelta(days=365, seconds=45)
    ticks = due_ticks(MINUTELY, START, now, "all", max_catch_up=5)
    assert len(ticks) == 5 and ticks[-1] == START + timedelta(days=365)
    assert ticks == sorted(ticks)


def test_nothing_is_due_at_or_before_since() -> None:
    assert due_ticks(MINUTELY, START, START, "all") == []
    assert (
        due_ticks(MINUTELY, START + timedelta(minutes=1), START + timedelta(minutes=1), "all") == []
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"cron": "* * * * *", "every": timedelta(seconds=1)}, "exactly one"),
        ({"cron": "61 * * * *"}, "bad cron expression"),
        ({"cron": "* * *"}, "bad cron expression"),
        ({"cron": "0 0 31 2 *"}, "bad cron expression"),
        ({"cron": 5}, "cron must be a string"),
        ({"every": timedelta(milliseconds=500)}, "whole seconds"),
        ({"every": timedelta(seconds=1.5)}, "whole seconds"),
        ({"every": 10}, "whole seconds"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"cron": "* * * * *", "timezone": "../../etc/passwd"}, "unknown time zone"),
    ],
)
def test_bad_cadences_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidSchedule, match=message):
        Cadence(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "has space"}, "schedule name"),
        ({"name": ""}, "schedule name"),
        ({"catch_up": "some"}, "catch_up must be"),
        ({"max_catch_up": 0}, "max_catch_up"),
        ({"max_catch_up": True}, "max_catch_up"),
    ],
)
def test_bad_schedules_are_refused(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"name": "s", "task": "t", "queue": "q", "cadence": MINUTELY}
    with pytest.raises(InvalidSchedule, match=message):
        Schedule(**{**fields, **kwargs})  # type: ignore[arg-type]
