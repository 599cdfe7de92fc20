"""`taskdb watch`: the change feed and durable streams, in-process and as a real process."""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import UTC, datetime
from typing import Any

import taskdb
from taskdb.streams import TextDelta
from tests.cli.helpers import Lines, invoke, invoke_failing, reap, run_job, taskdb_process


def kinds(stdout: str) -> list[tuple[int, str]]:
    return [(c["job_id"], c["kind"]) for c in map(json.loads, stdout.splitlines())]


def test_watch_replays_the_feed_of_every_queue_or_one(db_url: str) -> None:
    a = int(invoke("submit", "a", "{}", "--db", db_url).output)
    b = int(invoke("submit", "b", "{}", "--db", db_url).output)
    every = invoke("watch", "--after", "0", "--max-events", "2", "--json", "--db", db_url)
    assert every.exit_code == 0
    assert kinds(every.stdout) == [(a, "submitted"), (b, "submitted")]
    assert "watching every queue" in every.stderr
    one = invoke("watch", "-q", "b", "--after", "0", "--max-events", "1", "--json", "--db", db_url)
    assert kinds(one.stdout) == [(b, "submitted")]
    human = invoke("watch", "--after", "0", "--max-events", "2", "--db", db_url).stdout
    assert [line.split()[1:5] for line in human.splitlines()] == [
        ["a", "job", str(a), "submitted"],
        ["b", "job", str(b), "submitted"],
    ]
    first = json.loads(every.stdout.splitlines()[0])
    resumed = invoke(
        "watch", "--after", first["cursor"], "--max-events", "1", "--json", "--db", db_url
    )
    assert kinds(resumed.stdout) == [(b, "submitted")]


async def progressing(value: Any, ctx: taskdb.JobContext) -> Any:
    await ctx.update_progress(50, "half way")
    if ctx.job.attempts == 1:
        raise taskdb.RetryableJobError("flaky disk", retry_at=datetime.now(UTC))
    return "done"


async def fails(value: Any, ctx: taskdb.JobContext) -> Any:
    await ctx.emit_stream_event(TextDelta("text", "partial"))
    raise taskdb.PermanentJobError("bad input")


def test_watch_a_job_replays_its_history_and_ends_with_it(db_url: str) -> None:
    job_id = run_job(db_url, progressing, max_retries=1)
    result = invoke("watch", "--job", str(job_id), "--after", "0", "--json", "--db", db_url)
    assert result.exit_code == 0
    assert [kind for _, kind in kinds(result.stdout)] == [
        "submitted", "claimed", "progress", "retried", "claimed", "progress", "completed",
    ]  # fmt: skip
    ended = invoke("watch", "--job", str(job_id), "--db", db_url)  # its history, then the end
    assert ended.exit_code == 0 and ended.stdout.count(f"job {job_id} ") == 7
    assert "completed" in ended.stdout.splitlines()[-1]


def test_watch_a_job_exits_like_wait(db_url: str) -> None:
    failed = run_job(db_url, fails)
    result = invoke_failing("watch", "--job", str(failed), "--db", db_url)
    assert result.exit_code == 1 and "failed: PermanentJobError: bad input" in result.stderr
    aborted = invoke("submit", "q", "{}", "--db", db_url).output.strip()
    invoke("job", "abort", aborted, "--db", db_url)
    result = invoke_failing("watch", "--job", aborted, "--db", db_url)
    assert result.exit_code == 2 and "aborted" in result.stderr


def test_watch_timeouts(db_url: str) -> None:
    idle = invoke("watch", "--timeout", "0.2s", "--db", db_url)
    assert idle.exit_code == 0 and idle.stdout == ""
    job_id = invoke("submit", "q", "{}", "--db", db_url).output.strip()
    pending = invoke_failing("watch", "--job", job_id, "--timeout", "0.2s", "--db", db_url)
    assert pending.exit_code == 3
    assert pending.stderr.strip().splitlines()[-1] == f"job {job_id} is still PENDING"
    other = invoke_failing("watch", "--job", job_id, "--queue", "other", "--db", db_url)
    assert other.exit_code == 1 and "is on queue 'q', not 'other'" in other.output


def test_watch_process_prints_transitions_live_and_stops_on_sigterm(db_url: str) -> None:
    proc = taskdb_process("watch", "--poll", "0.05", db_url=db_url)
    try:
        assert proc.stderr is not None
        assert "watching every queue" in proc.stderr.readline()  # subscribed from here on
        lines = Lines(proc)
        job_id = run_job(db_url, progressing, queue="live", max_retries=1)
        lines.wait_for(lambda line: "completed" in line)
        mine = [line.split() for line in lines.seen if f"job {job_id} " in line]
        assert [words[4] for words in mine] == [
            "submitted", "claimed", "progress", "retried", "claimed", "progress", "completed",
        ]  # fmt: skip
        assert mine[2][6] == "50%" and mine[4][6:] == ["attempt", "2"]
        failed = run_job(db_url, fails, queue="live")
        line = lines.wait_for(lambda line: f"job {failed} " in line and "failed" in line)
        assert line.endswith("failed     FAILED     PermanentJobError: bad input"), line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        reap(proc)


def test_watch_follow_stream_process_prints_text_as_it_is_produced(db_url: str) -> None:
    async def main() -> int:
        async with taskdb.connect(db_url) as db:
            client = taskdb.JobQueueClient(db, "talk", poll_interval=0.02)
            handle = await client.submit({}, durable_stream=True)
            proc = taskdb_process(
                "watch", "--job", str(handle.id), "--follow-stream", db_url=db_url
            )
            lines = Lines(proc)

            async def talk(value: Any, ctx: taskdb.JobContext) -> Any:
                await ctx.emit_stream_event(TextDelta("text", "line one\n"))
                # the watcher printed the first line while the job still runs
                await asyncio.to_thread(lines.wait_for, lambda line: line == "line one")
                await ctx.emit_stream_event(TextDelta("text", "line two"))
                return {"ok": True}

            try:
                async with taskdb.JobQueueServer(db, "talk", talk, poll_interval=0.02):
                    await handle.wait(timeout=60)
                code = await asyncio.to_thread(proc.wait, 30)  # it ends with the job
                lines.wait_for(lambda line: line == "line two")
                assert proc.stderr is not None
                assert f"job {handle.id} completed" in proc.stderr.read()
                return code
            finally:
                reap(proc)

    assert asyncio.run(main()) == 0


def test_watch_follow_stream_after_the_end_and_on_failure(db_url: str) -> None:
    async def says(value: Any, ctx: taskdb.JobContext) -> Any:
        for word in ("hello", " ", "world"):
            await ctx.emit_stream_event(TextDelta("text", word))
        return {}

    ok = str(run_job(db_url, says, durable_stream=True))
    done = invoke("watch", "--job", ok, "--follow-stream", "--db", db_url)
    assert done.exit_code == 0 and done.stdout == "hello world\n"
    as_json = invoke("watch", "--job", ok, "--follow-stream", "--json", "--db", db_url).stdout
    events = [json.loads(line) for line in as_json.splitlines()]
    assert [e["offset"] for e in events] == list(range(len(events)))
    assert events[-1]["event"]["type"] == "finish"
    failed = str(run_job(db_url, fails, durable_stream=True))
    result = invoke_failing("watch", "--job", failed, "--follow-stream", "--db", db_url)
    assert result.exit_code == 1 and result.stdout == "partial\n"
    assert result.stderr == f"Error: job {failed} failed: PermanentJobError: bad input\n"
    plain = invoke("submit", "q", "{}", "--db", db_url).output.strip()
    not_durable = invoke_failing("watch", "--job", plain, "--follow-stream", "--db", db_url)
    assert not_durable.exit_code == 1 and "durable_stream=True" in not_durable.output
