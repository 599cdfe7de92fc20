"""``taskdb demo``: the product's story on the embedded SQLite default.

Everything runs in separate processes that share only the database, as in a
real deployment: ``taskdb worker`` processes serve a batch of jobs (live
progress bars, one job that fails and is retried, one aborted mid-run); a
``taskdb:GraphJobHandler`` worker runs a task graph whose task streams a large
generated binary straight into the database while the job row keeps a small
ref; a ``taskdb watch`` process prints every transition live; ``taskdb blob
cat`` streams the binary back out and its sha256 is checked against the
producer's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from taskdb import settings
from taskdb.admin import Admin
from taskdb.cli.common import db_option
from taskdb.core import Job, JobStatus
from taskdb.core.format import human_size
from taskdb.errors import AbortedJobError, RetryableJobError
from taskdb.graph import Task, TaskContext, TaskGraph, register_task, submit_graph
from taskdb.queue import JobContext, JobQueueClient
from taskdb.store import Database, connect
from taskdb.streams import BinaryDelta, Finish, Phase, StreamEvent

QUEUE = "demo"
GRAPH_QUEUE = "demo-graphs"
MiB = 1024 * 1024
console = Console()


async def handler(value: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The batch's job: "render" a file in steps, reporting progress."""
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


@register_task
class RenderVideo(Task):
    """Streams ``mib`` MiB of seeded pseudo-random bytes on its binary port ``video``
    and reports their sha256 on ``sha256``."""

    type = "demo.RenderVideo"
    input_schema = {
        "type": "object",
        "properties": {"mib": {"type": "integer", "minimum": 1}, "seed": {"type": "integer"}},
    }
    output_schema = {
        "type": "object",
        "properties": {
            "video": {"x-stream": "binary", "contentMediaType": "video/mp4"},
            "sha256": {"type": "string"},
        },
    }

    async def execute_stream(
        self, inputs: dict[str, Any], ctx: TaskContext
    ) -> AsyncIterator[StreamEvent]:
        rng = random.Random(inputs.get("seed", 0))
        digest = hashlib.sha256()
        total = int(inputs["mib"])
        for i in range(1, total + 1):
            chunk = rng.randbytes(MiB)
            digest.update(chunk)
            yield BinaryDelta("video", chunk)
            if i % 4 == 0 or i == total:
                yield Phase(f"{i}/{total} MiB", 100 * i / total)
                await asyncio.sleep(0)  # let the pump write while we generate
        yield Finish({"sha256": digest.hexdigest()})


class _Proc:
    """A child ``taskdb`` process; its stdout lines are kept (the last ``keep``)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], keep: int = 0) -> None:
        self.name = name
        self.lines: deque[str] = deque(maxlen=keep or None)
        self.count = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskdb", *args],
            env=env,
            stdout=subprocess.PIPE if keep else subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        if keep:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            self.count += 1

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _describe(job: Job) -> str:
    if job.status is JobStatus.COMPLETED:
        return "[green]completed[/]"
    if job.status is JobStatus.FAILED:
        return f"[red]failed[/] ({job.error_code})"
    if job.status is JobStatus.PENDING and job.attempts:
        return f"[yellow]retrying[/] ({job.error})"
    return job.status.value.lower()


def _watch_panel(watcher: _Proc) -> Panel:
    body = Text("\n".join(watcher.lines) or "(waiting for changes)", no_wrap=True)
    return Panel(body, title="[bold]taskdb watch[/] (another process, via the change feed)")


async def _track(
    db: Database, jobs: list[tuple[int, str]], watcher: _Proc, abort_id: int
) -> dict[int, Job]:
    """Live progress bars for ``jobs`` and the watcher's latest lines, until every job
    ended; aborts ``abort_id`` from this process once it is under way."""
    admin = Admin(db)
    progress = Progress(
        TextColumn("{task.description:<26}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.0f}%"),
        TextColumn("{task.fields[state]}"),
    )
    bars: dict[int, TaskID] = {
        job_id: progress.add_task(name, total=100, state="pending") for job_id, name in jobs
    }
    aborted = False
    with Live(Group(progress, _watch_panel(watcher)), console=console) as live:
        while True:
            rows = {job_id: await admin.get_job(job_id) for job_id, _ in jobs}
            for job_id, bar in bars.items():
                row = rows[job_id]
                progress.update(bar, completed=row.progress, state=_describe(row))
            if not aborted and rows[abort_id].progress >= 10:
                await JobQueueClient(db, QUEUE).abort(abort_id)  # a worker process cancels it
                aborted = True
            live.update(Group(progress, _watch_panel(watcher)))
            if all(j.status.terminal for j in rows.values()):
                await asyncio.sleep(0.3)  # let the watcher print the last changes
                live.update(Group(progress, _watch_panel(watcher)))
                break
            await asyncio.sleep(0.1)
    console.print()
    return rows


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def _results(inputs: list[dict[str, Any]], rows: list[Job]) -> Table:
    table = Table("job", "name", "status", "runs", "result", title="the batch")
    for value, job in zip(inputs, rows, strict=True):
        if job.status is JobStatus.COMPLETED:
            state, detail = (
                "[green]completed[/]",
                f"{job.output['sha256'][:12]} (pid {job.output['pid']})",
            )
        else:
            state, detail = f"[red]{job.status.value.lower()}[/]", f"{job.error_code}: {job.error}"
        table.add_row(str(job.id), value["name"], state, str(job.attempts), detail)
    return table


def _blob_cat(graph_job: Job, env: dict[str, str], mib: int) -> None:
    """Stream the graph's binary out with ``taskdb blob cat`` and check its sha256."""
    video = graph_job.output["outputs"]["render"]
    with tempfile.TemporaryDirectory(prefix="taskdb-demo-") as tmp:
        target = Path(tmp) / "video.mp4"
        console.print(f"\n$ taskdb blob cat {graph_job.id} --port video > {target.name}")
        started = time.monotonic()
        with target.open("wb") as sink:
            command = ["blob", "cat", str(graph_job.id), "--port", "video"]
            subprocess.run(
                [sys.executable, "-m", "taskdb", *command], env=env, stdout=sink, check=True
            )
        took = time.monotonic() - started
        size = target.stat().st_size
        got = _sha256_of(target)
    console.print(f"streamed {human_size(size)} out in {took:.1f}s, chunk by chunk")
    mark = "[green]match[/]" if got == video["sha256"] else "[red]DIFFER[/]"
    console.print(f"sha256 ({target.name})  {got[:40]}…")
    console.print(f"sha256 (producer)   {video['sha256'][:40]}…")
    console.print(f"the checksums {mark}")
    if got != video["sha256"] or size != mib * MiB:
        raise SystemExit("the bytes read back differ from the bytes produced")


async def run_demo(db_url: str, count: int, worker_count: int, mib: int) -> None:
    db = connect(db_url)
    db.migrate()
    console.rule("[bold]taskdb demo")
    console.print(f"database: {db.safe_url}, shared by every process below")
    earlier = [await JobQueueClient(db, q).purge(timedelta(0)) for q in (QUEUE, GRAPH_QUEUE)]
    if sum(earlier):
        console.print(f"cleared the {sum(earlier)} jobs of an earlier run, and their blobs")
    env = {**os.environ, settings.URL_ENV: db_url}  # URLs never go on a command line
    head = await Admin(db).feed_head()
    procs = [
        _Proc("watch", ["watch", "--after", head, "--poll", "0.05"], env, keep=12),
        *(
            _Proc(f"worker {i}", ["worker", "taskdb.cli.demo:handler", "--queue", QUEUE,
                                  "--concurrency", "3", "--poll", "0.05", "--lease", "5"], env)
            for i in range(worker_count)
        ),
        _Proc("graph worker", ["worker", "taskdb:GraphJobHandler", "--import", "taskdb.cli.demo",
                               "--queue", GRAPH_QUEUE, "--poll", "0.05"], env),
    ]  # fmt: skip
    watcher = procs[0]
    console.print(
        f"started {worker_count} x `taskdb worker taskdb.cli.demo:handler --queue {QUEUE}`, "
        f"`taskdb worker taskdb:GraphJobHandler --queue {GRAPH_QUEUE}` and `taskdb watch`"
    )
    try:
        client = JobQueueClient(db, QUEUE)
        inputs: list[dict[str, Any]] = [
            {"name": f"report-{i}.pdf", "steps": 8 + i % 5} for i in range(count)
        ]
        inputs.append({"name": "flaky-upload.bin", "steps": 10, "flaky": True})
        inputs.append({"name": "huge-export.csv", "steps": 200, "delay": 0.05})
        run_id = uuid.uuid4().hex[:8]
        handles = await client.submit_batch(inputs, job_run_id=run_id, max_retries=2)
        graph = TaskGraph()
        graph.add(RenderVideo("render", mib=mib, seed=int(time.time())))
        graph_handle = await submit_graph(JobQueueClient(db, GRAPH_QUEUE), graph)
        console.print(
            f"submitted {len(handles)} jobs in one transaction, and a task graph job that "
            f"renders a {mib} MiB video\n"
        )
        tracked = [(h.id, v["name"]) for h, v in zip(handles, inputs, strict=True)]
        tracked.append((graph_handle.id, f"graph: {mib} MiB video"))
        rows = await _track(db, tracked, watcher, abort_id=handles[-1].id)

        console.print(_results(inputs, [rows[h.id] for h in handles]))
        console.print(
            f"flaky-upload.bin failed on attempt 1 and completed on attempt "
            f"{rows[handles[-2].id].attempts}; huge-export.csv was aborted from this "
            "process and cancelled by its worker."
        )
        graph_job = rows[graph_handle.id]
        if graph_job.status is not JobStatus.COMPLETED:
            raise SystemExit(f"the graph job failed: {graph_job.error_code}: {graph_job.error}")
        row_bytes = len(json.dumps(graph_job.output))
        console.print(
            f"\nthe graph job streamed [bold]{human_size(mib * MiB)}[/] into the database's "
            f"blob store while its job row holds a [bold]{row_bytes} B[/] output:"
        )
        console.print_json(data=graph_job.output)
        _blob_cat(graph_job, env, mib)
    finally:
        codes = {p.name: p.stop() for p in reversed(procs)}
        await db.aclose()
    console.print(
        f"\n`taskdb watch` printed {watcher.count} changes live and exited "
        f"{codes['watch']}; workers stopped gracefully."
    )
    console.print("Try: taskdb stats · taskdb jobs · taskdb blob ls · taskdb job show <id>")


@click.command()
@db_option
@click.option(
    "--jobs",
    "count",
    type=click.IntRange(0, 1000),
    default=8,
    show_default=True,
    help="Jobs in the batch.",
)
@click.option(
    "--workers", type=click.IntRange(1, 16), default=2, show_default=True, help="Worker processes."
)
@click.option(
    "--mib",
    type=click.IntRange(1, 4096),
    default=48,
    show_default=True,
    help="Size of the graph's binary output.",
)
def demo(db_url: str, count: int, workers: int, mib: int) -> None:
    """A guided tour: worker processes with live progress, a retry and an abort, a task
    graph streaming a large binary into the database, a watcher process, `blob cat`."""
    asyncio.run(run_demo(db_url, count, workers, mib))
