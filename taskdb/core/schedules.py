"""Periodic schedules as pure data and time arithmetic: when a schedule ticks,
which ticks are due after downtime, and what an operator sees of one.

A :class:`Cadence` is a cron expression in a time zone (parsed by ``cronsim``)
or a fixed interval. Cron ticks follow the zone's wall clock: a time a DST
change skips does not run, a time it repeats runs once (its first occurrence).
Interval ticks are the multiples of the interval since the Unix epoch, so every
process computes the same ticks without talking to the others.

:func:`due_ticks` says which ticks a scheduler enqueues at ``now``: ticks up to
:data:`GRACE` old are on time and all run; older ones were missed (no scheduler
ran) and follow the schedule's ``catch_up`` policy.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from taskdb.core.jobs import JobStatus
from taskdb.errors import InvalidSchedule

CatchUp = Literal["latest", "all", "none"]

GRACE = timedelta(seconds=30)
"""How late a tick may be enqueued and still count as on time (a busy or slow
scheduler): older ones were missed and follow ``catch_up``."""

MAX_CATCH_UP = 100
"""Default of ``max_catch_up``: the most missed ticks ``catch_up="all"`` enqueues."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_NAME = re.compile(r"[A-Za-z_][\w.:-]{0,199}")


def check_schedule_name(name: object) -> str:
    """``name`` if it is a valid schedule name (1..200 chars: letters, digits, ``_.:-``)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidSchedule(
            f"a schedule name is 1..200 letters, digits or _.:- starting with a letter "
            f"or _, got {name!r}"
        )
    return name


@dataclass(frozen=True, slots=True)
class Cadence:
    """When a schedule ticks: ``cron`` in ``timezone``, or ``every`` whole seconds."""

    cron: str | None = None
    every: timedelta | None = None
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise InvalidSchedule("a schedule takes cron=... or every=..., exactly one")
        if self.every is not None:
            total = self.every.total_seconds() if isinstance(self.every, timedelta) else None
            if total is None or total < 1 or total != int(total):
                raise InvalidSchedule(
                    f"every must be a timedelta of whole seconds, at least one, got {self.every!r}"
                )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise InvalidSchedule(f"unknown time zone {self.timezone!r}") from None
        if self.cron is not None:
            if not isinstance(self.cron, str):
                raise InvalidSchedule(f"cron must be a string, got {self.cron!r}")
            try:
                CronSim(self._expr, datetime(2000, 1, 1))
            except CronSimError as exc:
                raise InvalidSchedule(f"bad cron expression {self.cron!r}: {exc}") from None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def _expr(self) -> str:
        assert self.cron is not None
        return _ALIASES.get(self.cron.strip(), self.cron)

    @property
    def every_seconds(self) -> int | None:
        return None if self.every is None else int(self.every.total_seconds())

    def describe(self) -> str:
        """``cron */5 * * * * (Europe/Paris)`` or ``every 10s``."""
        if self.cron is not None:
            return f"cron {self.cron} ({self.timezone})"
        return f"every {_span(self.every_seconds or 0)}"

    def after(self, moment: datetime) -> Iterator[datetime]:
        """The ticks strictly after ``moment``, oldest first (aware, in the zone)."""
        if self.every is not None:
            step = self.every_seconds or 1
            n = int((moment - _EPOCH).total_seconds() // step) + 1
            while True:
                yield (_EPOCH + timedelta(seconds=n * step)).astimezone(self.zone)
                n += 1
        zone = self.zone
        wall = moment.astimezone(zone).replace(tzinfo=None)
        for naive in CronSim(self._expr, wall):
            tick = _aware(naive, zone)
            if tick is not None and tick > moment:
                yield tick

    def before(self, moment: datetime) -> Iterator[datetime]:
        """The ticks at or before ``moment``, newest first (aware, in the zone)."""
        if self.every is not None:
            step = self.every_seconds or 1
            n = int((moment - _EPOCH).total_seconds() // step)
            while True:
                yield (_EPOCH + timedelta(seconds=n * step)).astimezone(self.zone)
                n -= 1
        zone = self.zone
        # cronsim's reverse walk excludes its start: start one second on.
        wall = moment.astimezone(zone).replace(tzinfo=None, microsecond=0) + timedelta(seconds=1)
        for naive in CronSim(self._expr, wall, reverse=True):
            tick = _aware(naive, zone)
            if tick is not None and tick <= moment:
                yield tick

    def next_after(self, moment: datetime) -> datetime:
        """The first tick after ``moment``."""
        return next(self.after(moment))


def _aware(naive: datetime, zone: ZoneInfo) -> datetime | None:
    """``naive`` wall time in ``zone``, its first occurrence when a DST change repeats
    it; ``None`` when a DST change skips it."""
    tick = naive.replace(tzinfo=zone)
    back = tick.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    return tick if back == naive else None


def _span(total: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if total >= size and total % size == 0:
            return f"{total // size}{unit}"
    return f"{total}s"


def due_ticks(
    cadence: Cadence,
    since: datetime,
    now: datetime,
    catch_up: CatchUp,
    max_catch_up: int = MAX_CATCH_UP,
    grace: timedelta = GRACE,
) -> list[datetime]:
    """The ticks to enqueue at ``now``, oldest first, of those after ``since`` (the
    last tick enqueued, or when the schedule was created or resumed): every tick up
    to ``grace`` old, and of the older (missed) ones the newest (``latest``, only
    when no tick is on time), the newest ``max_catch_up`` (``all``), or none."""
    recent = now - grace
    on_time: list[datetime] = []
    missed: list[datetime] = []
    want = max(max_catch_up, 1) if catch_up == "all" else 1
    for tick in cadence.before(now):
        if tick <= since:
            break
        if tick > recent:
            on_time.append(tick)
            continue
        missed.append(tick)
        if len(missed) >= want:
            break
    if catch_up == "none" or (catch_up == "latest" and on_time):
        missed = []
    return sorted(missed + on_time)


def check_catch_up(catch_up: object, max_catch_up: object) -> tuple[CatchUp, int]:
    """The policy and its bound, checked."""
    if catch_up not in get_args(CatchUp):
        raise InvalidSchedule(f"catch_up must be 'latest', 'all' or 'none', got {catch_up!r}")
    if isinstance(max_catch_up, bool) or not isinstance(max_catch_up, int) or max_catch_up < 1:
        raise InvalidSchedule(f"max_catch_up must be an integer >= 1, got {max_catch_up!r}")
    return catch_up, max_catch_up  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Schedule:
    """A periodic job as code defines it: which task on which queue, when, and the
    arguments of every job (``tick_param`` names the argument the tick goes to)."""

    name: str
    task: str
    queue: str
    cadence: Cadence
    catch_up: CatchUp = "latest"
    max_catch_up: int = MAX_CATCH_UP
    args_json: str = "{}"
    tick_param: str | None = None
    priority: int = 0
    max_retries: int = 0

    def __post_init__(self) -> None:
        check_schedule_name(self.name)
        check_catch_up(self.catch_up, self.max_catch_up)


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """A schedule as stored, for operators (``taskdb schedules``, the dashboard).
    ``orphaned``: no running scheduler has registered it lately (removed from code,
    or no scheduler runs); ``next_tick`` is ``None`` while paused."""

    name: str
    task: str
    queue: str
    cron: str | None
    every: timedelta | None
    timezone: str
    catch_up: str
    paused: bool
    next_tick: datetime | None
    last_tick: datetime | None
    last_job_id: int | None
    last_job_status: JobStatus | None
    orphaned: bool

    def as_json(self) -> dict[str, Any]:
        """JSON values (``taskdb schedules --json``, the HTTP API): times in ISO 8601,
        ``every`` in seconds."""

        def iso(when: datetime | None) -> str | None:
            return None if when is None else when.isoformat()

        return {
            "name": self.name,
            "task": self.task,
            "queue": self.queue,
            "cron": self.cron,
            "every": None if self.every is None else self.every.total_seconds(),
            "timezone": self.timezone,
            "catch_up": self.catch_up,
            "paused": self.paused,
            "next_tick": iso(self.next_tick),
            "last_tick": iso(self.last_tick),
            "last_job_id": self.last_job_id,
            "last_job_status": None if self.last_job_status is None else str(self.last_job_status),
            "orphaned": self.orphaned,
        }


__all__ = [
    "GRACE",
    "MAX_CATCH_UP",
    "Cadence",
    "CatchUp",
    "Schedule",
    "ScheduleInfo",
    "check_catch_up",
    "check_schedule_name",
    "due_ticks",
]
