"""``taskdb demo``: the durable-jobs story on the embedded SQLite default.

Worker *processes* (``taskdb worker``) serve a queue while this process
submits a batch and follows it only through the database, like a client in
a web app would: live progress bars, one job that fails and is retried, one
that is aborted mid-run, then the results.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import uuid
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from taskdb.errors import AbortedJobError, RetryableJobError
from taskdb.queue.client import JobQueueClient
from taskdb.queue.context import JobContext
from taskdb.queue.models import Job, JobStatus
from taskdb.store.database import connect

QUEUE = "demo"
console = Console()


async def handler(value: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The demo's job: "render" a file in steps, reporting progress."""
    digest = hashlib.sha256(value["name"].encode())
    steps = int(value.get("steps", 10))
    for step in range(1, steps + 1):
        if ctx.aborting:
            raise AbortedJobError("stopped on request")
        await asyncio.sleep(float(value.get("delay", 0.15)))
        digest.update(step.to_bytes(4, "big"))
        if value.get("flaky") and ctx.job.attempts == 1 and step == steps // 2:
            raise RetryableJobError("simulated outage: the storage service timed out")
        await ctx.update_progress(100 * step / steps, f"step {step}/{steps}")
    return {"name": value["name"], "sha256": digest.hexdigest()[:16], "pid": os.getpid()}


def _spawn_workers(db_url: str, count: int) -> list[subprocess.Popen[bytes]]:
    command = [
        sys.executable, "-m", "taskdb", "worker", "taskdb.cli.demo:handler",
        "--db", db_url, "--queue", QUEUE, "--concurrency", "3", "--poll", "0.05",
        "--lease", "5",
    ]  # fmt: skip
    return [subprocess.Popen(command) for _ in range(count)]


def _describe(job: Job) -> str:
    if job.status is JobStatus.COMPLETED:
        return "[green]completed[/]"
    if job.status is JobStatus.FAILED:
        return f"[red]failed[/] ({job.error_code})"
    if job.status is JobStatus.PENDING and job.attempts:
        return f"[yellow]retrying[/] ({job.error})"
    return job.status.value.lower()


async def run_demo(db_url: str, count: int, worker_count: int) -> None:
    db = connect(db_url)
    db.migrate()
    console.rule("[bold]taskdb demo")
    console.print(f"database: {db.safe_url} (SQLite, WAL mode, shared by every process)")
    workers = _spawn_workers(db_url, worker_count)
    console.print(f"started {worker_count} worker processes: `taskdb worker` x{worker_count}")
    run_id = uuid.uuid4().hex[:8]
    client = JobQueueClient(db, QUEUE, poll_interval=0.1)
    try:
        inputs: list[dict[str, Any]] = [
            {"name": f"report-{i}.pdf", "steps": 8 + i % 5} for i in range(count)
        ]
        inputs.append({"name": "flaky-upload.bin", "steps": 10, "flaky": True})
        inputs.append({"name": "huge-export.csv", "steps": 200, "delay": 0.05})
        handles = await client.submit_batch(inputs, job_run_id=run_id, max_retries=2)
        console.print(f"submitted {len(handles)} jobs in one transaction (run {run_id})\n")
        doomed = handles[-1]

        with Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.0f}%"),
            TextColumn("{task.fields[state]}"),
            console=console,
        ) as progress:
            bars: dict[int, TaskID] = {
                h.id: progress.add_task(v["name"], total=100, state="pending")
                for h, v in zip(handles, inputs, strict=True)
            }
            aborted = False
            while True:
                rows = {j.id: j for j in await db_jobs(client, [h.id for h in handles])}
                for job_id, bar in bars.items():
                    job = rows[job_id]
                    progress.update(bar, completed=job.progress, state=_describe(job))
                if not aborted and rows[doomed.id].progress >= 10:
                    await doomed.abort()  # from this process; a worker process cancels it
                    aborted = True
                if all(j.status.terminal for j in rows.values()):
                    break
                await asyncio.sleep(0.1)

        table = Table("job", "name", "status", "runs", "sha256 / error", title="results")
        for h, v in zip(handles, inputs, strict=True):
            job = await client.get(h.id)
            detail = (
                f"{job.output['sha256']} (worker pid {job.output['pid']})"
                if job.status is JobStatus.COMPLETED
                else f"{job.error_code}: {job.error}"
            )
            table.add_row(str(h.id), v["name"], _describe(job), str(job.attempts), detail)
        console.print(table)
        flaky = await client.get(handles[-2].id)
        console.print(
            f"flaky-upload.bin failed on attempt 1 and completed on attempt {flaky.attempts}; "
            f"huge-export.csv was aborted from this process and cancelled by its worker."
        )
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            proc.wait(timeout=30)
        await db.aclose()
    console.print("workers stopped gracefully. Try: taskdb jobs --queue demo")


async def db_jobs(client: JobQueueClient, ids: list[int]) -> list[Job]:
    return [await client.get(i) for i in ids]
