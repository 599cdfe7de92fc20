"""The JSON shapes of what the admin surface returns, shared by the CLI's ``--json``
and the dashboard's ``/api/...``: one function per kind of value, so both always
print the same objects (datetimes as ISO-8601 text)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from taskdb.core import Job, JobChange, ScheduleInfo
from taskdb.store import BlobInfo, DatabaseStats, GcReport, Throughput, WorkerInfo
from taskdb.streams import StreamEvent, event_to_json

__all__ = [
    "blob_json",
    "change_json",
    "dumps",
    "gc_json",
    "job_json",
    "jobs_json",
    "schedule_json",
    "stats_json",
    "stream_item_json",
    "throughput_json",
    "worker_json",
]

JsonObject = dict[str, Any]


def job_json(job: Job) -> JsonObject:
    """A job row (``taskdb job show --json``; a list of them: ``taskdb jobs --json``)."""
    return job.model_dump(mode="json")


def jobs_json(jobs: Iterable[Job]) -> list[JsonObject]:
    return [job_json(j) for j in jobs]


def change_json(change: JobChange) -> JsonObject:
    """A change of the feed (a line of ``taskdb watch --json``)."""
    return change.model_dump(mode="json")


def stream_item_json(offset: int, event: StreamEvent) -> JsonObject:
    """An event of a job's durable stream at ``offset`` (a line of ``taskdb watch
    --follow-stream --json``; binary chunks in base64)."""
    return {"offset": offset, "event": event_to_json(event)}


def stats_json(stats: DatabaseStats) -> JsonObject:
    """``taskdb stats --json``."""
    return stats.model_dump(mode="json")


def blob_json(blob: BlobInfo) -> JsonObject:
    """A blob (``taskdb blob ls --json`` prints a list of them)."""
    return {
        k: v.isoformat() if isinstance(v, datetime) else v
        for k, v in dataclasses.asdict(blob).items()
    }


def gc_json(report: GcReport) -> JsonObject:
    """``taskdb gc --json``."""
    return report.model_dump(mode="json")


def schedule_json(schedule: ScheduleInfo) -> JsonObject:
    """A periodic schedule (``taskdb schedules --json`` prints a list of them)."""
    return schedule.as_json()


def worker_json(worker: WorkerInfo) -> JsonObject:
    """A running worker (``taskdb workers --json`` prints a list of them)."""
    return worker.model_dump(mode="json")


def throughput_json(throughput: Throughput) -> JsonObject:
    """Jobs completed and failed per minute (the dashboard's chart)."""
    return throughput.model_dump(mode="json")


def _default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def dumps(value: Any, *, indent: int | None = None) -> str:
    """``value`` as JSON text (a stray datetime as ISO-8601, anything else as its str)."""
    return json.dumps(value, indent=indent, default=_default)
