"""The job store contract, on both dialects, with an injected clock (no sleeps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import taskdb
from taskdb.core.jobs import ChangeKind, Claim, JobOptions, JobStatus, NewJob, input_digest
from taskdb.core.retry import Complete, Fail, Retry
from taskdb.errors import JobNotFound, LeaseLost, StorageError
from taskdb.store.feed import ChangeFeed
from taskdb.store.jobs import JobStore
from taskdb.store.rates import RateWindow

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
Q = "q"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


Item = tuple[NewJob, JobOptions]


def new(value: Any = None, *, fingerprint: str | None = None, **options: Any) -> Item:
    """A job to submit: the NewJob and the options it is submitted with."""
    value = {"v": 1} if value is None else value
    options.setdefault("run_after", T0)
    options.setdefault("max_retries", 3)
    return NewJob.of(value, fingerprint), JobOptions(**options)


async def submit(store: JobStore, queue: str, items: list[Item], now: datetime) -> list[int]:
    """Submit ``items`` in one call (the options of one submit are shared)."""
    (options,) = {o for _, o in items}
    return await store.submit(queue, options, [n for n, _ in items], now)


@pytest.fixture
def store(db: taskdb.Database) -> JobStore:
    return JobStore(db)


async def test_submit_returns_ids_in_order_and_records_changes(store: JobStore) -> None:
    ids = await submit(store, Q, [new({"i": i}) for i in range(5)], T0)
    assert ids == sorted(ids) and len(set(ids)) == 5
    jobs = {j.id: j for j in await store.list_jobs(queue=Q)}
    assert [jobs[i].input for i in ids] == [{"i": i} for i in range(5)]
    assert all(j.status is JobStatus.PENDING and j.attempts == 0 for j in jobs.values())
    changes = await ChangeFeed(store.db).changes(0)
    assert [(c.job_id, c.kind) for c in changes] == [(i, ChangeKind.SUBMITTED) for i in ids]


async def test_claim_order_priority_then_run_after_then_submission(store: JobStore) -> None:
    low = await submit(store, Q, [new(priority=0)], T0)
    late = await submit(store, Q, [new(priority=5, run_after=at(-10))], T0)
    early = await submit(store, Q, [new(priority=5, run_after=at(-20))], T0)
    high_a, high_b = await submit(store, Q, [new(priority=9), new(priority=9)], T0)
    claimed = await store.claim(Q, "w", 10, T0, 30)
    assert [j.id for j in claimed] == [high_a, high_b, *early, *late, *low]
    assert all(j.status is JobStatus.PROCESSING and j.attempts == 1 for j in claimed)
    assert all(j.worker_id == "w" and j.lease_expires_at == at(30) for j in claimed)


async def test_claim_respects_run_after_queue_and_limit(store: JobStore) -> None:
    (future,) = await submit(store, Q, [new(run_after=at(60))], T0)
    await submit(store, "other", [new()], T0)
    now_ids = await submit(store, Q, [new(), new(), new()], T0)
    assert [j.id for j in await store.claim(Q, "w", 2, T0, 30)] == now_ids[:2]
    assert [j.id for j in await store.claim(Q, "w", 10, T0, 30)] == now_ids[2:]
    assert await store.claim(Q, "w", 10, at(59), 30) == []
    assert [j.id for j in await store.claim(Q, "w", 10, at(60), 30)] == [future]


async def test_no_job_is_claimed_twice(store: JobStore) -> None:
    await submit(store, Q, [new({"i": i}) for i in range(50)], T0)
    seen: list[int] = []
    for worker in range(20):
        seen += [j.id for j in await store.claim(Q, f"w{worker}", 7, T0, 30)]
    assert len(seen) == len(set(seen)) == 50


async def test_fingerprint_dedupes_only_active_jobs(store: JobStore) -> None:
    a = await submit(store, Q, [new(fingerprint="fp")], T0)
    b = await submit(store, Q, [new({"other": True}, fingerprint="fp")], T0)
    assert a == b
    assert len(await store.list_jobs(queue=Q)) == 1
    # the same fingerprint on another queue is another job
    assert await submit(store, "other", [new(fingerprint="fp")], T0) != a
    # once the job ended, the fingerprint is free again
    (job,) = await store.claim(Q, "w", 1, T0, 30)
    await store.finish("w", [(Claim(job.id, 1), Complete({"ok": 1}))], T0)
    c = await submit(store, Q, [new(fingerprint="fp")], T0)
    assert c != a
    # duplicates inside one batch collapse onto the first
    d = await submit(store, Q, [new(fingerprint="x"), new(), new(fingerprint="x")], T0)
    assert d[0] == d[2] != d[1]


async def test_finish_is_fenced_by_worker_and_attempt(store: JobStore) -> None:
    (job_id,) = await submit(store, Q, [new()], T0)
    (job,) = await store.claim(Q, "a", 1, T0, 10)
    stale = Claim(job_id, job.attempts)
    assert await store.reap(Q, at(11)) == 1  # a's lease ran out: back to PENDING
    assert (await store.get(job_id)).status is JobStatus.PENDING
    (again,) = await store.claim(Q, "b", 1, at(12), 10)
    assert again.attempts == 2
    assert await store.finish("a", [(stale, Complete({"from": "a"}))], at(13)) == {}
    with pytest.raises(LeaseLost):
        await store.update_progress("a", stale, 50, None, None, at(13))
    fresh = Claim(job_id, again.attempts)
    assert await store.finish("b", [(fresh, Complete({"from": "b"}))], at(13)) == {
        job_id: JobStatus.COMPLETED
    }
    row = await store.get(job_id)
    assert row.output == {"from": "b"} and row.completed_at == at(13) and row.worker_id is None
    # a second completion (replay) is refused too
    assert await store.finish("b", [(fresh, Complete({"again": 1}))], at(14)) == {}


async def test_finish_batch_mixes_outcomes(store: JobStore) -> None:
    ids = await submit(store, Q, [new({"i": i}) for i in range(4)], T0)
    claimed = await store.claim(Q, "w", 4, T0, 30)
    c = [Claim(j.id, j.attempts) for j in claimed]
    outs = [
        (c[0], Complete({"n": 1})),
        (c[1], Complete("plain string")),
        (c[2], Retry(at(100), "flaky", "RetryableJobError")),
        (c[3], Fail("broken", "PermanentJobError")),
    ]
    result = await store.finish("w", outs, at(1))
    assert result == {
        ids[0]: JobStatus.COMPLETED,
        ids[1]: JobStatus.COMPLETED,
        ids[2]: JobStatus.PENDING,
        ids[3]: JobStatus.FAILED,
    }
    rows = {j.id: j for j in await store.list_jobs(queue=Q)}
    assert rows[ids[0]].output == {"n": 1}
    assert rows[ids[1]].output == "plain string"
    assert rows[ids[2]].run_after == at(100) and rows[ids[2]].error == "flaky"
    assert rows[ids[3]].error_code == "PermanentJobError" and rows[ids[3]].completed_at == at(1)
    kinds = [
        c.kind
        for c in await ChangeFeed(store.db).changes(0)
        if c.kind not in ("submitted", "claimed")
    ]
    assert sorted(kinds) == ["completed", "completed", "failed", "retried"]
    # the retried job is claimable again only at its run_after
    assert await store.claim(Q, "w", 5, at(99), 30) == []
    assert [j.id for j in await store.claim(Q, "w", 5, at(100), 30)] == [ids[2]]


async def test_finish_and_claim_writes_outcomes_then_takes_new_jobs(store: JobStore) -> None:
    ids = await submit(store, Q, [new({"i": i}) for i in range(5)], T0)
    a, b = await store.claim(Q, "w", 2, T0, 30)
    stale = Claim(ids[4], 1)  # never claimed by w: fenced off
    outs = [
        (Claim(a.id, 1), Complete("done")),
        (Claim(b.id, 1), Retry(T0, "again", "RetryableJobError")),  # runnable at once
        (stale, Complete("not mine")),
    ]
    statuses, claimed = await store.finish_and_claim(
        "w", outs, at(1), queue=Q, limit=2, lease_seconds=30
    )
    assert statuses == {a.id: JobStatus.COMPLETED, b.id: JobStatus.PENDING}
    # the next two in order; b, retried by this very call, is not taken back by it
    assert [j.id for j in claimed] == ids[2:4]
    assert [(j.status, j.worker_id, j.attempts) for j in claimed] == [("PROCESSING", "w", 1)] * 2
    kinds = [
        (c.job_id, c.kind) for c in await ChangeFeed(store.db).changes(0) if c.kind != "submitted"
    ]
    assert sorted(kinds[2:]) == sorted(
        [(a.id, "completed"), (b.id, "retried"), (ids[2], "claimed"), (ids[3], "claimed")]
    )
    # nothing to write, or nothing left to claim: either half alone
    statuses, claimed = await store.finish_and_claim(
        "w", [], at(2), queue=Q, limit=5, lease_seconds=30
    )
    assert statuses == {} and {j.id for j in claimed} == {b.id, ids[4]}
    done = [(Claim(j.id, j.attempts), Complete(None)) for j in claimed]
    statuses, claimed = await store.finish_and_claim(
        "w", done, at(3), queue=Q, limit=5, lease_seconds=30
    )
    assert set(statuses) == {b.id, ids[4]} and claimed == []


async def test_lease_expiry_requeues_then_fails_when_out_of_retries(store: JobStore) -> None:
    (job_id,) = await submit(store, Q, [new(max_retries=1)], T0)
    await store.claim(Q, "w", 1, T0, 10)
    assert await store.reap(Q, at(10)) == 0  # not yet expired
    assert await store.reap(Q, at(11)) == 1
    row = await store.get(job_id)
    assert row.status is JobStatus.PENDING and row.error_code == "LeaseExpired"
    await store.claim(Q, "w2", 1, at(12), 10)
    assert await store.reap(Q, at(30)) == 1
    row = await store.get(job_id)
    assert row.status is JobStatus.FAILED and row.attempts == 2
    assert row.error_code == "LeaseExpired"
    kinds = [c.kind for c in await ChangeFeed(store.db).changes(0, job_id=job_id)]
    assert kinds == ["submitted", "claimed", "requeued", "claimed", "failed"]


async def test_heartbeat_extends_lease_and_reports_aborts(store: JobStore) -> None:
    a, b = await submit(store, Q, [new(), new()], T0)
    jobs = await store.claim(Q, "w", 2, T0, 10)
    claims = [Claim(j.id, j.attempts) for j in jobs]
    await store.abort(at(1), job_id=b)
    held = await store.heartbeat("w", claims, at(5), 10)
    assert held == {a: JobStatus.PROCESSING, b: JobStatus.ABORTING}
    assert await store.aborting(claims) == {b}
    assert await store.reap(Q, at(14)) == 0  # the heartbeat moved the lease to at(15)
    assert (await store.get(a)).lease_expires_at == at(15)
    assert await store.heartbeat("intruder", claims, at(6), 10) == {}


async def test_abort_pending_running_and_finished(store: JobStore) -> None:
    first, second, waiting = await submit(store, Q, [new(), new(), new()], T0)
    assert [j.id for j in await store.claim(Q, "w", 2, T0, 30)] == [first, second]
    assert await store.abort(at(1), job_id=waiting) == 1
    row = await store.get(waiting)
    assert row.status is JobStatus.FAILED and row.error_code == "AbortedJobError"
    assert await store.abort(at(1), job_id=first) == 1
    assert (await store.get(first)).status is JobStatus.ABORTING
    # the running job's worker finishes: abort wins over completion or retry
    result = await store.finish(
        "w",
        [
            (Claim(first, 1), Complete({"late": True})),
            (Claim(second, 1), Retry(at(50), "again", "RetryableJobError")),
        ],
        at(2),
    )
    assert result == {first: JobStatus.FAILED, second: JobStatus.PENDING}
    row = await store.get(first)
    assert row.output is None and row.error_code == "AbortedJobError"
    # aborting an ended job changes nothing; an unknown id raises
    assert await store.abort(at(3), job_id=first) == 0
    with pytest.raises(JobNotFound):
        await store.abort(at(3), job_id=999_999)


async def test_abort_run_aborts_every_job_of_the_run(store: JobStore) -> None:
    ids = await submit(store, Q, [new(job_run_id="run-1"), new(job_run_id="run-1")], T0)
    other = await submit(store, Q, [new(job_run_id="run-2")], T0)
    assert await store.abort(T0, job_run_id="run-1") == 2
    assert [(await store.get(i)).status for i in ids] == [JobStatus.FAILED] * 2
    assert (await store.get(other[0])).status is JobStatus.PENDING


async def test_abort_wins_over_a_pending_retry(store: JobStore) -> None:
    (job_id,) = await submit(store, Q, [new()], T0)
    await store.claim(Q, "w", 1, T0, 30)
    await store.finish("w", [(Claim(job_id, 1), Retry(at(60), "x", "ValueError"))], at(1))
    assert await store.abort(at(2), job_id=job_id) == 1
    row = await store.get(job_id)
    assert row.status is JobStatus.FAILED and row.error_code == "AbortedJobError"
    assert await store.claim(Q, "w", 1, at(61), 30) == []


async def test_aborting_job_whose_worker_died_fails_at_lease_expiry(store: JobStore) -> None:
    (job_id,) = await submit(store, Q, [new()], T0)
    await store.claim(Q, "w", 1, T0, 10)
    await store.abort(at(1), job_id=job_id)
    assert await store.reap(Q, at(11)) == 1
    row = await store.get(job_id)
    assert row.status is JobStatus.FAILED and row.error_code == "AbortedJobError"


async def test_deadline_fails_pending_job_and_blocks_claim(store: JobStore) -> None:
    (job_id,) = await submit(store, Q, [new(deadline=at(5))], T0)
    assert await store.claim(Q, "w", 1, at(5), 30) == []
    assert await store.reap(Q, at(5)) == 1
    row = await store.get(job_id)
    assert row.status is JobStatus.FAILED and row.error_code == "DeadlineExceeded"


async def test_release_returns_job_without_counting_the_attempt(store: JobStore) -> None:
    (job_id,) = await submit(store, Q, [new()], T0)
    (job,) = await store.claim(Q, "w", 1, T0, 30)
    assert await store.release("w", [Claim(job_id, job.attempts)], at(1)) == 1
    row = await store.get(job_id)
    assert row.status is JobStatus.PENDING and row.attempts == 0 and row.worker_id is None


async def test_strays_go_back_uncounted_and_known_or_fresh_claims_stay(store: JobStore) -> None:
    """A stray: held by the worker, unknown to it, its lease not renewed for half a
    lease (a claim whose answer never arrived). Claims it knows, another worker's,
    and claims too recent to be strays are left alone."""
    ids = await submit(store, Q, [new({"i": i}) for i in range(5)], T0)
    stray, known = await store.claim(Q, "w", 2, T0, 30)
    (other,) = await store.claim(Q, "other", 1, T0, 30)
    (fresh,) = await store.claim(Q, "w", 1, at(10), 30)
    assert await store.release_strays("w", [Claim(known.id, 1)], at(14), 30) == []  # < lease/2
    assert await store.release_strays("w", [Claim(known.id, 1)], at(16), 30) == [stray.id]
    rows = {j.id: j for j in await store.list_jobs(queue=Q)}
    assert (rows[stray.id].status, rows[stray.id].attempts) == (JobStatus.PENDING, 0)
    assert rows[stray.id].worker_id is None
    for held in (known, other, fresh):
        assert rows[held.id].status is JobStatus.PROCESSING and rows[held.id].attempts == 1
    changes = await ChangeFeed(store.db).changes(0)
    assert [c.job_id for c in changes if c.kind is ChangeKind.RELEASED] == [stray.id]
    assert ids[4] not in {stray.id, known.id, other.id, fresh.id}


def _lost_answer() -> StorageError:
    err = StorageError("database connection lost: (the answer never arrived)")
    err.retryable = True
    return err


async def test_writes_that_committed_before_their_answer_was_lost_return_what_they_wrote(
    store: JobStore,
) -> None:
    """The worker's writes, once committed and their answer lost, are not run again
    (tests/integration/test_resilience.py loses real answers through a proxy)."""
    ids = await submit(store, Q, [new({"i": i}) for i in range(3)], T0)
    claim_values = store._claim_values(Q, "w", 2, at(1), 30)

    async def claimed_then_lost() -> tuple[list[Any], dict[int, JobStatus]]:
        await store._claim(Q, claim_values, None)
        raise _lost_answer()

    claimed, _ = await store._after_lost(claimed_then_lost, claim_values, ())
    assert [(r.id, r.attempts) for r in claimed] == [(ids[0], 1), (ids[1], 1)]
    items = [(Claim(r.id, r.attempts), Complete(r.input)) for r in claimed]
    values = store._finish_values("w", items, at(2))

    async def finished_then_lost() -> tuple[list[Any], dict[int, JobStatus]]:
        await store._finish(values, items)
        raise _lost_answer()

    _, statuses = await store._after_lost(finished_then_lost, values, items, claims=False)
    assert statuses == {ids[0]: JobStatus.COMPLETED, ids[1]: JobStatus.COMPLETED}
    rows = {j.id: j for j in await store.list_jobs(queue=Q)}
    assert [(rows[i].status, rows[i].attempts) for i in ids] == [
        (JobStatus.COMPLETED, 1),
        (JobStatus.COMPLETED, 1),
        (JobStatus.PENDING, 0),
    ]


async def test_a_claim_made_again_at_the_same_instant_has_its_own_lease_end(
    store: JobStore,
) -> None:
    """What a claim wrote is found by its worker and lease end, so two claims of one
    worker never share one, even with a clock that stands still."""
    await submit(store, Q, [new({"i": i}) for i in range(2)], T0)
    (first,) = await store.claim(Q, "w", 1, T0, 30)
    (second,) = await store.claim(Q, "w", 1, T0, 30)
    assert first.lease_expires_at is not None and second.lease_expires_at is not None
    assert second.lease_expires_at > first.lease_expires_at >= at(30)


async def test_progress_is_stored_and_recorded(store: JobStore) -> None:
    (job_id,) = await submit(store, Q, [new()], T0)
    (_job,) = await store.claim(Q, "w", 1, T0, 30)
    status = await store.update_progress("w", Claim(job_id, 1), 42.5, "halfway", {"step": 3}, at(1))
    assert status is JobStatus.PROCESSING
    row = await store.get(job_id)
    assert (row.progress, row.progress_message, row.progress_details) == (
        42.5,
        "halfway",
        {"step": 3},
    )
    changes = [
        c for c in await ChangeFeed(store.db).changes(0, job_id=job_id) if c.kind == "progress"
    ]
    assert [c.progress for c in changes] == [42.5]


async def test_purge_deletes_old_terminal_jobs_only(store: JobStore) -> None:
    old, recent, running = await submit(store, Q, [new(), new(), new()], T0)
    jobs = await store.claim(Q, "w", 3, T0, 3600)
    claims = {j.id: Claim(j.id, j.attempts) for j in jobs}
    await store.finish("w", [(claims[old], Complete(1))], at(10))
    await store.finish("w", [(claims[recent], Fail("x", "PermanentJobError"))], at(100))
    assert await store.purge(at(50), at(200)) == 1
    remaining = {j.id for j in await store.list_jobs(queue=Q)}
    assert remaining == {recent, running}
    assert [c.kind for c in await ChangeFeed(store.db).changes(0, job_id=old)][-1] == "purged"
    assert await store.purge(at(1000), at(1000), statuses=["COMPLETED"]) == 0
    assert await store.purge(at(1000), at(1000), statuses=["FAILED"]) == 1


async def test_retry_now_requeues_a_failed_job(store: JobStore) -> None:
    (job_id,) = await submit(store, Q, [new(max_retries=0)], T0)
    (_job,) = await store.claim(Q, "w", 1, T0, 30)
    await store.finish("w", [(Claim(job_id, 1), Fail("boom", "ValueError"))], at(1))
    assert await store.retry_now(job_id, at(2)) is True
    row = await store.get(job_id)
    assert row.status is JobStatus.PENDING and row.max_retries >= row.attempts
    assert await store.retry_now(job_id, at(2)) is False  # not failed any more
    with pytest.raises(JobNotFound):
        await store.retry_now(424242, at(2))


async def test_output_for_input_matches_equal_input(store: JobStore) -> None:
    (a,) = await submit(store, Q, [new({"x": 1, "y": [1, 2]})], T0)
    (_job,) = await store.claim(Q, "w", 1, T0, 30)
    await store.finish("w", [(Claim(a, 1), Complete({"sum": 3}))], at(1))
    same = input_digest({"y": [1, 2], "x": 1})  # key order does not matter
    assert await store.output_for_input(Q, same) == (True, {"sum": 3})
    assert await store.output_for_input(Q, input_digest({"x": 2})) == (False, None)
    assert await store.output_for_input("other", same) == (False, None)


async def test_output_for_input_is_the_newest_completed_jobs(store: JobStore) -> None:
    value = {"x": 1}
    for output in ("older", "newest"):
        (job_id,) = await submit(store, Q, [new(value)], T0)
        await store.claim(Q, "w", 1, T0, 30)
        await store.finish("w", [(Claim(job_id, 1), Complete(output))], at(1))
    (failed,) = await submit(store, Q, [new(value, max_retries=0)], T0)
    await store.claim(Q, "w", 1, T0, 30)
    await store.finish("w", [(Claim(failed, 1), Fail("boom", "ValueError"))], at(1))
    await submit(store, Q, [new(value)], T0)  # newer still, and pending
    assert await store.output_for_input(Q, input_digest(value)) == (True, "newest")


async def test_rate_slots_hold_a_sliding_window(db: taskdb.Database) -> None:
    window = RateWindow(db)
    ids, nxt = await window.take(Q, 5, 3, 10, T0)
    assert len(ids) == 3 and nxt == at(10)
    ids2, nxt2 = await window.take(Q, 1, 3, 10, at(5))
    assert ids2 == [] and nxt2 == at(10)
    await window.give_back(ids[:1])
    ids3, _ = await window.take(Q, 2, 3, 10, at(5))
    assert len(ids3) == 1
    ids4, _ = await window.take(Q, 3, 3, 10, at(10.5))
    assert len(ids4) == 2  # the hits at T0 aged out, the one at 5 still counts


async def test_unknown_job_raises(store: JobStore) -> None:
    with pytest.raises(JobNotFound, match="999"):
        await store.get(999)


async def test_none_and_other_json_scalars_are_valid_inputs(store: JobStore) -> None:
    values: list[Any] = [None, 0, "", [], False]
    options = JobOptions(run_after=T0, max_retries=0)
    ids = await store.submit(Q, options, [NewJob.of(v) for v in values], T0)
    assert [(await store.get(i)).input for i in ids] == values
    claimed = await store.claim(Q, "w", 10, T0, 30)
    assert [j.input for j in claimed] == values


async def test_claimed_rows_carry_utc_datetimes(store: JobStore) -> None:
    await submit(store, Q, [new(deadline=at(60))], T0)
    (job,) = await store.claim(Q, "w", 1, T0, 30)
    for when in (job.run_after, job.deadline, job.lease_expires_at, job.created_at):
        assert when is not None and when.tzinfo is UTC
    assert job.lease_expires_at == at(30)
