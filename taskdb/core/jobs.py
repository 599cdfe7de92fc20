"""Job rows, statuses, change-feed items and what a submit or a claim carries (pure data)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from taskdb.errors import InvalidJobInput


class JobStatus(StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    ABORTING = "ABORTING"
    FAILED = "FAILED"
    DISABLED = "DISABLED"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DISABLED)


TERMINAL_STATUSES = tuple(s.value for s in JobStatus if s.terminal)
ACTIVE_STATUSES = ("PENDING", "PROCESSING", "ABORTING")
"""Statuses of a job that has not ended (a fingerprint dedupes against these)."""
RUNNING_STATUSES = ("PROCESSING", "ABORTING")
"""Statuses of a job a worker holds."""


ChangeCursor = str
"""Where a reader of the change feed stands: opaque text (see :mod:`taskdb.store.feed`)."""


class ChangeKind(StrEnum):
    """What a change-feed item records."""

    SUBMITTED = "submitted"
    CLAIMED = "claimed"
    PROGRESS = "progress"
    RETRIED = "retried"
    REQUEUED = "requeued"  # lease expired, job back to PENDING
    RELEASED = "released"  # worker stopped gracefully before the job finished
    ABORTING = "aborting"
    ABORTED = "aborted"
    COMPLETED = "completed"
    FAILED = "failed"
    PURGED = "purged"


class Job(BaseModel):
    """One row of ``taskdb_jobs``."""

    model_config = ConfigDict(frozen=True)

    id: int
    queue: str
    status: JobStatus
    input: Any
    output: Any = None
    error: str | None = None
    error_code: str | None = None
    error_traceback: str | None = None
    attempts: int
    max_retries: int
    priority: int
    run_after: datetime
    deadline: datetime | None = None
    progress: float
    progress_message: str | None = None
    progress_details: Any = None
    fingerprint: str | None = None
    job_run_id: str | None = None
    worker_id: str | None = None
    lease_expires_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None
    durable_stream: bool = False
    task: str | None = None


class JobChange(BaseModel):
    """One item of the change feed: a job's state transition.

    ``seq`` numbers changes in the order they were made (of one job, always);
    ``cursor`` is where the read that returned this change stands: pass it as
    ``after`` to resume right after this change. Two reads of one change are
    equal whatever their cursors.
    """

    model_config = ConfigDict(frozen=True)

    seq: int
    job_id: int
    queue: str
    kind: ChangeKind
    status: JobStatus
    attempts: int
    progress: float | None = None
    at: datetime
    cursor: str = ""

    def _key(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in _CHANGE_KEY)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JobChange):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


_CHANGE_KEY = tuple(name for name in JobChange.model_fields if name != "cursor")


# One encoder, made once: json.dumps with options builds a new encoder per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)


def canonical_json(value: Any) -> str:
    """Stable JSON text of a job input (sorted keys); raises InvalidJobInput if not JSON."""
    try:
        return _CANONICAL.encode(value)
    except (TypeError, ValueError) as exc:
        raise InvalidJobInput(f"job input is not JSON-serialisable: {exc}") from exc


def input_digest(value: Any) -> str:
    """The digest ``output_for_input`` looks jobs up by."""
    return json_digest(canonical_json(value))


def json_digest(text: str) -> str:
    """The digest of a :func:`canonical_json` text."""
    return hashlib.sha256(text.encode()).hexdigest()


def require_aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise InvalidJobInput(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class JobOptions:
    """What the jobs of one submit share (validated by the client)."""

    run_after: datetime
    max_retries: int
    priority: int = 0
    deadline: datetime | None = None
    job_run_id: str | None = None
    durable_stream: bool = False
    task: str | None = None


@dataclass(frozen=True, slots=True)
class NewJob:
    """One job to insert: its input as canonical JSON text, that text's digest, an
    optional dedupe key. :meth:`of` makes one from a value (encoded once)."""

    input_json: str
    input_digest: str
    fingerprint: str | None = None

    @classmethod
    def of(cls, value: Any, fingerprint: str | None = None) -> NewJob:
        """Raises InvalidJobInput if ``value`` is not JSON."""
        text = canonical_json(value)
        return cls(text, json_digest(text), fingerprint)


@dataclass(frozen=True, slots=True)
class Claim:
    """What fences a worker's writes to a job: the job id and the attempt it claimed."""

    job_id: int
    attempts: int
