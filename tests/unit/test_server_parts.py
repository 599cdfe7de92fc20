"""The server's parts on their own, without a database: slot accounting, settings,
the claim loop, outcome batches, a run's outcome, the lease schedule and keeper.

The stores they talk to are stand-ins implementing the parts' own small
protocols; the real stores are exercised by tests/integration.
"""

from __future__ import annotations

import asyncio
import math
from collections import namedtuple
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import taskdb
from taskdb.core.jobs import Claim, JobStatus
from taskdb.core.retry import Complete, Fail, Outcome, Retry, RetryPolicy
from taskdb.errors import (
    ConfigurationError,
    InvalidJobInput,
    PermanentJobError,
    StorageError,
)
from taskdb.queue.claimer import Claimer, Slots
from taskdb.queue.config import ServerSettings
from taskdb.queue.context import JobContext
from taskdb.queue.leases import LeaseKeeper, LeaseSchedule
from taskdb.queue.limiters import ConcurrencyLimiter
from taskdb.queue.outcomes import Item, OutcomeWriter, Statuses
from taskdb.queue.runs import GiveBack, Run, cancel_handler, execute
from tests.helpers import FakeClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)
Row = namedtuple("Row", "id attempts max_retries deadline input")


# -- slots and settings ------------------------------------------------------------------


def test_slots_count_free_slots_claims_in_flight_and_the_backlog() -> None:
    slots = Slots(workers=4, batch_size=3)
    assert slots.claimable(held=0) == 3  # capped by the batch
    slots.executing, slots.claiming = 2, 1
    assert slots.claimable(held=3) == 1
    slots.executing, slots.claiming = 0, 0
    assert slots.claimable(held=8) == 0  # outcomes of 2 x workers jobs still unwritten


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("workers", 0),
        ("workers", True),
        ("lease_seconds", math.nan),
        ("lease_seconds", 0),
        ("poll_interval", math.inf),
        ("abort_poll_interval", -1),
        ("stop_timeout", -1),
        ("abort_grace_seconds", math.nan),
        ("batch_size", 0),
        ("retry", 3),
        ("limiter", "fast"),
    ],
)
def test_settings_refuse_nonsense_when_made(option: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=option):
        ServerSettings(**{option: value})


def test_settings_replace_checks_names_and_values() -> None:
    base = ServerSettings(workers=2)
    assert base.replace(poll_interval=0.1).workers == 2
    with pytest.raises(ConfigurationError, match="unknown server setting"):
        base.replace(wokrers=3)
    assert ServerSettings(batch_size=500).claim_batch == 100
    assert ServerSettings(reference_threshold_bytes=-1).threshold == 65_536


def test_a_server_takes_settings_and_keyword_overrides(tmp_path: Any) -> None:
    db = taskdb.connect(f"sqlite:///{tmp_path / 'unused.sqlite3'}")

    async def handler(value: Any, ctx: JobContext) -> Any:
        return value

    server = taskdb.JobQueueServer(db, "q", handler, ServerSettings(workers=3), lease_seconds=9)
    assert (server.workers, server.settings.lease_seconds) == (3, 9)
    assert server.state is taskdb.ServerState.STOPPED
    with pytest.raises(ConfigurationError, match="workers"):
        server.scale_workers(0)
    server.scale_workers(5)
    assert server.workers == server.settings.workers == server.stats().workers == 5


# -- the claim loop ----------------------------------------------------------------------


class Host:
    """A claim host over a list of job ids (no database)."""

    def __init__(self, pending: int, *, fail_first: int = 0) -> None:
        self.pending = list(range(1, pending + 1))
        self.fail_first = fail_first
        self.started: list[int] = []
        self.claims: list[int] = []
        self.accepting = True
        self.held = 0
        self.recording = False
        self.listening = False
        self.idle = asyncio.Event()

    async def claim_rows(self, limit: int, now: datetime) -> list[Any]:
        self.claims.append(limit)
        if self.fail_first:
            self.fail_first -= 1
            raise StorageError("database away")
        taken, self.pending = self.pending[:limit], self.pending[limit:]
        return [Row(i, 1, 0, None, None) for i in taken]

    async def accept(self, jobs: Sequence[Any]) -> int:
        self.started.extend(job.id for job in jobs)
        return len(jobs)

    def listen_for_work(self, idle: bool) -> bool:
        began = idle and not self.listening
        self.listening = idle
        return began

    async def sleep(self, seconds: float | None) -> None:
        if not self.pending:
            self.idle.set()
            self.accepting = False  # stop the loop once there is nothing left
        await asyncio.sleep(0)


async def test_the_claim_loop_claims_batches_until_nothing_is_left() -> None:
    host = Host(pending=7)
    claimer = Claimer(
        host, Slots(workers=3, batch_size=3), ConcurrencyLimiter(100), clock=FakeClock(T0),
        poll_interval=0.01,
    )  # fmt: skip
    await asyncio.wait_for(claimer.run(), 5)
    assert host.started == list(range(1, 8)) and claimer.claimed == 7
    assert host.claims[:3] == [3, 3, 3]
    assert host.listening  # it ran short of work: it listens for more


async def test_a_failed_claim_gives_its_reservation_back_and_backs_off() -> None:
    host = Host(pending=2, fail_first=2)
    limiter = ConcurrencyLimiter(2)
    claimer = Claimer(
        host, Slots(workers=2, batch_size=2), limiter, clock=FakeClock(T0), poll_interval=0.001
    )
    await asyncio.wait_for(claimer.run(), 5)
    assert host.started == [1, 2] and len(host.claims) == 3
    assert limiter.active == 2  # the two failed claims took nothing for good


async def test_the_loop_does_not_claim_while_outcomes_are_written() -> None:
    host = Host(pending=5)
    host.recording = True
    sleeps = 0

    async def sleep(seconds: float | None) -> None:
        nonlocal sleeps
        sleeps += 1
        if sleeps == 3:
            host.accepting = False
        await asyncio.sleep(0)

    host.sleep = sleep  # type: ignore[method-assign]
    claimer = Claimer(
        host, Slots(workers=2, batch_size=2), ConcurrencyLimiter(9), clock=FakeClock(T0),
        poll_interval=0.01,
    )  # fmt: skip
    await asyncio.wait_for(claimer.run(), 5)
    assert host.claims == []  # the outcome write claims for the freed slots instead


# -- outcome batches ---------------------------------------------------------------------


class OutcomeStore:
    """Writes outcomes into a dict; rejects outputs equal to "bad"; fails while ``down``."""

    def __init__(self, down: int = 0) -> None:
        self.down = down
        self.written: dict[int, Outcome] = {}
        self.calls: list[list[int]] = []

    async def finish(self, worker_id: str, items: Sequence[Item], now: datetime) -> Statuses:
        self.calls.append([c.job_id for c, _ in items])
        if self.down:
            self.down -= 1
            raise StorageError("database away")
        if any(isinstance(o, Complete) and o.output == "bad" for _, o in items):
            raise InvalidJobInput("value rejected")
        statuses: Statuses = {}
        for claim, outcome in items:
            self.written[claim.job_id] = outcome
            done = isinstance(outcome, Complete)
            statuses[claim.job_id] = JobStatus.COMPLETED if done else JobStatus.FAILED
        return statuses

    async def finish_and_claim(self, *args: Any, **kwargs: Any) -> tuple[Statuses, list[Any]]:
        raise AssertionError("no slot is free: nothing to claim")


def _writer(store: OutcomeStore, lease: float = 30.0) -> OutcomeWriter:
    host = Host(pending=0)
    host.accepting = False  # draining: outcomes are written without claims
    claimer = Claimer(
        host, Slots(1, 1), ConcurrencyLimiter(1), clock=FakeClock(T0), poll_interval=1
    )
    return OutcomeWriter(
        store, claimer, worker_id="w", queue="q", lease_seconds=lease, clock=FakeClock(T0)
    )


async def test_a_rejected_output_fails_only_its_own_job() -> None:
    store = OutcomeStore()
    items: list[Item] = [(Claim(i, 1), Complete("bad" if i == 2 else i)) for i in (1, 2, 3)]
    statuses = await _writer(store).finish(items)
    assert statuses == {1: JobStatus.COMPLETED, 2: JobStatus.FAILED, 3: JobStatus.COMPLETED}
    rejected = store.written[2]
    assert isinstance(rejected, Fail) and rejected.error_code == "InvalidJobInput"
    assert store.calls[0] == [1, 2, 3]  # tried as a batch first


async def test_outcomes_are_written_through_an_outage_while_the_lease_lasts() -> None:
    store = OutcomeStore(down=2)
    statuses = await _writer(store).record(Claim(7, 1), Complete("ok"))
    assert statuses == {7: JobStatus.COMPLETED} and len(store.calls) == 3


async def test_an_outcome_is_given_up_when_the_lease_has_run_out() -> None:
    store = OutcomeStore(down=10**6)
    assert await _writer(store, lease=0.01).record(Claim(7, 1), Complete("ok")) is None


async def test_outcomes_handed_over_together_are_written_together() -> None:
    store = OutcomeStore()
    writer = _writer(store)
    await asyncio.gather(*(writer.record(Claim(i, 1), Complete(i)) for i in range(1, 5)))
    assert store.calls == [[1, 2, 3, 4]]  # one statement for the four


# -- one run -----------------------------------------------------------------------------


async def _nothing(*args: Any) -> None:
    return None


def _run(deadline: datetime | None = None, attempts: int = 1, max_retries: int = 3) -> Run:
    row = Row(1, attempts, max_retries, deadline, None)
    return Run(row, Claim(1, attempts), JobContext(row, _nothing, lambda e: None))


async def _execute(run: Run, body: Any, clock: FakeClock | None = None) -> Outcome | None:
    policy = RetryPolicy(base_seconds=10, jitter=0)

    async def go() -> Outcome | None:
        return await execute(run, body, clock=clock or FakeClock(T0), retry=policy)

    run.task = asyncio.ensure_future(go())  # type: ignore[arg-type]
    return await run.task  # type: ignore[func-returns-value]


async def test_a_run_completes_fails_or_retries_by_the_policy() -> None:
    async def ok(run: Run) -> Any:
        return Complete({"ok": True})

    async def boom(run: Run) -> Any:
        raise ValueError("boom")

    async def final(run: Run) -> Any:
        raise PermanentJobError("no")

    assert await _execute(_run(), ok) == Complete({"ok": True})
    retry = await _execute(_run(), boom)
    assert isinstance(retry, Retry) and retry.run_after == T0 + timedelta(seconds=10)
    assert retry.error_code == "ValueError"
    failed = await _execute(_run(attempts=4, max_retries=3), boom)
    assert isinstance(failed, Fail) and failed.error == "boom"
    permanent = await _execute(_run(), final)
    assert isinstance(permanent, Fail) and (permanent.error, permanent.error_code) == (
        "no",
        "PermanentJobError",
    )
    assert permanent.traceback is not None and "in final" in permanent.traceback


async def test_a_run_whose_output_cannot_be_stored_is_given_back_uncounted() -> None:
    async def unstorable(run: Run) -> Any:
        raise GiveBack("the database is away")

    run = _run(attempts=1, max_retries=0)
    assert await _execute(run, unstorable) is None
    assert (run.releasing, run.given_back) == (True, True)


async def test_a_run_past_its_deadline_fails_with_deadline_exceeded() -> None:
    async def slow(run: Run) -> Any:
        await asyncio.sleep(30)

    outcome = await _execute(_run(deadline=T0 + timedelta(seconds=0.05)), slow)
    assert outcome == Fail("deadline exceeded while running", "DeadlineExceeded")


async def _started(run: Run) -> asyncio.Future[Outcome | None]:
    """``run`` executing a handler that waits, once the handler has started."""
    started = asyncio.Event()

    async def waits(run: Run) -> Any:
        started.set()
        await asyncio.sleep(30)

    outcome = asyncio.ensure_future(_execute(run, waits))
    await started.wait()
    return outcome


@pytest.mark.parametrize(
    ("how", "expected"),
    [("abort", Fail("aborted", "AbortedJobError")), ("release", None), ("lose", None)],
)
async def test_a_run_cancelled_by_the_server_says_why(how: str, expected: Outcome | None) -> None:
    run = _run()
    outcome = await _started(run)
    run.releasing, run.lost = how == "release", how == "lose"
    cancel_handler(run)
    assert await outcome == expected


async def test_a_cancellation_that_is_not_the_servers_propagates() -> None:
    run = _run()
    outcome = await _started(run)
    assert run.task is not None
    run.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outcome


# -- leases ------------------------------------------------------------------------------


def test_the_lease_schedule_beats_every_third_and_reaps_at_most_every_five_seconds() -> None:
    schedule = LeaseSchedule(30.0, 0.5, last_beat=0.0, last_reap=0.0)
    assert schedule.tick == 0.5
    assert schedule.due(4.9) == (False, False)
    assert schedule.due(5.0) == (False, True)
    assert schedule.due(10.0) == (True, True)
    schedule.done(10.0, beat=True, reap=False)
    assert schedule.due(12.0) == (False, True)
    assert LeaseSchedule(3.0, 0.5).tick == 0.5 and LeaseSchedule(0.9, 0.5).tick == 0.3


class LeaseStore:
    def __init__(
        self,
        held: dict[int, JobStatus],
        aborting: set[int],
        reaped: int,
        strays: Sequence[int] = (),
    ) -> None:
        self.held, self.aborts, self.reaped, self.strays = held, aborting, reaped, strays
        self.known: list[Claim] = []

    async def heartbeat(
        self, worker_id: str, claims: Sequence[Claim], now: datetime, lease_seconds: float
    ) -> dict[int, JobStatus]:
        return {c.job_id: s for c in claims if (s := self.held.get(c.job_id)) is not None}

    async def aborting(self, claims: Sequence[Claim]) -> set[int]:
        return self.aborts

    async def reap(self, queue: str, now: datetime) -> int:
        return self.reaped

    async def release_strays(
        self, worker_id: str, known: Sequence[Claim], now: datetime, lease_seconds: float
    ) -> list[int]:
        self.known = list(known)
        return list(self.strays)


class LeaseHost:
    def __init__(self, claims: list[Claim]) -> None:
        self.claims = claims
        self.lost_claims: list[Claim] = []
        self.aborted: list[int] = []
        self.woken = 0

    def held_claims(self) -> list[Claim]:
        return self.claims

    def known_claims(self) -> list[Claim]:
        return [*self.claims, Claim(9, 1)]  # (one being recorded)

    def lost(self, claim: Claim) -> None:
        self.lost_claims.append(claim)

    def abort(self, job_id: int) -> None:
        self.aborted.append(job_id)

    def wake(self) -> None:
        self.woken += 1

    def beat(self) -> None:
        pass


async def test_the_lease_keeper_cancels_lost_jobs_and_forwards_aborts() -> None:
    claims = [Claim(1, 1), Claim(2, 1), Claim(3, 2)]
    store = LeaseStore({1: JobStatus.PROCESSING, 3: JobStatus.ABORTING}, {1}, reaped=2)
    host = LeaseHost(claims)
    keeper = LeaseKeeper(
        host, store, LeaseSchedule(30, 0.5), worker_id="w", queue="q", clock=FakeClock(T0)
    )
    await keeper.once(beat=True, reap=False)
    assert host.lost_claims == [Claim(2, 1)] and host.aborted == [3] and host.woken == 0
    await keeper.once(beat=False, reap=True)  # between beats: aborts are polled
    assert host.aborted == [3, 1] and host.woken == 1
    assert store.known == [*claims, Claim(9, 1)]  # strays: every claim it knows is spared


async def test_the_lease_keeper_wakes_its_server_for_released_strays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = LeaseStore({}, set(), reaped=0, strays=[4, 7])
    host = LeaseHost([])
    keeper = LeaseKeeper(
        host, store, LeaseSchedule(30, 0.5), worker_id="w", queue="q", clock=FakeClock(T0)
    )
    await keeper.once(beat=False, reap=True)
    assert host.woken == 1
    assert "job(s) 4, 7, held by this worker but not run by it, given back" in caplog.text
