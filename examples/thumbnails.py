"""A worker module and a producer, as a service would split them.

Run a worker (any number, on any machine sharing the database)::

    taskdb migrate
    taskdb worker examples.thumbnails:make_thumbnail --queue thumbnails --concurrency 8

and enqueue from another process::

    python -m examples.thumbnails cat.png dog.png
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import taskdb


async def make_thumbnail(image: dict[str, Any], ctx: taskdb.JobContext) -> dict[str, Any]:
    """The handler: any exception is retried; PermanentJobError is not."""
    name = image.get("name")
    if not isinstance(name, str) or not name:
        raise taskdb.PermanentJobError(f"no image name in {image!r}")
    for step in range(1, 5):
        if ctx.aborting:
            raise taskdb.AbortedJobError("stopped on request")
        await asyncio.sleep(0.05)  # the real work would go here
        await ctx.update_progress(25 * step, f"pass {step}/4")
    return {"thumbnail": f"{name}.thumb.png"}


async def enqueue(names: list[str]) -> None:
    async with taskdb.connect() as db:
        client = taskdb.JobQueueClient(db, "thumbnails")
        handles = await client.submit_batch([{"name": n} for n in names], max_retries=2)
        for handle in handles:
            try:
                print(handle.id, await handle.wait(timeout=60))
            except taskdb.WaitTimeout:
                sys.exit(f"job {handle.id} did not end within 60 s: is a worker running?")
            except taskdb.JobError as exc:
                print(handle.id, f"failed: {exc.error_code}: {exc}")


if __name__ == "__main__":
    try:
        asyncio.run(enqueue(sys.argv[1:] or ["example.png"]))
    except taskdb.TaskdbError as exc:  # the database is unreachable or behind head
        sys.exit(f"error: {exc}")
