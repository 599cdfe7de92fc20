"""A real worker process for ``test_multiprocess.py``.

Serve (default): run a :class:`JobQueueServer` until SIGTERM/SIGINT, then stop it
gracefully and exit 0. Prints on stdout ``ready {"pid": .., "worker_id": ..}`` once
started and ``stats {...}`` once stopped; logs to stderr::

    python -m tests.integration.worker_proc --url URL --queue Q --workers N \\
        --lease 1.0 --mode echo --out DIR

Wait (``--wait-for JOB_ID``): no server; print ``waiting STATUS`` after a first look
at the job, then ``result {...}`` (its output, or the error class it raised), exit 0.

Follow (``--follow``): no server; subscribe to the queue's changes (``--after CURSOR``
to resume), print ``subscribed`` once subscribed, then ``change {...}`` for each change,
until SIGTERM/SIGINT.

The handler's behaviour is ``input["action"]`` when the input names one, else
``--mode``. Marker files ``DIR/<job id>.<event>.<pid>`` are written atomically.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import taskdb
from taskdb import (
    JobChange,
    JobContext,
    JobError,
    JobQueueClient,
    JobQueueServer,
    PermanentJobError,
)

MODES = ("record", "echo", "block", "sleep", "abortable", "ignore_abort", "fail", "blob")
log = logging.getLogger("worker_proc")


def say(kind: str, payload: object = None) -> None:
    line = kind if payload is None else f"{kind} {json.dumps(payload)}"
    print(line, flush=True)


def mark(out: Path, job_id: int, event: str, text: str = "") -> None:
    """Write marker ``<job id>.<event>.<pid>`` atomically (readers never see it half done)."""
    final = out / f"{job_id}.{event}.{os.getpid()}"
    tmp = final.with_name(final.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(final)


def append_line(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line)
        f.flush()


def make_handler(args: argparse.Namespace) -> Any:
    out = Path(args.out)
    pid = os.getpid()
    exec_log = out / f"exec-{pid}.log"

    async def handler(input: Any, ctx: JobContext) -> Any:
        job_id = ctx.job.id
        action = input.get("action", args.mode) if isinstance(input, dict) else args.mode
        if action == "record":
            # One line per execution: the test counts them across processes.
            append_line(exec_log, f"{job_id} {pid}\n")
            if input.get("progress"):
                # A database write from inside the handler, racing the other processes:
                # a "database is locked" (any storage error) would fail/retry the job.
                await ctx.update_progress(50.0, "halfway")
            return {"pid": pid}
        if action == "echo":
            return {"pid": pid, "echo": input}
        if action == "blob":  # bytes that become a ref (with --threshold 0)
            return {"pid": pid, "data": f"{job_id}:{pid}".encode() * 100}
        if action == "fail":
            raise PermanentJobError(f"refused by {pid}: {input.get('why', '')}")
        if action == "block":
            mark(out, job_id, "started")
            await asyncio.Event().wait()
        if action == "sleep":
            seconds = args.sleep if ctx.job.attempts == 1 else args.sleep_retry or args.sleep
            # The marker holds the (system-wide) monotonic time at which the sleep ends.
            mark(out, job_id, "started", repr(time.monotonic() + seconds))
            try:
                await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                if not args.finish_cancelled:
                    await asyncio.sleep(args.cleanup)  # e.g. closing a connection
                    raise
                mark(out, job_id, "cancelled")  # and returns all the same
            mark(out, job_id, "returned")
            return {"pid": pid, "slept": seconds, "attempt": ctx.job.attempts}
        if action == "abortable":
            mark(out, job_id, "started")
            while not ctx.abort_signal.is_set():
                try:
                    await asyncio.wait_for(ctx.abort_signal.wait(), 0.05)
                except TimeoutError:
                    continue
            mark(out, job_id, "saw_abort")
            return {"pid": pid, "returned": "normally after the abort signal"}
        if action == "ignore_abort":
            mark(out, job_id, "started")
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                mark(out, job_id, "cancelled", repr(ctx.abort_signal.is_set()))
                raise
        raise AssertionError(f"unknown action {action!r}")

    return handler


async def serve(args: argparse.Namespace) -> int:
    db = taskdb.connect(args.url)
    server = JobQueueServer(
        db,
        args.queue,
        make_handler(args),
        workers=args.workers,
        lease_seconds=args.lease,
        poll_interval=args.poll,
        abort_grace_seconds=args.abort_grace,
        stop_timeout=args.stop_timeout,
        reference_threshold_bytes=args.threshold,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    if args.hang_before_outcome:
        hang_before_outcome(server, Path(args.out))
    say("ready", {"pid": os.getpid(), "worker_id": server.worker_id})
    log.info("serving queue %r as %s", args.queue, server.worker_id)
    await stop.wait()
    log.info("signalled: stopping")
    await server.stop()
    say("stats", dataclasses.asdict(server.stats()))
    await db.aclose()
    log.info("stopped")
    return 0


def hang_before_outcome(server: JobQueueServer, out: Path) -> None:
    """A hook: once a run's output is stored (its blobs written), mark ``<job
    id>.outcome`` and hang instead of writing the outcome (the test kills -9 then)."""
    outcomes = server._outcomes

    async def record(claim: Any, outcome: Any) -> Any:
        mark(out, claim.job_id, "outcome")
        await asyncio.Event().wait()

    outcomes.record = record  # type: ignore[method-assign]


async def wait_for(args: argparse.Namespace) -> int:
    db = taskdb.connect(args.url)
    client = JobQueueClient(db, args.queue, poll_interval=args.poll)
    job = await client.get(args.wait_for)
    say(f"waiting {job.status.value}")
    try:
        output = await client.wait(args.wait_for, timeout=args.wait_timeout)
        say("result", {"output": output})
    except JobError as exc:
        say(
            "result",
            {"error_class": type(exc).__name__, "error_code": exc.error_code, "message": str(exc)},
        )
    await db.aclose()
    return 0


async def follow(args: argparse.Namespace) -> int:
    db = taskdb.connect(args.url)
    client = JobQueueClient(db, args.queue, poll_interval=args.poll)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def show(change: JobChange) -> None:
        fields = ("seq", "job_id", "kind", "status", "attempts", "cursor")
        say("change", {name: getattr(change, name) for name in fields})

    after = None if args.after is None else int(args.after) if args.after.isdigit() else args.after
    unsubscribe = await client.subscribe_to_changes(show, after=after)
    say("subscribed")
    await stop.wait()
    await unsubscribe()
    await db.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--lease", type=float, default=5.0)
    parser.add_argument("--poll", type=float, default=0.05)
    parser.add_argument("--mode", choices=MODES, default="echo")
    parser.add_argument("--out", default=".")
    parser.add_argument("--sleep", type=float, default=2.0, help="seconds, for --mode sleep")
    parser.add_argument("--sleep-retry", type=float, help="--mode sleep, attempts after the 1st")
    parser.add_argument("--cleanup", type=float, default=0.0, help="--mode sleep: on cancel")
    parser.add_argument(
        "--finish-cancelled", action="store_true", help="--mode sleep: return when cancelled"
    )
    parser.add_argument("--abort-grace", type=float, default=2.0)
    parser.add_argument("--threshold", type=int, default=-1, help="reference_threshold_bytes")
    parser.add_argument("--hang-before-outcome", action="store_true")
    parser.add_argument("--stop-timeout", type=float, default=5.0)
    parser.add_argument("--wait-for", type=int, help="wait for this job id (no server)")
    parser.add_argument("--wait-timeout", type=float, default=30.0)
    parser.add_argument("--follow", action="store_true", help="print the queue's changes")
    parser.add_argument("--after", help="--follow: resume after this cursor")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s pid=%(process)d %(name)s %(levelname)s %(message)s",
    )
    if args.follow:
        return asyncio.run(follow(args))
    return asyncio.run(wait_for(args) if args.wait_for is not None else serve(args))


if __name__ == "__main__":
    sys.exit(main())
