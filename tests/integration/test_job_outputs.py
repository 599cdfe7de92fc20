"""Job outputs as small rows: bytes, Blobs and chunk streams become refs or inline
bytes; refs resolve from another connection and another process; blobs follow
the job's life (both dialects)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

import taskdb
from taskdb import (
    Blob,
    GraphJobHandler,
    JobContext,
    JobQueueClient,
    RetryPolicy,
    SqlTaskOutputRepository,
    TaskGraph,
    is_cache_ref,
    resolve_job_output,
    submit_graph,
)
from taskdb.graph.registry import register_task
from taskdb.store.blobs import BlobStore
from taskdb.streams import BinaryDelta, Finish, Phase, TextDelta
from tests.graph.tasks import Bytes, Length, Words

MIB = 1024 * 1024


async def pattern(total: int, chunk: int = MIB) -> AsyncIterator[bytes]:
    for start in range(0, total, chunk):
        yield bytes([start // chunk % 256]) * min(chunk, total - start)


def digest_of(total: int, chunk: int = MIB) -> str:
    h = hashlib.sha256()
    for start in range(0, total, chunk):
        h.update(bytes([start // chunk % 256]) * min(chunk, total - start))
    return h.hexdigest()


async def row_output_bytes(db: taskdb.Database, job_id: int) -> int:
    async with db.transaction(write=False) as conn:
        raw = await conn.scalar(
            text("SELECT output FROM taskdb_jobs WHERE id = :id"), {"id": job_id}
        )
    return len(raw if isinstance(raw, str) else json.dumps(raw))


async def test_binary_values_at_any_depth_become_refs_or_inline_bytes(
    db: taskdb.Database, db_url: str, serve: Callable[..., Any]
) -> None:
    async def handler(input: Any, ctx: JobContext) -> Any:
        ctx.emit_stream_event(TextDelta("log", "side channel only"))
        return {
            "small": b"abc",
            "image": Blob(b"\x89PNG" + bytes(5 * MIB), mime="image/png"),
            "nested": [{"stream": pattern(3 * MIB)}, "plain"],
            "short_stream": pattern(10, chunk=4),
        }

    await serve(handler)
    client = JobQueueClient(db, "q", poll_interval=0.02)
    handle = await client.submit({})
    output = await handle.wait(timeout=60)
    assert await row_output_bytes(db, handle.id) < 1024
    assert output["small"] == b"abc"  # inlined losslessly, back as bytes
    assert output["short_stream"] == b"\x00" * 4 + b"\x01" * 4 + b"\x02" * 2
    image, stream = output["image"], output["nested"][0]["stream"]
    assert is_cache_ref(image) and image["size"] == 5 * MIB + 4 and image["mime"] == "image/png"
    assert is_cache_ref(stream) and stream["size"] == 3 * MIB
    assert output["nested"][1] == "plain"

    other = taskdb.connect(db_url)  # a new connection resolves the refs
    try:
        resolved = await resolve_job_output(
            (await client.get(handle.id)).output, SqlTaskOutputRepository(other)
        )
    finally:
        await other.aclose()
    assert isinstance(resolved["image"], Blob) and resolved["image"].mime == "image/png"
    assert resolved["image"].read()[:4] == b"\x89PNG"
    assert hashlib.sha256(resolved["nested"][0]["stream"].read()).hexdigest() == digest_of(3 * MIB)
    assert resolved["small"] == b"abc"


async def test_threshold_zero_makes_every_binary_a_ref(
    db: taskdb.Database, serve: Callable[..., Any]
) -> None:
    async def handler(input: Any, ctx: JobContext) -> Any:
        return {"tiny": b"x"}

    await serve(handler, reference_threshold_bytes=0)
    handle = await JobQueueClient(db, "q", poll_interval=0.02).submit({})
    output = await handle.wait(timeout=30)
    assert is_cache_ref(output["tiny"]) and output["tiny"]["size"] == 1


async def test_a_ref_resolves_in_another_process(
    db: taskdb.Database, db_url: str, serve: Callable[..., Any]
) -> None:
    async def handler(input: Any, ctx: JobContext) -> Any:
        return {"data": pattern(2 * MIB + 5)}

    await serve(handler)
    handle = await JobQueueClient(db, "q", poll_interval=0.02).submit({})
    await handle.wait(timeout=60)
    script = (
        "import asyncio, hashlib, sys, taskdb\n"
        "async def main():\n"
        "    db = taskdb.connect(sys.argv[1])\n"
        "    job = await taskdb.JobQueueClient(db, 'q').get(int(sys.argv[2]))\n"
        "    repo = taskdb.SqlTaskOutputRepository(db)\n"
        "    h = hashlib.sha256()\n"
        "    async for chunk in await repo.get_output_stream_by_ref(job.output['data']):\n"
        "        h.update(chunk)\n"
        "    print(h.hexdigest())\n"
        "    await db.aclose()\n"
        "asyncio.run(main())\n"
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, db_url, str(handle.id)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == digest_of(2 * MIB + 5)


async def test_a_stream_failing_midway_commits_no_blob(
    db: taskdb.Database, serve: Callable[..., Any]
) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield bytes(MIB)
        yield bytes(MIB)
        raise OSError("camera unplugged")

    async def handler(input: Any, ctx: JobContext) -> Any:
        return {"video": broken()}

    await serve(handler, retry=RetryPolicy(base_seconds=0.0, jitter=0.0))
    handle = await JobQueueClient(db, "q", poll_interval=0.02).submit({}, max_retries=0)
    with pytest.raises(taskdb.JobError, match="camera unplugged"):
        await handle.wait(timeout=30)
    store = BlobStore(db)
    assert await store.list_blobs() == []
    report = await store.gc(grace_seconds=0, stale_seconds=0)
    assert report.blobs_removed == 0


async def test_purging_a_job_releases_its_blobs(
    db: taskdb.Database, serve: Callable[..., Any]
) -> None:
    async def handler(input: Any, ctx: JobContext) -> Any:
        return {"data": pattern(MIB)}

    await serve(handler, reference_threshold_bytes=0)
    client = JobQueueClient(db, "q", poll_interval=0.02)
    handle = await client.submit({})
    await handle.wait(timeout=30)
    store = BlobStore(db)
    assert len(await store.list_blobs()) == 1
    assert (await store.gc(grace_seconds=0)).blobs_removed == 0  # linked to the job
    assert await client.purge(timedelta(0)) == 1
    assert await store.list_blobs() == []


@register_task
class FailOnce(Length):
    """Runs after both producers (it also takes the bytes), failing ``failures`` times."""

    type = "test.FailOnce"
    input_schema = {"properties": {"text": {"type": "string"}, "data": {}}}
    failures = 0

    async def execute(self, inputs: dict[str, Any], ctx: Any) -> dict[str, Any]:
        if FailOnce.failures:
            FailOnce.failures -= 1
            raise RuntimeError("worker hiccup")
        return await super().execute(inputs, ctx)


for _cls in (Words, Bytes):
    register_task(_cls)


async def test_a_graph_job_stores_refs_and_resumes_without_rerunning(
    db: taskdb.Database, serve: Callable[..., Any]
) -> None:
    FailOnce.failures = 1
    graph = TaskGraph()
    graph.add(Words("words", count=3))
    graph.add(FailOnce("length"))
    graph.add(Bytes("bytes", chunks=3, size=MIB))
    graph.connect("words", "text", "length", "text")
    graph.connect("bytes", "data", "length", "data")
    Words.runs = Bytes.runs = 0
    await serve(GraphJobHandler(db), retry=RetryPolicy(base_seconds=0.0, jitter=0.0))
    client = JobQueueClient(db, "q", poll_interval=0.02)
    handle = await submit_graph(client, graph, max_retries=2)
    output = await handle.wait(timeout=60)
    assert (await client.get(handle.id)).attempts == 2
    assert (Words.runs, Bytes.runs) == (1, 1)  # the retry reused the saved outputs
    assert output["outputs"]["length"] == {"length": len("w0 w1 w2 ")}
    ref = output["outputs"]["bytes"]["data"]
    assert is_cache_ref(ref) and ref["size"] == 3 * MIB
    assert await row_output_bytes(db, handle.id) < 1024
    resolved = await resolve_job_output(output, SqlTaskOutputRepository(db))
    assert resolved["outputs"]["bytes"]["data"].size == 3 * MIB


async def test_a_graph_job_streams_its_tasks_durably(
    db: taskdb.Database, serve: Callable[..., Any]
) -> None:
    graph = TaskGraph()
    graph.add(Words("words", count=3))
    graph.add(Bytes("bytes", chunks=2, size=10))
    await serve(GraphJobHandler(db))
    client = JobQueueClient(db, "q", poll_interval=0.02)
    handle = await submit_graph(client, graph, durable_stream=True)
    events = [event async for _, event in client.follow(handle.id)]
    texts = [e.text for e in events if isinstance(e, TextDelta) and e.port == "words.text"]
    assert texts == ["w0 ", "w1 ", "w2 "]
    chunks = [e.chunk for e in events if isinstance(e, BinaryDelta)]
    assert chunks == [b"\x00" * 10, b"\x01" * 10]
    assert Phase("words: start", 0.0) in events
    finish = events[-1]
    assert isinstance(finish, Finish)
    assert set(finish.data["output"]["outputs"]) == {"words", "bytes"}
