"""JSON values both databases store alike: a NUL character and nesting deeper than
MAX_JSON_DEPTH are refused on SQLite exactly as on PostgreSQL, for inputs (nothing
is stored) and outputs (the job fails, its siblings do not)."""

from __future__ import annotations

from typing import Any

import pytest

import taskdb
from taskdb import Admin, InvalidJobInput, JobContext, JobQueueClient, JobStatus
from taskdb.core.jobs import MAX_JSON_DEPTH


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth - 1):
        value = [value]
    return [value]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"name": "nul\x00here"}, "\\\\u0000"),
        ({"list": ["ok", "\x00"]}, "\\\\u0000"),
        (nested(MAX_JSON_DEPTH + 1), "nested deeper"),
        (nested(5000), "nested deeper"),
        # found by hypothesis: PostgreSQL refused these, SQLite stored them
        ({"lone": "\ud800"}, "lone surrogate"),
        (["x\ude00y"], "lone surrogate"),
        ({"key\udfff": 1}, "lone surrogate"),
    ],
)
async def test_unstorable_inputs_are_refused_on_both_dialects(
    db: taskdb.Database, client: JobQueueClient, value: Any, message: str
) -> None:
    with pytest.raises(InvalidJobInput, match=message):
        await client.submit(value)
    with pytest.raises(InvalidJobInput, match=message):
        await client.submit_batch([{"fine": 1}, value])
    assert await Admin(db).list_jobs() == []


async def test_deep_and_escaped_values_within_the_limits_round_trip(
    client: JobQueueClient, serve: Any
) -> None:
    async def echo(value: Any, ctx: JobContext) -> Any:
        return value

    await serve(echo)
    value = {
        "deep": nested(MAX_JSON_DEPTH - 4),
        "backslash": "a\\u0000b \\ud800",
        "unicode": "é\u2028😀",
    }
    assert await (await client.submit(value)).wait(timeout=10) == value


async def test_an_unstorable_output_fails_only_its_job(client: JobQueueClient, serve: Any) -> None:
    async def reply(value: Any, ctx: JobContext) -> Any:
        return "nul\x00" if value == "bad" else value

    await serve(reply, workers=2)
    bad, good = await client.submit_batch(["bad", "good"], max_retries=0)
    with pytest.raises(taskdb.JobError):
        await bad.wait(timeout=10)
    assert await good.wait(timeout=10) == "good"
    job = await bad.get()
    assert (job.status, job.error_code) == (JobStatus.FAILED, "InvalidJobInput")
    assert job.error is not None and "\\u0000" in job.error


async def test_an_output_at_the_nesting_limit_is_stored_on_both_dialects(
    client: JobQueueClient, serve: Any
) -> None:
    """Found by hypothesis: PostgreSQL's batch of outcomes counted its own two levels
    against the limit, failing an output SQLite stored."""

    async def echo(value: Any, ctx: JobContext) -> Any:
        return value

    await serve(echo)
    value = nested(MAX_JSON_DEPTH)
    assert await (await client.submit(value)).wait(timeout=10) == value


async def test_floats_keep_their_type_and_negative_zero_is_refused(
    client: JobQueueClient, serve: Any
) -> None:
    """Found by hypothesis: PostgreSQL's jsonb gave 1e16 back as an int, and -0.0 as
    0.0 (numeric has no negative zero)."""

    async def echo(value: Any, ctx: JobContext) -> Any:
        return value

    await serve(echo)
    value = {"floats": [1e16, -1e16, 1.5e300, 1e308, 2.0**70, 1.5e-7, 0.1], "text": "1e+16 -0.0"}
    output = await (await client.submit(value)).wait(timeout=10)
    assert output == value
    assert all(type(x) is float for x in output["floats"])
    with pytest.raises(InvalidJobInput, match="negative zero"):
        await client.submit({"x": [-0.0]})
